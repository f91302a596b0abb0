"""Dynamic images by approximate rank pooling, and the phase intervals they are computed over.

Approximate rank pooling (Bilen et al., CVPR 2016): for frames I_1..I_T,
    DI = sum_t a_t I_t,  a_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1}),  H_t = sum_{i<=t} 1/i
(`harmonic`), or the simpler a_t = 2t - T - 1 (`linear`). Both sets of coefficients sum to zero,
so static appearance cancels and only motion remains; ports that drop the "- 1" of the linear
form leak the mean image into the DI, which is why it is spelled out here.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np

VARIANTS = ("harmonic", "linear")
ANCHORS = ("onset", "apex", "offset")
DEFAULT_PHASES = {"full": ("onset", "offset"), "onset_apex": ("onset", "apex"), "apex_offset": ("apex", "offset")}


class SingleFrameWarning(UserWarning):
    """A dynamic image over one frame holds no motion."""


def rank_pooling_coefficients(T: int, variant: str = "harmonic") -> np.ndarray:
    """The (T,) float64 weights a_1..a_T. T = 1 is defined as a_1 = 1 (the frame itself)."""
    if T < 1:
        raise ValueError(f"need at least one frame, got T={T}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown rank-pooling variant {variant!r}; expected one of {VARIANTS}")
    if T == 1:
        return np.ones(1)
    t = np.arange(1, T + 1, dtype=np.float64)
    if variant == "linear":
        return 2 * t - T - 1
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / t)])  # H_0..H_T
    return 2 * (T - t + 1) - (T + 1) * (harmonic[T] - harmonic[:-1])


def dynamic_image(frames: np.ndarray, variant: str = "harmonic") -> np.ndarray:
    """The float32 (H,W,C) dynamic image of a (T,H,W,C) clip: one weighted sum over time."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T,H,W,C), got {frames.shape}")
    T = frames.shape[0]
    if T == 1:
        warnings.warn("dynamic image of a single frame: it holds no motion", SingleFrameWarning, stacklevel=2)
    weights = rank_pooling_coefficients(T, variant).astype(np.float32)
    # tensordot is one BLAS call over the frame axis; no per-frame or per-pixel Python loop.
    return np.tensordot(weights, frames.astype(np.float32, copy=False), axes=(0, 0))


def to_uint8(image: np.ndarray, per_channel: bool = False) -> np.ndarray:
    """Min-max map to 0..255, over the whole image or each channel; a flat image maps to 0."""
    axes = (0, 1) if per_channel else None
    low = image.min(axis=axes, keepdims=True)
    span = image.max(axis=axes, keepdims=True) - low
    scaled = np.divide(image - low, span, out=np.zeros_like(image, dtype=np.float32), where=span > 0)
    return np.round(scaled * 255).astype(np.uint8)


_ANCHOR = re.compile(r"^\s*(onset|apex|offset)\s*(?:([+-])\s*(\d+))?\s*$")


@dataclass(frozen=True)
class PhaseBound:
    anchor: str
    shift: int = 0

    @classmethod
    def parse(cls, text: object) -> "PhaseBound":
        match = _ANCHOR.match(str(text))
        if not match:
            raise ValueError(f"phase bound {text!r} must be onset, apex or offset, optionally followed by +N or -N")
        shift = int(match.group(3) or 0) * (-1 if match.group(2) == "-" else 1)
        return cls(match.group(1), shift)

    def frame(self, onset: int, apex: int, offset: int) -> int:
        return {"onset": onset, "apex": apex, "offset": offset}[self.anchor] + self.shift


def parse_phases(spec: Mapping[str, object] | None) -> dict[str, tuple[PhaseBound, PhaseBound]]:
    """Phases from params: {name: [start, end]} with anchors like 'apex' or 'onset+2'."""
    spec = spec or DEFAULT_PHASES
    phases = {}
    for name, bounds in spec.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
            raise ValueError(f"phase name {name!r} may hold only letters, digits and '_'")
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"phase {name!r} must be a [start, end] pair, got {bounds!r}")
        phases[str(name)] = (PhaseBound.parse(bounds[0]), PhaseBound.parse(bounds[1]))
    return phases


def phase_frames(
    bounds: tuple[PhaseBound, PhaseBound], onset: int, apex: int, offset: int
) -> tuple[int, int]:
    """The phase's first and last frame number, clipped to the clip's onset..offset."""
    start = max(onset, min(offset, bounds[0].frame(onset, apex, offset)))
    end = max(onset, min(offset, bounds[1].frame(onset, apex, offset)))
    if end < start:
        raise ValueError(f"phase ends (frame {end}) before it starts (frame {start})")
    return start, end


def clip_dynamic_images(
    frames: np.ndarray,
    frame_numbers: np.ndarray,
    onset: int,
    apex: int,
    offset: int,
    phases: Mapping[str, tuple[PhaseBound, PhaseBound]],
    variant: str = "harmonic",
    size: int | None = None,
    per_channel: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """uint8 DIs of one clip for every phase, and the number of frames each phase spans.

    Rank pooling and resizing are both linear, so the DI is computed at the aligned resolution
    and resized once, instead of resizing every frame.
    """
    index = {int(n): i for i, n in enumerate(frame_numbers)}
    images, lengths = {}, {}
    for name, bounds in phases.items():
        start, end = phase_frames(bounds, onset, apex, offset)
        missing = [n for n in (start, end) if n not in index]
        if missing:
            raise ValueError(f"frames {missing} of phase {name} are not in the aligned clip")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingleFrameWarning)  # counted and reported by the stage
            image = dynamic_image(frames[index[start] : index[end] + 1], variant)
        if size is not None and image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        images[name] = to_uint8(image, per_channel)
        lengths[name] = end - start + 1
    return images, lengths
