"""Contact sheets of a DI cache (`mer cache preview`): every phase of a few clips, to check a run at a glance."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: the pipeline never opens windows
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from pipeline.atomic import atomic_output
from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import DynamicImageSet, read_dynamic_images


def pick_samples(data: DynamicImageSet, count: int) -> list[int]:
    """Up to `count` samples, spread over the classes first so every label is shown."""
    labels = data.samples["label"]
    order = []
    by_class = [list(np.flatnonzero(labels == k)) for k in range(len(data.label_names))]
    while len(order) < min(count, len(labels)):
        for members in by_class:
            if members and len(order) < count:
                order.append(members.pop(0))
    return sorted(order)


def dynamic_image_sheet(data: DynamicImageSet, indices: list[int]) -> Figure:
    """One row per sample, one column per phase (full DI, then the phase DIs)."""
    phases = data.phases
    figure, axes = plt.subplots(
        len(indices), len(phases), figsize=(2.2 * len(phases), 2.4 * len(indices)), squeeze=False
    )
    for row, index in enumerate(indices):
        label = data.label_names[int(data.samples["label"][index])]
        for col, phase in enumerate(phases):
            axis = axes[row][col]
            axis.imshow(data.images[phase][index])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(phase, fontsize=10)
        s = data.samples
        axes[row][0].set_ylabel(
            f"{s['subject'][index]}/{s['clip'][index]}\n{label}\n{s['onset'][index]}-{s['apex'][index]}-{s['offset'][index]}",
            fontsize=8,
        )
    figure.tight_layout()
    return figure


def write_preview(cache: str | Path, out: str | Path, count: int) -> int:
    """Draw `count` samples of a DI cache into the PNG `out`; returns the number drawn."""
    data = read_dynamic_images(cache)
    if len(data) == 0:
        raise MerError(f"{cache} holds no samples")
    figure = dynamic_image_sheet(data, pick_samples(data, max(1, count)))
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return min(count, len(data))
