"""Every name the registry does not know is a timm model (resnet18, vit_base_patch16_224, ...).

`pretrained=True` takes the weights timm names on the Hugging Face hub from the local hub cache when
they are there (no network needed: HF_HUB_OFFLINE=1 works), downloads them when the hub answers
within a few seconds, and otherwise fails at once with how to supply a local weights file
(`weights_hint`) instead of retrying. The load is reported on the model (`weights_report`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.errors import MerError
from pipeline.train.models.pretrained import (
    cached_hub_file,
    download_hub_file,
    hub_cache_dir,
    hub_endpoint,
    hub_offline,
    hub_reachable,
    hub_weights,
    load_pretrained,
    weights_hint,
)
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
    model = _create(name, num_classes, False, input_size)
    if not pretrained:
        return model
    hub = hub_weights(getattr(model, "pretrained_cfg", None) or {})
    if hub is None:  # no hub weights: timm knows only a URL (or nothing)
        if hub_offline() or not hub_reachable():
            raise MerError(
                f"pretrained weights for {name!r} need a download and there is no network; {weights_hint(name)}"
            )
        return _download_through_timm(name, num_classes, input_size)
    repo, revision, names = hub
    path = cached_hub_file(repo, revision, names)
    if path is None:
        if hub_offline():
            raise MerError(
                f"pretrained weights for {name!r} ({repo}) are not in the local Hugging Face cache {hub_cache_dir()} "
                f"and HF_HUB_OFFLINE is set; {weights_hint(name)}"
            )
        if not hub_reachable():
            raise MerError(
                f"pretrained weights for {name!r} ({repo}) are not in the local Hugging Face cache {hub_cache_dir()} "
                f"and {hub_endpoint()} cannot be reached; {weights_hint(name)}"
            )
        try:
            path = download_hub_file(repo, revision, names)
        except MerError:
            raise
        except Exception as exc:
            raise _download_failed(name, exc) from exc
    model.mer_weights_report = load_pretrained(model, path, key="pretrained", source=f"{repo} ({path})")
    return model


def _download_failed(name: str, exc: Exception) -> MerError:
    return MerError(
        f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}); {weights_hint(name)}"
    )


def _download_through_timm(name: str, num_classes: int, input_size: int | None) -> nn.Module:
    try:
        return _create(name, num_classes, True, input_size)
    except MerError:
        raise
    except Exception as exc:
        raise _download_failed(name, exc) from exc
