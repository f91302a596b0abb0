"""The model registry: MER networks register themselves by name; any other name is a timm model.

A model family is one file in this package with one function per architecture, registered with
`@register_model` and called by `create_model(name, num_classes=..., pretrained=..., input_size=...)`.
Training only asks the registry, so adding a network is one new file (imported in `__init__`).
Names are case-insensitive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

DEFAULT_INPUT_SIZE = 224  # what the ImageNet CNNs and ViT-B/16 of the paper's comparison take

ModelFunction = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    function: ModelFunction
    input_size: int


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    function: ModelFunction | None = None, *, name: str | None = None, input_size: int = DEFAULT_INPUT_SIZE
) -> Any:
    """Register a model function under `name` (default: the function's name) with its published
    input size; usable as `@register_model` or `@register_model(input_size=112)`.

    The function takes keyword arguments `num_classes`, `pretrained` and `input_size` (None: its
    own) and returns a classifier that outputs logits."""

    def register(fn: ModelFunction) -> ModelFunction:
        key = (name or fn.__name__).lower()
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = ModelEntry(key, fn, input_size)
        return fn

    return register(function) if function is not None else register


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """The registered model `name`, else the timm model of that name, built with `kwargs`."""
    entry = _MODELS.get(name.lower())
    if entry is not None:
        return entry.function(**kwargs)
    from pipeline.train.models.timm_models import create_timm_model

    return create_timm_model(name, **kwargs)


def default_input_size(name: str) -> int:
    """A registered model's published input size (112 for LEARNet), 224 for every other model."""
    entry = _MODELS.get(name.lower())
    return entry.input_size if entry is not None else DEFAULT_INPUT_SIZE


def resolve_input_size(name: str, setting: Any = None) -> int:
    """The input size of model `name` from params `input_size`.

    `setting` is an int (every model), a mapping of model names to sizes with an optional
    `default` entry (`{learnet: 112, default: 224}`), or None (`default_input_size`).
    """
    if setting is None:
        return default_input_size(name)
    if isinstance(setting, Mapping):
        sizes = {str(k).lower(): v for k, v in setting.items()}
        value = sizes.get(name.lower(), sizes.get("default"))
        if value is None:
            return default_input_size(name)
        setting = value
    if isinstance(setting, bool) or not isinstance(setting, (int, float)) or int(setting) != setting or setting < 1:
        raise ValueError(
            f"input_size must be a positive integer or a mapping such as {{learnet: 112, default: 224}}, got {setting!r}"
        )
    return int(setting)
