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
from collections.abc import Mapping
from dataclasses import dataclass

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
    def parse(cls, text: object) -> PhaseBound:
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
    bounds: tuple[PhaseBound, PhaseBound], onset: int, apex: int, offset: int, min_frames: int = 1
) -> tuple[int, int]:
    """The phase's first and last frame number, clipped to the clip's onset..offset.

    A phase shorter than `min_frames` is widened one frame at a time, alternately at its end and
    at its start, staying within onset..offset, until it is long enough or spans the whole clip:
    an onset-apex phase with the apex on the onset frame becomes [onset, onset + 1] rather than a
    motionless single frame.
    """
    start = max(onset, min(offset, bounds[0].frame(onset, apex, offset)))
    end = max(onset, min(offset, bounds[1].frame(onset, apex, offset)))
    if end < start:
        raise ValueError(f"phase ends (frame {end}) before it starts (frame {start})")
    grow_end = True
    while end - start + 1 < min_frames and (start > onset or end < offset):
        if (grow_end and end < offset) or start == onset:
            end += 1
        else:
            start -= 1
        grow_end = not grow_end
    return start, end


def phase_weights(
    frame_numbers: np.ndarray, windows: Mapping[str, tuple[int, int]], variant: str = "harmonic"
) -> np.ndarray:
    """(P, T) float32 matrix whose row p holds phase p's rank-pooling weights over the clip's frames."""
    index = {int(n): i for i, n in enumerate(frame_numbers)}
    weights = np.zeros((len(windows), len(frame_numbers)), np.float32)
    for row, (name, (start, end)) in enumerate(windows.items()):
        missing = [n for n in range(start, end + 1) if n not in index]
        if missing:
            raise ValueError(
                f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} of phase {name} are not in the aligned clip"
            )
        weights[row, index[start] : index[end] + 1] = rank_pooling_coefficients(end - start + 1, variant)
    return weights


FRAME_BLOCK = 32  # frames converted to float at a time: 19 MB of float32 for 224x224 RGB


def clip_dynamic_images(
    frames: np.ndarray,  # or an h5py.Dataset of (T,H,W,3) uint8
    frame_numbers: np.ndarray,
    onset: int,
    apex: int,
    offset: int,
    phases: Mapping[str, tuple[PhaseBound, PhaseBound]],
    variant: str = "harmonic",
    size: int | None = None,
    per_channel: bool = False,
    min_frames: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """uint8 DIs of one clip for every phase, and the number of frames each phase spans.

    All phases come from one matrix product over the clip, so its frames are converted to float
    and read once whatever the number of phases. The product runs over blocks of `FRAME_BLOCK`
    frames, so memory stays the same whatever the clip's length; `frames` may be an HDF5 dataset,
    read block by block. Rank pooling and resizing are both linear, so each DI is resized once at
    the end instead of resizing every frame.
    """
    windows = {name: phase_frames(bounds, onset, apex, offset, min_frames) for name, bounds in phases.items()}
    weights = phase_weights(frame_numbers, windows, variant)
    used = np.flatnonzero(weights.any(axis=0))  # frames outside every phase are not even read
    shape = frames.shape[1:]
    total = np.zeros((len(windows), int(np.prod(shape))), np.float32)
    for start in range(used[0], used[-1] + 1, FRAME_BLOCK):
        stop = min(start + FRAME_BLOCK, used[-1] + 1)
        block = np.asarray(frames[start:stop]).reshape(stop - start, -1).astype(np.float32)
        total += weights[:, start:stop] @ block
    stack = total.reshape(len(windows), *shape)
    images = {}
    for name, image in zip(windows, stack):
        if size is not None and image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        images[name] = to_uint8(image, per_channel)
    return images, {name: end - start + 1 for name, (start, end) in windows.items()}


APEX_SOURCES = ("annotated_or_estimated", "annotated", "estimated")


@dataclass(frozen=True)
class DynamicImageSettings:
    """The dynimg section of params.yaml, validated."""

    phases: dict
    variant: str = "harmonic"
    normalize: str = "global"  # global | per_channel
    size: int = 112
    apex: str = "annotated_or_estimated"
    min_phase_frames: int = 2

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> DynamicImageSettings:
        settings = cls(
            phases=parse_phases(params.get("phases")),  # type: ignore[arg-type]
            variant=str(params.get("variant", "harmonic")),
            normalize=str(params.get("normalize", "global")),
            size=int(params.get("size", 112)),  # type: ignore[arg-type]
            apex=str(params.get("apex", "annotated_or_estimated")),
            min_phase_frames=int(params.get("min_phase_frames", 2)),  # type: ignore[arg-type]
        )
        if settings.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {settings.variant!r}")
        if settings.normalize not in ("global", "per_channel"):
            raise ValueError(f"normalize must be global or per_channel, got {settings.normalize!r}")
        if settings.apex not in APEX_SOURCES:
            raise ValueError(f"apex must be one of {APEX_SOURCES}, got {settings.apex!r}")
        if settings.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {settings.size}")
        if settings.min_phase_frames < 1:
            raise ValueError(f"min_phase_frames must be at least 1, got {settings.min_phase_frames}")
        return settings


def apply_overrides(
    samples: list[dict], overrides: Mapping[str, Mapping[str, object]] | None
) -> tuple[list[dict], list[str]]:
    """Samples with per-clip corrections {"subject/clip": {onset|apex|offset: frame}} applied.

    Returns the corrected samples (apex_source "override" where the apex was set) and one
    message per override that names no sample or holds anything but those three keys.
    """
    overrides = dict(overrides or {})
    problems = []
    by_key = {f"{s['subject']}/{s['clip']}": s for s in samples}
    for key, values in overrides.items():
        if key not in by_key:
            problems.append(
                f"override {key}: no such clip in the samples table (keys are subject/clip, e.g. sub01/EP02_01f)"
            )
        elif not isinstance(values, Mapping) or not set(values) <= set(ANCHORS) or not values:
            problems.append(
                f"override {key}: expected a mapping of onset / apex / offset to frame numbers, got {values!r}"
            )
    if problems:
        return samples, problems
    corrected = []
    for sample in samples:
        change = overrides.get(f"{sample['subject']}/{sample['clip']}")
        if change:
            sample = {**sample, **{k: int(v) for k, v in change.items()}}  # type: ignore[arg-type]
            if "apex" in change:
                sample["apex_source"] = "override"
            if not sample["onset"] <= sample["apex"] <= sample["offset"]:
                problems.append(f"override {sample['subject']}/{sample['clip']}: onset <= apex <= offset does not hold")
        corrected.append(sample)
    return corrected, problems
