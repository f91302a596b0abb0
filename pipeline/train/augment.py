"""Spatial augmentation of batched image tensors on the training device (the paper's "spatial" modes).

One call transforms a whole (B, C, H, W) batch with torch ops: horizontal flips by `torch.where`,
rotation, scale and translation as one affine matrix per sample applied by a single
`affine_grid` + `grid_sample`, and brightness/contrast jitter as per-sample affine intensity maps.
There is no per-sample Python loop. Every random number is drawn from the caller's CPU
`torch.Generator` (seeded per LOSO fold), in a fixed order, so a fold's augmentations are the
same on CPU and GPU and from one run to the next.

Params (train section):

    augment:
      flip: true           # horizontal mirror with probability 0.5
      rotation: 10         # uniform angle in [-rotation, rotation] degrees
      scale: [0.9, 1.1]    # uniform zoom factor (1 = none); > 1 zooms in (a crop), < 1 zooms out
      translate: 0.05      # uniform shift up to this fraction of the image side, on each axis
      jitter: 0.1          # contrast factor in [1 - j, 1 + j] and brightness shift in [-j, j] x the image std

Only the `spatial` and `dual_phase_spatial` modes apply it (see pipeline/train/settings.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.config import AugmentSettings  # the train section's `augment`, validated there

__all__ = ["AugmentSettings", "affine_matrices", "augment_batch"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float32)


def affine_matrices(n: int, settings: AugmentSettings, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices for `affine_grid`: output coordinates -> input coordinates (normalized)."""
    angles = _uniform(n, -1.0, 1.0, generator) * math.radians(settings.rotation)
    zoom = _uniform(n, settings.scale[0], settings.scale[1], generator)
    shift = (
        _uniform(2 * n, -settings.translate, settings.translate, generator).view(n, 2) * 2
    )  # [-1, 1] spans the image
    cos, sin = torch.cos(angles) / zoom, torch.sin(angles) / zoom  # zoom > 1 samples a smaller area: zooms in
    row0 = torch.stack([cos, -sin, shift[:, 0]], 1)
    row1 = torch.stack([sin, cos, shift[:, 1]], 1)
    return torch.stack([row0, row1], 1)


def augment_batch(x: torch.Tensor, generator: torch.Generator, settings: AugmentSettings) -> torch.Tensor:
    """Augment a (B, C, H, W) float batch; same shape, dtype and device; labels are untouched.

    Random numbers come from `generator` (a CPU generator) in a fixed order, whatever the device.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if settings.flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    if settings.geometric:
        theta = affine_matrices(n, settings, generator).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if settings.jitter > 0:
        contrast = _uniform(n, 1 - settings.jitter, 1 + settings.jitter, generator).to(x).view(-1, 1, 1, 1)
        bright = _uniform(n, -settings.jitter, settings.jitter, generator).to(x).view(-1, 1, 1, 1)
        std, mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True)
        x = mean + contrast * (x - mean) + bright * std
    return x
