"""A contact sheet of aligned reference frames with their landmarks (`mer align --preview`), to check an align run at a glance."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import atomic_output


def aligned_montage(
    images: list[np.ndarray],
    landmarks: list[np.ndarray],
    labels: list[str],
    columns: int | None = None,
    tile: int = 160,
) -> np.ndarray:
    """RGB uint8 sheet: one tile per image, landmarks (in the image's pixels) drawn, a label below.

    Landmarks that are NaN (clips resized without detection) are simply not drawn.
    """
    if not images:
        raise ValueError("no images to draw")
    count = len(images)
    columns = columns or min(count, max(1, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    caption = 18
    sheet = np.full((rows * (tile + caption), columns * tile, 3), 255, np.uint8)
    for i, (image, points, label) in enumerate(zip(images, landmarks, labels)):
        image = np.asarray(image, np.uint8)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        scale = tile / max(image.shape[:2])
        cell = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        cell = np.ascontiguousarray(cell)
        points = np.asarray(points, np.float64).reshape(-1, 2)
        sx, sy = tile / image.shape[1], tile / image.shape[0]
        for x, y in points:
            if np.isfinite(x) and np.isfinite(y):
                centre = (int(round((x + 0.5) * sx - 0.5)), int(round((y + 0.5) * sy - 0.5)))
                cv2.circle(cell, centre, 1, (0, 255, 0), -1, lineType=cv2.LINE_AA)
        r, c = divmod(i, columns)
        top, left = r * (tile + caption), c * tile
        sheet[top : top + tile, left : left + tile] = cell
        cv2.putText(
            sheet, label[:24], (left + 3, top + tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
        )
    return sheet


def save_montage(
    path: str | Path,
    images: list[np.ndarray],
    landmarks: list[np.ndarray],
    labels: list[str],
    columns: int | None = None,
) -> None:
    """`aligned_montage` written as a PNG at `path`, atomically."""
    sheet = aligned_montage(images, landmarks, labels, columns)
    with atomic_output(path) as tmp:
        _ok, data = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        Path(tmp).write_bytes(data.tobytes())
