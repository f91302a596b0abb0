"""Every name the registry does not know is a timm model (resnet18, vit_base_patch16_224, ...).

`pretrained=True` asks timm to download the weights from the Hugging Face hub; offline or when the
download fails, the MerError says how to supply a local weights file instead (`weights_hint`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.errors import MerError
from pipeline.train.models.pretrained import hub_offline, weights_hint
from pipeline.train.models.registry import list_models


def _create(name: str, num_classes: int, pretrained: bool, input_size: int | None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        known = ", ".join(repr(n) for n in list_models())
        raise MerError(f"unknown model {name!r}: use {known} or a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = {"pretrained": pretrained, "num_classes": num_classes}
    if input_size is not None:
        try:  # transformers need their image size; convolutional models take any size and no such argument
            return timm.create_model(name, img_size=input_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, **kwargs)


def create_timm_model(
    name: str, num_classes: int, pretrained: bool = False, input_size: int | None = None
) -> nn.Module:
    """timm's model `name` with `num_classes` outputs; `input_size` is passed to models that take one."""
    if not pretrained:
        return _create(name, num_classes, False, input_size)
    if hub_offline():
        raise MerError(f"pretrained weights for {name!r} requested but HF_HUB_OFFLINE is set; {weights_hint(name)}")
    try:
        return _create(name, num_classes, True, input_size)
    except MerError:
        raise
    except Exception as exc:
        raise MerError(
            f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}); {weights_hint(name)}"
        ) from exc
