"""Report figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np


def row_normalize(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (recall per true class); rows with no samples stay 0."""
    counts = np.asarray(counts, dtype=float)
    sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)


def _panel(ax, matrix: np.ndarray, label_names: Sequence[str], title: str, fmt: str, vmax: float) -> None:
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax if vmax > 0 else 1)
    ticks = np.arange(len(label_names))
    ax.set_xticks(ticks, labels=label_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = (vmax if vmax > 0 else 1) / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                format(matrix[i, j], fmt),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > threshold else "black",
            )
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_confusion(
    counts: np.ndarray, label_names: Sequence[str], path: str | Path, normalize: bool = True, title: str = ""
) -> None:
    """Confusion matrix PNG: counts, plus the row-normalized matrix beside it when `normalize`."""
    counts = np.asarray(counts)
    panels = 2 if normalize else 1
    side = max(4.0, 0.6 * len(label_names) + 2.5)
    fig, axes = plt.subplots(1, panels, figsize=(side * panels, side), squeeze=False)
    try:
        _panel(axes[0, 0], counts, label_names, "counts", "d", float(counts.max(initial=0)))
        if normalize:
            _panel(axes[0, 1], row_normalize(counts), label_names, "row-normalized (recall)", ".2f", 1.0)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)
