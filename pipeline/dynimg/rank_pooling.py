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
    scale = np.divide(np.float32(255), span, out=np.zeros_like(span, dtype=np.float32), where=span > 0)
    scaled = np.subtract(image, low, dtype=np.float32)  # one temporary, scaled and rounded in place
    scaled *= scale
    return np.rint(scaled, out=scaled).astype(np.uint8)


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
TILE_BYTES = 1024 * 1024  # float32 frames x rows converted and summed at a time: they stay in L2


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


def _weighted_tiles(
    block: np.ndarray, weights: np.ndarray, total: np.ndarray, ky: int, buffers: dict[str, np.ndarray]
) -> None:
    """total (P, H/ky, W*C) += weights (P, n) x block (n, H, W, C) uint8, rows summed by ky first.

    Tiles of rows across the block's frames: each tile is widened (uint8 -> uint16 row sums ->
    float32) into a small buffer and multiplied by the weights while it is in cache, and the
    product is added to its rows of `total`, so nothing the size of a float32 block is ever made.
    """
    n, height = block.shape[:2]
    row = int(np.prod(block.shape[2:]))
    pooled = height // ky
    rows = min(buffers["float"].size // (n * row), buffers["product"].size // (len(weights) * row))
    view = block.reshape(n, pooled, ky, row)
    for y in range(0, pooled, rows):
        end = min(y + rows, pooled)
        size = n * (end - y) * row
        tile = buffers["float"][:size].reshape(n, end - y, row)
        if ky == 1:
            np.copyto(tile, view[:, y:end, 0])
        else:  # exact integer sums of uint8 rows; other inputs (float frames) are summed in float32
            exact = block.dtype == np.uint8
            sums = buffers["sum"][:size].reshape(n, end - y, row) if exact else tile
            np.add(view[:, y:end, 0], view[:, y:end, 1], out=sums, dtype=sums.dtype)
            for k in range(2, ky):
                np.add(sums, view[:, y:end, k], out=sums, dtype=sums.dtype)
            if exact:
                np.copyto(tile, sums)
        product = buffers["product"][: len(weights) * (end - y) * row].reshape(len(weights), (end - y) * row)
        # einsum, not matmul: BLAS picks its kernel (FMA or not, summation order) per processor, which
        # changed the DIs' bytes between machines; numpy's own sum of products does not (cpu_dispatch).
        np.einsum("pt,tx->px", weights, tile.reshape(n, -1), out=product, optimize=False)
        total[:, y * row : end * row] += product


def phase_dynamic_images(frames: np.ndarray, weights: np.ndarray, size: int | None = None) -> np.ndarray:
    """(P, h, w, C) float32 DIs of (T,H,W,C) uint8 `frames` (an array, h5py.Dataset or VerifiedFrames)
    for the (P, T) `weights`, at `size` x `size` (None: the frames' size).

    One pass over the frames: blocks of `FRAME_BLOCK` frames are read (memory stays flat whatever
    the clip's length) and multiplied by the weights in cache-sized tiles of rows
    (`_weighted_tiles`); frames no phase uses are not read. Where `size` divides the frames'
    height and width (224 -> 112) the DIs are pooled at that size (`pool_factors`): rows are summed
    in uint16 before the product and columns after it, 4x less float work; otherwise each DI is
    resized once at the end (INTER_AREA), as both steps are linear.
    """
    used = np.flatnonzero(weights.any(axis=0))
    height, width, *channels = frames.shape[1:]
    phases = len(weights)
    ky, kx = pool_factors((height, width), size)
    row = width * int(np.prod(channels))
    total = np.zeros((phases, (height // ky) * row), np.float32)
    block_frames = min(FRAME_BLOCK, int(used[-1] - used[0] + 1))
    tile = max(TILE_BYTES // 4, block_frames * row)  # at least one row of every frame of a block
    buffers = {
        "float": np.empty(tile, np.float32),
        "sum": np.empty(tile, np.uint16 if ky * 255 <= np.iinfo(np.uint16).max else np.uint32),
        "product": np.empty(phases * (tile // block_frames), np.float32),
    }
    for start in range(used[0], used[-1] + 1, FRAME_BLOCK):
        stop = min(start + FRAME_BLOCK, used[-1] + 1)
        block = np.asarray(frames[start:stop])
        _weighted_tiles(block, np.ascontiguousarray(weights[:, start:stop]), total, ky, buffers)
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
