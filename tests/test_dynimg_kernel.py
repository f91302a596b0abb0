"""The compiled DI kernel against the float64 formula: ragged blocks, several phases, pooled sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.dynimg import rank_pooling
from pipeline.dynimg.phases import parse_phases, phase_frames
from pipeline.dynimg.rank_pooling import (
    clip_dynamic_images,
    phase_dynamic_images,
    phase_weights,
    pool_factors,
    rank_pooling_coefficients,
    to_uint8,
)

PHASES = parse_phases(
    {"full": ["onset", "offset"], "rise": ["onset", "apex"], "fall": ["apex", "offset"], "mid": ["onset+3", "apex+5"]}
)


def _reference(frames: np.ndarray, windows: dict[str, tuple[int, int]], first: int) -> np.ndarray:
    """float64 DIs phase by phase, frame by frame, straight from the coefficients."""
    out = []
    for start, end in windows.values():
        clip = frames[start - first : end - first + 1].astype(np.float64)
        a = rank_pooling_coefficients(len(clip))
        out.append(np.tensordot(a, clip, axes=(0, 0)))
    return np.stack(out)


def _clip(T: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a moving gradient plus noise: a DI with structure, not only noise
    base = rng.integers(0, 200, size=(T, *shape), dtype=np.uint8)
    ramp = (np.arange(T)[:, None, None] * 40 // T).astype(np.uint8)
    return base + ramp.reshape(T, 1, 1, *([1] * (len(shape) - 2)))


@pytest.mark.parametrize("frame_block", [5, 7, rank_pooling.FRAME_BLOCK])
@pytest.mark.parametrize(("T", "shape"), [(75, (37, 29, 3)), (33, (23, 31, 3)), (70, (19, 17))])
def test_kernel_equals_the_float64_formula(monkeypatch, frame_block, T, shape):
    """Frame counts that are not multiples of the block, phases whose frames start and end inside a
    block, grey frames: every phase stays within the reference test's tolerance of the float64 formula."""
    monkeypatch.setattr(rank_pooling, "FRAME_BLOCK", frame_block)
    frames = _clip(T, shape, T)
    first = 1000
    numbers = np.arange(first, first + T)
    onset, apex, offset = first + 2, first + T // 2 + 1, first + T - 3
    windows = {name: phase_frames(b, onset, apex, offset) for name, b in PHASES.items()}
    got = phase_dynamic_images(frames, phase_weights(numbers, windows), None)
    expected = _reference(frames, windows, first)
    assert got.dtype == np.float32 and got.shape == expected.shape
    for p, name in enumerate(windows):
        scale = np.abs(expected[p]).max()
        assert np.abs(got[p] - expected[p]).max() <= 1e-4 * scale, name


