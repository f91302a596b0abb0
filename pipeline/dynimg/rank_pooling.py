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
import numba
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


def _compiled(function):
    """numba.njit, the machine code cached beside this module or in the user's cache folder (a
    process then loads it in ~0.3 s); where numba can write neither, compiled in each process
    (a few seconds) instead of failing at import."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


def to_uint8(image: np.ndarray, per_channel: bool = False) -> np.ndarray:
    """Min-max map to 0..255, over the whole image or each channel; a flat image maps to 0."""
    axes = (0, 1) if per_channel else None
    low = image.min(axis=axes, keepdims=True).astype(np.float32)
    span = image.max(axis=axes, keepdims=True) - low
    scale = np.divide(np.float32(255), span, out=np.zeros_like(span, dtype=np.float32), where=span > 0)
    if per_channel and image.ndim == 3:
        return np.stack([_to_uint8_with(image[..., c], low.flat[c], scale.flat[c]) for c in range(image.shape[2])], -1)
    return _to_uint8_with(image, low.flat[0], scale.flat[0])


def _to_uint8_with(image: np.ndarray, low: np.float32, scale: np.float32) -> np.ndarray:
    """rint((image - low) * scale) as uint8, float32 throughout (as numpy would round it), in one
    compiled pass instead of numpy's four (subtract, multiply, round, convert)."""
    values = np.ascontiguousarray(image, dtype=np.float32)
    out = np.empty(values.shape, np.uint8)
    _scale_to_uint8(values.reshape(-1), np.float32(low), np.float32(scale), out.reshape(-1))
    return out


@_compiled
def _scale_to_uint8(values: np.ndarray, low: np.float32, scale: np.float32, out: np.ndarray) -> None:
    for i in range(len(values)):
        out[i] = np.uint8(np.rint((values[i] - low) * scale))


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


FRAME_BLOCK = 32  # frames read from the cache at a time (4.8 MB of uint8 for 224x224 RGB)


def pool_factors(frame_shape: tuple[int, ...], size: int | None) -> tuple[int, int]:
    """(ky, kx): the DI is pooled at the smaller size when `size` divides the frames' height and width.

    INTER_AREA to an integer fraction of the frame is the mean of ky x kx blocks of pixels, a linear
    map: resizing each frame first and then pooling gives the DI resized after pooling, up to
    float32 rounding. Block sums of uint8 are exact integers, so only the weighted sum rounds.
    Any other size (larger than the frames, or a fraction that is not an integer) gives (1, 1):
    pooled at the frames' size and resized at the end.
    """
    height, width = frame_shape[:2]
    if size is None or size >= height or size >= width or height % size or width % size:
        return 1, 1
    return height // size, width // size


# The compiled kernel. Every phase's sum runs in frame order, acc + a_1 x_1 + a_2 x_2 + ..., one
# rounded multiply and one rounded add per term: numba without fastmath neither reorders nor fuses
# them (no FMA), so the vector width does not change a bit and every processor gives the same DIs
# (tests/test_cpu_dispatch.py plays older ones). Frames are taken four at a time, each row widened
# to float32 once for two phases; a frame outside a phase adds 0 x x = +0 to it, which changes nothing.


@_compiled
def _add_two_phases(acc_a, acc_b, weights_a, weights_b, rows, t: int, y: int) -> None:
    """acc_a += weights_a[t + k] * rows[t + k, y] for k = 0..3, in that order; acc_b likewise."""
    r0, r1, r2, r3 = rows[t, y], rows[t + 1, y], rows[t + 2, y], rows[t + 3, y]
    a0, a1, a2, a3 = weights_a[t], weights_a[t + 1], weights_a[t + 2], weights_a[t + 3]
    b0, b1, b2, b3 = weights_b[t], weights_b[t + 1], weights_b[t + 2], weights_b[t + 3]
    for i in range(len(acc_a)):
        x0, x1, x2, x3 = np.float32(r0[i]), np.float32(r1[i]), np.float32(r2[i]), np.float32(r3[i])
        acc_a[i] = (((acc_a[i] + a0 * x0) + a1 * x1) + a2 * x2) + a3 * x3
        acc_b[i] = (((acc_b[i] + b0 * x0) + b1 * x1) + b2 * x2) + b3 * x3


@_compiled
def _add_one_phase(acc, weights, rows, t: int, y: int) -> None:
    """acc += weights[t + k] * rows[t + k, y] for k = 0..3, in that order."""
    r0, r1, r2, r3 = rows[t, y], rows[t + 1, y], rows[t + 2, y], rows[t + 3, y]
    a0, a1, a2, a3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
    for i in range(len(acc)):
        x0, x1, x2, x3 = np.float32(r0[i]), np.float32(r1[i]), np.float32(r2[i]), np.float32(r3[i])
        acc[i] = (((acc[i] + a0 * x0) + a1 * x1) + a2 * x2) + a3 * x3


