"""A synthetic subject's look (geometry, shading, background, noise) and how one is drawn at random."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.demo.presets import DatasetPreset


@dataclass(frozen=True)
class SubjectLook:
    """Everything that makes one synthetic subject: geometry, shading, background, noise."""

    size: tuple[int, int]  # frame (width, height)
    gray: bool
    face_width: float  # jaw-to-jaw width in output pixels
    centre: tuple[float, float]  # where the face's landmark centroid lands
    angle: float  # in-plane rotation, degrees
    mirror: bool
    aspect: float  # horizontal stretch of the face
    bulge: tuple[float, float]  # radial reshaping strength along x and y
    wave: tuple[float, float, float, float]  # amplitude (x face width), wavelength (x face width), direction, phase
    contrast: float
    brightness: float
    gamma: float
    tint: tuple[float, float, float]  # BGR gains
    blur: float  # Gaussian sigma in output pixels
    background: tuple[tuple[float, float, float], tuple[float, float, float], float]  # two BGR colours, direction
    noise: float  # sensor noise sigma, grey levels


def draw_look(rng: np.random.Generator, dataset: str, preset: DatasetPreset) -> SubjectLook:
    """A random look for a subject of `dataset`, at the preset's frame size."""
    width, height = preset.size
    gray = dataset == "samm"
    # Faces: about 230-300 px wide in a 640x480 CASME II frame; SAMM faces fill less of the frame.
    face_width = height * (rng.uniform(0.48, 0.62) if dataset == "casme2" else rng.uniform(0.38, 0.46))
    centre = (width * (0.5 + rng.uniform(-0.07, 0.07)), height * (0.5 + rng.uniform(-0.04, 0.05)))
    level = rng.uniform(0.35, 0.9) * 255
    first = tuple(float(np.clip(level * rng.uniform(0.94, 1.06), 0, 255)) for _ in range(3))
    if rng.random() < 0.4:
        second = first  # plain
    else:
        factor = rng.uniform(0.65, 1.2)
        second = tuple(float(np.clip(c * factor * rng.uniform(0.95, 1.05), 0, 255)) for c in first)
    return SubjectLook(
        size=(int(width), int(height)),
        gray=gray,
        face_width=float(face_width),
        centre=(float(centre[0]), float(centre[1])),
        angle=float(rng.uniform(-6, 6)),
        mirror=bool(rng.random() < 0.5),
        aspect=float(rng.uniform(0.93, 1.07)),
        bulge=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
        wave=(
            float(rng.uniform(0, 0.015)),
            float(rng.uniform(1.2, 2.5)),
            float(rng.uniform(0, math.pi)),
            float(rng.uniform(0, 2 * math.pi)),
        ),
        contrast=float(rng.uniform(0.8, 1.15)),
        brightness=float(rng.uniform(-0.08, 0.08)),
        gamma=float(rng.uniform(0.8, 1.25)),
        tint=(1.0, 1.0, 1.0) if gray else tuple(float(rng.uniform(0.92, 1.08)) for _ in range(3)),
        blur=float(rng.uniform(0, 1.2)),
        background=(first, second, float(rng.uniform(0, 2 * math.pi))),
        noise=float(rng.uniform(0.8, 1.8)),
    )
