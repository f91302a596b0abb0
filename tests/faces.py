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


def write_gray_clip(folder: Path, frames: list[np.ndarray], first: int = 5562, pattern: str = "{:05d}.jpg") -> Path:
    """SAMM-like single-channel JPEG frames (file names as 006_05562.jpg when pattern says so)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / pattern.format(first + i)), gray)
    return folder


def drifting(
    image: np.ndarray, count: int, step: tuple[float, float], scale: float = 1.6
) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` frames of the portrait shifted a little more each frame, and the shift of each frame."""
    shifts = np.array([(i * step[0], i * step[1]) for i in range(count)])
    return [place(image, scale, dx, dy) for dx, dy in shifts], shifts