@pytest.mark.parametrize("frame_block", [6, rank_pooling.FRAME_BLOCK])
@pytest.mark.parametrize(("T", "shape"), [(75, (37, 29, 3)), (14, (23, 31, 3)), (41, (19, 17))])
def test_kernel_adds_each_frame_in_order_with_one_rounding_per_multiply_and_add(monkeypatch, frame_block, T, shape):
    """Bit for bit the float32 sums acc + a_1 x_1 + a_2 x_2 + ... in frame order, each multiply and
    add rounded on its own (numpy never fuses them): the DIs do not depend on how the kernel walks
    the frames (blocks, four frames per pass, rows or whole frames) nor on the processor's vector
    width or FMA, which is what keeps dvc.lock the same on every machine."""
    monkeypatch.setattr(rank_pooling, "FRAME_BLOCK", frame_block)
    frames = _clip(T, shape, T + 1)
    numbers = np.arange(T)
    windows = {name: phase_frames(b, 1, T // 2, T - 2) for name, b in PHASES.items()}
    weights = phase_weights(numbers, windows)
    expected = np.zeros((len(windows), *shape), np.float32)
    for t in range(T):
        for p in range(len(windows)):
            if weights[p, t] != 0:
                expected[p] = expected[p] + weights[p, t] * frames[t].astype(np.float32)
    got = phase_dynamic_images(frames, weights, None)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


@pytest.mark.parametrize(("shape", "size"), [((48, 48, 3), 24), ((44, 44, 3), 11), ((40, 40, 3), 20), ((30, 30), 15)])
def test_pooling_at_the_smaller_size_equals_resizing_after_pooling(monkeypatch, shape, size):
    """Area-resizing every frame first (block sums of uint8) and resizing the DI afterwards agree
    within the float64 tolerance, and their uint8 images by at most one grey level."""
    monkeypatch.setattr(rank_pooling, "FRAME_BLOCK", 6)  # ragged blocks
    T = 41
    frames = _clip(T, shape, size)
    numbers = np.arange(T)
    assert pool_factors(shape, size) == (shape[0] // size, shape[1] // size)
    windows = {name: phase_frames(b, 1, 17, T - 2) for name, b in PHASES.items()}
    weights = phase_weights(numbers, windows)
    pooled = phase_dynamic_images(frames, weights, size)
    full = _reference(frames, windows, 0)
    after = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in full])
    assert pooled.shape == after.shape
    for p in range(len(windows)):
        assert np.abs(pooled[p] - after[p]).max() <= 1e-4 * np.abs(after[p]).max()
    # the same through the public entry point, against the old order (pool at full size, then resize)
    images, _ = clip_dynamic_images(frames, numbers, 1, 17, T - 2, PHASES, size=size)
    monkeypatch.setattr(rank_pooling, "pool_factors", lambda *_: (1, 1))
    resized_after, _ = clip_dynamic_images(frames, numbers, 1, 17, T - 2, PHASES, size=size)
    for name in PHASES:
        assert np.abs(images[name].astype(int) - resized_after[name]).max() <= 1, name
        assert (
            np.abs(images[name].astype(int) - to_uint8(after[list(PHASES).index(name)].astype(np.float32))).max() <= 1
        )


def test_sizes_that_do_not_divide_the_frames_are_resized_after_pooling():
    assert pool_factors((224, 224), 112) == (2, 2)
    assert pool_factors((224, 224), 56) == (4, 4)
    assert pool_factors((224, 224), 100) == (1, 1)  # not an integer fraction
    assert pool_factors((224, 224), 224) == (1, 1)
    assert pool_factors((112, 112), 224) == (1, 1)  # larger than the frames
    assert pool_factors((224, 224), None) == (1, 1)
    frames = _clip(20, (30, 30, 3), 3)
    numbers = np.arange(20)
    images, _ = clip_dynamic_images(frames, numbers, 0, 9, 19, PHASES, size=14)
    windows = {name: phase_frames(b, 0, 9, 19) for name, b in PHASES.items()}
    full = _reference(frames, windows, 0)
    for p, name in enumerate(PHASES):
        after = cv2.resize(full[p].astype(np.float32), (14, 14), interpolation=cv2.INTER_AREA)
        assert np.abs(images[name].astype(int) - to_uint8(after)).max() <= 1


def test_frames_outside_every_phase_are_not_read():
    class Counting:
        def __init__(self, frames):
            self.frames, self.shape, self.read = frames, frames.shape, set()

        def __getitem__(self, key):
            self.read.update(range(*key.indices(self.shape[0])))
            return self.frames[key]

    frames = Counting(_clip(90, (8, 8, 3), 5))
    phase_dynamic_images(frames, phase_weights(np.arange(90), {"a": (10, 40), "b": (35, 70)}), None)
    assert frames.read == set(range(10, 71))


def test_kernels_compile_where_numba_cannot_cache_them():
    """Where numba finds no folder to cache machine code in, the kernels are compiled in the
    process instead of the import failing (played with a function whose source is no file)."""
    namespace: dict = {}
    exec(compile("def add_one(x):\n    return x + 1\n", "<no file>", "exec"), namespace)
    assert rank_pooling._compiled(namespace["add_one"])(41) == 42
