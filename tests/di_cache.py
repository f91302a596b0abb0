"""A DI cache written in one call from whole image stacks: fixtures for the train and evaluate tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.dynamic_image_cache import DynamicImageWriter


def write_dynamic_images(
    path: str | Path,
    samples: Mapping[str, Iterable[Any]],
    images: Mapping[str, np.ndarray],
    label_names: list[str],
    params: Mapping[str, Any],
    extra_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a complete DI cache at `path` from whole (N,H,W,3) stacks per phase."""
    n = len(list(samples["sample_id"]))
    for phase, stack in images.items():
        if stack.ndim != 4 or stack.shape[0] != n or stack.shape[3] != 3:
            raise ValueError(f"images/{phase} has shape {stack.shape}, expected ({n}, H, W, 3)")
    shape = next(iter(images.values())).shape[1:] if images else None
    with DynamicImageWriter(path, n, images, label_names, params, shape) as writer:
        for i in range(n):
            writer.add({phase: stack[i] for phase, stack in images.items()})
        writer.finish(samples, extra_attrs)
