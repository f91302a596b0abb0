"""Small real-face clips for alignment tests, made from the bundled public-domain portrait."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

PORTRAIT = files("pipeline") / "data" / "astronaut.jpg"


def portrait() -> np.ndarray:
    """The 512x512 BGR portrait."""
    return cv2.imread(str(PORTRAIT))


FACE_CENTRE = (222, 126)  # of the portrait's face box, in its pixels


def place(image: np.ndarray, scale: float, dx: float, dy: float, size=(640, 480)) -> np.ndarray:
    """The portrait scaled, its face centred on a canvas of `size` (w, h), then shifted by (dx, dy)."""
    cx, cy = FACE_CENTRE
    matrix = np.array([[scale, 0, size[0] / 2 - scale * cx + dx], [0, scale, size[1] / 2 - scale * cy + dy]])
    return cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REPLICATE)


def write_clip(folder: Path, frames: list[np.ndarray], first: int = 46, pattern: str = "img{}.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / pattern.format(first + i)), frame)
    return folder
