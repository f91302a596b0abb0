"""Pretrained weights from local files, and what to tell a user who has neither network nor file.

timm downloads pretrained weights from the Hugging Face hub; offline, params `train.weights` names a
local .safetensors or .pth/.pt state dict instead. Tensors whose shape differs
from the model's (the classifier head) are left at their initial values.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import MerError


def weights_hint(name: str) -> str:
    return (
        f"to start {name!r} from pretrained weights without network access, download them once on a "
        f"connected machine (for timm models: timm.create_model({name!r}, pretrained=True) stores them in the "
        "Hugging Face cache; or fetch the model's model.safetensors from huggingface.co/timm) and set "
        "`weights: /path/to/file.safetensors` (or a .pth/.pt state dict) in the train section of params.yaml; "
        "or set `pretrained: false` to train from scratch"
    )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file (possibly wrapped in 'state_dict'/'model')."""
    path = Path(path)
    if not path.is_file():
        raise MerError(f"weights file not found: {path} (params train.weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MerError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MerError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _adapt_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the timm architecture's own checkpoint filter when it has one: it resamples a ViT's
    position embedding to the model's input size (e.g. 224 weights into a 112 model) instead of
    dropping it as a shape mismatch. Left as is when there is no filter or it fails."""
    import importlib

    try:
        module = importlib.import_module(type(model).__module__)
    except ImportError:
        return state
    adapt = getattr(module, "checkpoint_filter_fn", None) if module.__name__.startswith("timm.") else None
    if adapt is None:
        return state
    try:
        return dict(adapt(dict(state), model))
    except Exception:
        return state


def load_pretrained(model: nn.Module, weights: str | Path) -> list[str]:
    """Load matching tensors from `weights` into `model`; return the keys left at their init.

    Tensors whose shape differs from the model's (the classifier head when the number of classes
    differs) are dropped, so a backbone pretrained on ImageNet loads into a 5-class model.
    """
    state = _adapt_to_model(load_state_dict_file(weights), model)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise MerError(f"{weights}: none of its tensors match the model's parameters (is it for another architecture?)")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