@_compiled
def _add_rows(rows, weights, in_group, total, y: int, row: int) -> None:
    """total[p, y] += sum over t of weights[p, t] * rows[t, row], for every phase p, in frame order."""
    n, phases = rows.shape[0], len(weights)
    active = np.empty(phases, np.int64)
    for group in range(n // 4):
        count = 0  # the phases with a frame among these four
        for p in range(phases):
            if in_group[group, p]:
                active[count] = p
                count += 1
        for k in range(0, count - 1, 2):
            a, b = active[k], active[k + 1]
            _add_two_phases(total[a, y], total[b, y], weights[a], weights[b], rows, 4 * group, row)
        if count % 2:
            p = active[count - 1]
            _add_one_phase(total[p, y], weights[p], rows, 4 * group, row)
    for t in range(n - n % 4, n):
        for p in range(phases):
            w, acc, source = weights[p, t], total[p, y], rows[t, row]
            if w != 0:
                for i in range(len(acc)):
                    acc[i] = acc[i] + w * np.float32(source[i])


@_compiled
def _accumulate_block(block, weights, total, ky: int) -> None:
    """total (P, H/ky, R) += weights (P, n) x block (n, H, R), each output row the sum of ky rows.

    Row by row of the output, so that pooled (ky > 1) the rows in use stay in L1 whatever the frame
    size: a frame's row is first the sum of its ky rows widened to float32 (sums of uint8 are exact
    integers). Unpooled, `phase_dynamic_images` hands each frame over as one row.
    """
    n, _, width = block.shape
    in_group = np.zeros((n // 4, len(weights)), np.bool_)  # phase p has a frame among frames 4g..4g+3
    for t in range(n - n % 4):
        for p in range(len(weights)):
            in_group[t // 4, p] |= weights[p, t] != 0
    pooled = np.empty((n, 1, width), np.float32)
    for y in range(total.shape[1]):
        if ky == 1:
            _add_rows(block, weights, in_group, total, y, y)
            continue
        for t in range(n):
            for i in range(width):
                pooled[t, 0, i] = np.float32(block[t, y * ky, i])
            for k in range(1, ky):
                for i in range(width):
                    pooled[t, 0, i] += np.float32(block[t, y * ky + k, i])
        _add_rows(pooled, weights, in_group, total, y, 0)


def phase_dynamic_images(frames: np.ndarray, weights: np.ndarray, size: int | None = None) -> np.ndarray:
    """(P, h, w, C) float32 DIs of (T,H,W,C) uint8 `frames` (an array, h5py.Dataset or VerifiedFrames)
    for the (P, T) `weights`, at `size` x `size` (None: the frames' size).

    One pass over the frames: blocks of `FRAME_BLOCK` frames are read (memory stays flat whatever
    the clip's length) and added into every phase by a compiled kernel (`_accumulate_block`); frames
    no phase uses are not read. Where `size` divides the frames' height and width (224 -> 112) the
    DIs are pooled at that size (`pool_factors`): rows are summed before the product and columns
    after it, 4x less float work; otherwise each DI is resized once at the end (INTER_AREA), as
    both steps are linear.
    """
    used = np.flatnonzero(weights.any(axis=0))
    height, width, *channels = frames.shape[1:]
    phases = len(weights)
    ky, kx = pool_factors((height, width), size)
    # Unpooled, each frame is handed to the kernel as one long row, streamed once per four frames:
    # 1.1-1.3x quicker than row by row (short reads from 32 frames 150 KB apart) in alternating
    # runs, the same sums in the same order.
    row = width * int(np.prod(channels))
    rows, row = (1, height * row) if ky == 1 else (height, row)
    total = np.zeros((phases, rows // ky, row), np.float32)
    for start in range(used[0], used[-1] + 1, FRAME_BLOCK):
        stop = min(start + FRAME_BLOCK, used[-1] + 1)
        block = np.ascontiguousarray(frames[start:stop]).reshape(stop - start, rows, row)
        _accumulate_block(block, np.ascontiguousarray(weights[:, start:stop]), total, ky)
    stack = total.reshape(phases, height // ky, width, *channels)
    if kx > 1:  # the column means (INTER_AREA to an integer fraction): far quicker than a numpy sum over kx
        stack = np.stack(
            [cv2.resize(image, (width // kx, height // ky), interpolation=cv2.INTER_AREA) for image in stack]
        )
    if ky > 1:
        stack *= np.float32(1 / ky)
    if size is not None and stack.shape[1:3] != (size, size):
        stack = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in stack])
    return stack


def clip_dynamic_images(
    frames: np.ndarray,  # or an h5py.Dataset / VerifiedFrames of (T,H,W,C) uint8
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

    All phases come from one pass over the clip's frames (`phase_dynamic_images`), so its frames
    are read and converted once whatever the number of phases; `frames` may be an HDF5 dataset.
    `motion`: the clip's motion anchors (`peak`, `mNN`) when the phases use them. With
    `extra_windows` ((first, last) frame pairs: jittered phases) a third item lists their DIs, in order.
    """
    windows = {name: phase_frames(bounds, onset, apex, offset, min_frames, motion) for name, bounds in phases.items()}
    images = _window_images(frames, frame_numbers, windows, variant, size, per_channel)
    lengths = {name: end - start + 1 for name, (start, end) in windows.items()}
    if not extra_windows:
        return images, lengths
    # Extra windows (phase jitter): a window equal to a phase's reuses that DI, bit for bit; the
    # others come from a second pass, so the phases' DIs are those computed without them.
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
    """uint8 DIs of the frame windows {name: (first, last frame number)}, one pass over the frames."""
    stack = phase_dynamic_images(frames, phase_weights(frame_numbers, windows, variant), size)
    return {name: to_uint8(image, per_channel) for name, image in zip(windows, stack)}
