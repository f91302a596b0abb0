"""Models: LEARNet (Verma et al., IEEE TIP 2019) and any timm architecture (DESIGN.md section 7).

LEARNet follows the authors' Keras code (github.com/MonuVermaCV/LearNet, LEARNet_Model.py):
every convolution has stride 2, TensorFlow 'same' padding and ReLU. With the 112x112x3 input the
maps are 56 (stem) -> 28 -> 14 -> 7 in the branches, then 4 after the last convolution:

    stem      Conv_S   16 3x3                               112 -> 56
    pair k    A: a1 16 1x1 (stem) -> a2 32 3x3 -> a3 64 5x5  56 -> 28 -> 14 -> 7
              B: b1 16 1x1 (stem); BN(a1 + b1) -> b2 32 3x3; BN(a2 + b2) -> b3 64 5x5
    head      concat(a3, b3 of both pairs) = 256 x 7 x 7 -> BN -> Conv 256 3x3 (4x4)
              -> flatten (4096) -> dense 256 (ReLU) -> dropout 0.5 -> dense classes

1,866,053 trainable parameters for 5 classes (Keras also counts the 704 batch-norm running
statistics: 1,866,757). Differences from the Keras code, none architectural: the classifier
returns logits (softmax lives in the loss), and batch norm uses PyTorch's momentum (0.1) with
Keras' epsilon (1e-3): Keras' 0.99 running-average momentum lags badly over the few hundred steps a
LOSO fold trains for. Weights start as in Keras (Glorot-uniform kernels, zero biases).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import MerError

LEARNET = "learnet"
LEARNET_INPUT_SIZE = 112
DEFAULT_INPUT_SIZE = 224  # what the ImageNet CNNs and ViT-B/16 of the paper's comparison take
_BN_EPS = 1e-3

# The paper's comparison (arXiv 2510.15466): four CNNs, ViT-B/16 and LEARNet, as timm names.
PAPER_MODELS = ("resnet18", "resnet50", "vgg16_bn", "mobilenetv3_large_100", "vit_base_patch16_224", LEARNET)


def default_input_size(name: str) -> int:
    """112 for LEARNet (its published input), 224 for every other model."""
    return LEARNET_INPUT_SIZE if name.lower() == LEARNET else DEFAULT_INPUT_SIZE


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


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding along one axis: (before, after), output = ceil(size / stride).

    The extra pixel of an odd total goes after (bottom/right), as in TensorFlow, e.g. 112 with a
    3x3 kernel and stride 2 pads (0, 1) and 7 pads (1, 1).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d + ReLU with TensorFlow 'same' padding (asymmetric where TF pads asymmetrically)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.relu(super().forward(x))


class LearnetPair(nn.Module):
    """One pair of LEARNet's lateral accretive branches; returns the two 64-channel maps."""

    def __init__(self, in_channels: int = 16):
        super().__init__()
        self.a1 = SameConv2d(in_channels, 16, 1)
        self.a2 = SameConv2d(16, 32, 3)
        self.a3 = SameConv2d(32, 64, 5)
        self.b1 = SameConv2d(in_channels, 16, 1)
        self.bn1 = nn.BatchNorm2d(16, eps=_BN_EPS)
        self.b2 = SameConv2d(16, 32, 3)
        self.bn2 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.b3 = SameConv2d(32, 64, 5)

    def forward(self, stem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1 = self.a1(stem)
        a2 = self.a2(a1)
        a3 = self.a3(a2)
        b2 = self.b2(self.bn1(a1 + self.b1(stem)))
        b3 = self.b3(self.bn2(a2 + b2))
        return a3, b3


class LEARNet(nn.Module):
    """LEARNet for 112x112x3 dynamic images (other sizes run; the head then has another width)."""

    def __init__(self, num_classes: int, input_size: int = LEARNET_INPUT_SIZE, dropout: float = 0.5):
        super().__init__()
        self.stem = SameConv2d(3, 16, 3)
        self.pair1 = LearnetPair(16)
        self.pair2 = LearnetPair(16)
        self.bn = nn.BatchNorm2d(256, eps=_BN_EPS)
        self.conv = SameConv2d(256, 256, 3)
        side = input_size
        for _ in range(5):  # stem, three branch convolutions, last convolution
            side = math.ceil(side / 2)
        self.fc1 = nn.Linear(256 * side * side, 256)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, num_classes)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        a1, b1 = self.pair1(stem)
        a2, b2 = self.pair2(stem)
        return self.conv(self.bn(torch.cat([a1, b1, a2, b2], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _weights_hint(name: str) -> str:
    return (
        f"to start {name!r} from pretrained weights without network access, download them once on a "
        f"connected machine (for timm models: timm.create_model({name!r}, pretrained=True) stores them in the "
        "Hugging Face cache; or fetch the model's model.safetensors from huggingface.co/timm) and set "
        "`weights: /path/to/file.safetensors` (or a .pth/.pt state dict) in the train section of params.yaml; "
        "or set `pretrained: false` to train from scratch"
    )


def _offline() -> bool:
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


def _create_timm(name: str, num_classes: int, pretrained: bool, input_size: int | None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise MerError(f"unknown model {name!r}: use 'learnet' or a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = {"pretrained": pretrained, "num_classes": num_classes}
    if input_size is not None:
        try:  # transformers need their image size; convolutional models take any size and no such argument
            return timm.create_model(name, img_size=input_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, **kwargs)


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """A classifier with `num_classes` outputs (logits).

    `name` is 'learnet' or any timm model name. `weights` (a local .safetensors/.pth state dict)
    takes precedence over `pretrained`; `pretrained=True` without `weights` asks timm to download
    from the Hugging Face hub, which raises MerError with instructions when offline.
    """
    if num_classes < 2:
        raise MerError(f"need at least 2 classes to train a classifier, got {num_classes}")
    if name.lower() == LEARNET:
        model: nn.Module = LEARNet(num_classes, input_size or LEARNET_INPUT_SIZE)
        if pretrained and not weights:
            raise MerError(f"there are no published pretrained LEARNet weights; {_weights_hint(name)}")
    elif weights or not pretrained:
        model = _create_timm(name, num_classes, False, input_size)
    else:
        if _offline():
            raise MerError(
                f"pretrained weights for {name!r} requested but HF_HUB_OFFLINE is set; {_weights_hint(name)}"
            )
        try:
            model = _create_timm(name, num_classes, True, input_size)
        except MerError:
            raise
        except Exception as exc:
            raise MerError(
                f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}); {_weights_hint(name)}"
            ) from exc
    if weights:
        load_pretrained(model, weights)
    return model


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] scale: timm's pretrained config, else (0.5, 0.5).

    Dynamic images are min-max scaled to the full uint8 range, so (0.5, 0.5) maps them to [-1, 1].
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean and std and len(mean) == 3:
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
