"""Dynamic images by approximate rank pooling: the coefficients, one DI, and every phase DI of a clip at once.

Approximate rank pooling (Bilen et al., CVPR 2016): for frames I_1..I_T,
    DI = sum_t a_t I_t,  a_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1}),  H_t = sum_{i<=t} 1/i
(`harmonic`), or the simpler a_t = 2t - T - 1 (`linear`). Both sets of coefficients sum to zero,
so static appearance cancels and only motion remains; ports that drop the "- 1" of the linear
form leak the mean image into the DI, which is why it is spelled out here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from pipeline.dynimg.phases import PhaseBound, phase_frames

VARIANTS = ("harmonic", "linear")


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
    motion: Mapping[str, int] | None = None,
    extra_windows: Sequence[tuple[int, int]] = (),
) -> tuple[dict[str, np.ndarray], dict[str, int]] | tuple[dict[str, np.ndarray], dict[str, int], list[np.ndarray]]:
    """uint8 DIs of one clip for every phase, and the number of frames each phase spans.

    All phases come from one matrix product over the clip, so its frames are converted to float
    and read once whatever the number of phases. The product runs over blocks of `FRAME_BLOCK`
    frames, so memory stays the same whatever the clip's length; `frames` may be an HDF5 dataset,
    read block by block. Rank pooling and resizing are both linear, so each DI is resized once at
    the end instead of resizing every frame. `motion`: the clip's motion anchors (`peak`, `mNN`)
    when the phases use them. With `extra_windows` ((first, last) frame pairs: jittered phases) a
    third item lists their DIs, in order.
    """
    windows = {name: phase_frames(bounds, onset, apex, offset, min_frames, motion) for name, bounds in phases.items()}
    images = _window_images(frames, frame_numbers, windows, variant, size, per_channel)
    lengths = {name: end - start + 1 for name, (start, end) in windows.items()}
    if not extra_windows:
        return images, lengths
    # Extra windows (phase jitter): a window equal to a phase's reuses that DI, bit for bit; the
    # others come from a second product, so the phases' DIs are those computed without them.
    known = {window: name for name, window in windows.items()}
    todo = {f"w{k}": w for k, w in enumerate(dict.fromkeys(extra_windows)) if w not in known}
    computed = _window_images(frames, frame_numbers, todo, variant, size, per_channel) if todo else {}
    by_window = {w: computed[key] for key, w in todo.items()}
    extra = [images[known[w]] if w in known else by_window[w] for w in extra_windows]
    return images, lengths, extra


def _window_images(
    frames: np.ndarray,
    frame_numbers: np.ndarray,
    windows: Mapping[str, tuple[int, int]],
    variant: str,
    size: int | None,
    per_channel: bool,
) -> dict[str, np.ndarray]:
    """uint8 DIs of the frame windows {name: (first, last frame number)}, one matrix product."""
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
    return images
