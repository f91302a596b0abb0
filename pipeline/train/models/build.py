"""A classifier ready to train: the registry's model with local weights loaded, its parameter count
and the input normalization it expects."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline.errors import MerError
from pipeline.train.models.pretrained import load_pretrained
from pipeline.train.models.registry import create_model

# The paper's comparison (arXiv 2510.15466): four CNNs, ViT-B/16 and LEARNet, as model names.
PAPER_MODELS = ("resnet18", "resnet50", "vgg16_bn", "mobilenetv3_large_100", "vit_base_patch16_224", "learnet")


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    input_size: int | None = None,
    weights_key: str = "train.weights",
) -> nn.Module:
    """A classifier with `num_classes` outputs (logits).

    `name` is a registered model ('learnet') or any timm model name. `weights` (a local
    .safetensors/.pth state dict, named by params `weights_key`) takes precedence over `pretrained`;
    `pretrained=True` without `weights` takes timm's weights from the local Hugging Face cache or the
    hub, and raises MerError with instructions at once when neither is available. What was loaded is
    `weights_report(model)`.
    """
    if num_classes < 2:
        raise MerError(f"need at least 2 classes to train a classifier, got {num_classes}")
    model = create_model(name, num_classes=num_classes, pretrained=pretrained and not weights, input_size=input_size)
    if weights:
        model.mer_weights_report = load_pretrained(model, weights, key=weights_key)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] scale: timm's pretrained config, else (0.5, 0.5).

    Dynamic images are min-max scaled to the full uint8 range, so (0.5, 0.5) maps them to [-1, 1].
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean and std and len(mean) == 3:
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
