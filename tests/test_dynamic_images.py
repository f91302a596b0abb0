"""Rank pooling against the formula, phases, normalization and the dynimg stage on an aligned cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.dynimg.phases import outside_clip, parse_phases, phase_frames
from pipeline.dynimg.rank_pooling import (
    SingleFrameWarning,
    clip_dynamic_images,
    dynamic_image,
    rank_pooling_coefficients,
    to_uint8,
)


def _direct_harmonic(frames: np.ndarray) -> np.ndarray:
    """The textbook formula, term by term: a_t = sum_{k=t..T} (2k - T - 1) / k."""
    T = len(frames)
    out = np.zeros(frames.shape[1:], np.float64)
    for t in range(1, T + 1):
        a_t = sum((2 * k - T - 1) / k for k in range(t, T + 1))
        out += a_t * frames[t - 1].astype(np.float64)
    return out


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 7, 11, 16, 31, 50, 64, 99, 128, 200])
def test_dynamic_image_matches_the_rank_pooling_formula(T):
    rng = np.random.default_rng(T)
    frames = rng.integers(0, 256, size=(T, 9, 7, 3), dtype=np.uint8)
    # one frame holds no motion; the formula's a_1 = 0 is replaced by the defined a_1 = 1
    expected = _direct_harmonic(frames) if T > 1 else frames[0].astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingleFrameWarning)
        got = dynamic_image(frames, "harmonic")
    assert got.dtype == np.float32 and got.shape == (9, 7, 3)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("variant", ["harmonic", "linear"])
@pytest.mark.parametrize("T", range(2, 60))
def test_coefficients_sum_to_zero_so_static_content_cancels(variant, T):
    assert abs(rank_pooling_coefficients(T, variant).sum()) < 1e-9 * T * T
    still = np.full((T, 4, 4, 3), 200, np.uint8)
    # float32 rounding only: far below one grey level of a DI whose weights total sum|a_t|
    bound = 1e-6 * 200 * np.abs(rank_pooling_coefficients(T, variant)).sum()
    assert np.abs(dynamic_image(still, variant)).max() < bound


def test_linear_variant_and_single_frame():
    assert rank_pooling_coefficients(4, "linear").tolist() == [-3, -1, 1, 3]
    with pytest.warns(SingleFrameWarning):
        single = dynamic_image(np.full((1, 2, 2, 3), 5, np.uint8))
    assert np.all(single == 5)
    with pytest.raises(ValueError, match="variant"):
        rank_pooling_coefficients(3, "mean")


def test_brightening_clip_gives_positive_di_and_reversed_clip_negative():
    ramp = np.stack([np.full((2, 2, 3), v, np.uint8) for v in range(10, 60, 5)])
    assert np.all(dynamic_image(ramp) > 0)
    assert np.all(dynamic_image(ramp[::-1]) < 0)


def test_to_uint8_global_and_per_channel():
    image = np.stack([np.linspace(0, 1, 4).reshape(2, 2), np.linspace(10, 12, 4).reshape(2, 2), np.zeros((2, 2))], -1)
    glob = to_uint8(image.astype(np.float32))
    assert glob.min() == 0 and glob.max() == 255
    per = to_uint8(image.astype(np.float32), per_channel=True)
    assert per[..., 0].max() == 255 and per[..., 1].min() == 0 and per[..., 2].max() == 0  # flat channel -> 0


def test_phases_with_shifts_and_anchors_outside_the_clip():
    phases = parse_phases({"full": ["onset", "offset"], "rise": ["onset+2", "apex"], "late": ["apex - 1", "offset+9"]})
    assert phase_frames(phases["full"], 10, 15, 30) == (10, 30)
    assert phase_frames(phases["rise"], 10, 15, 30) == (12, 15)
    # an anchor beyond the clip is an error, never clamped (it used to be clipped to (14, 30))
    assert outside_clip(phases["late"], 10, 15, 30) and not outside_clip(phases["rise"], 10, 15, 30)
    assert outside_clip(parse_phases({"x": ["onset", "apex-2"]})["x"], 10, 11, 30)  # ends before the onset
    with pytest.raises(ValueError, match=r"phase \[apex-1, offset\+9\] spans frames 14..39, outside"):
        phase_frames(phases["late"], 10, 15, 30)
    with pytest.raises(ValueError, match="onset, apex or offset"):
        parse_phases({"bad": ["start", "apex"]})
    with pytest.raises(ValueError, match="before it starts"):
        phase_frames(parse_phases({"x": ["apex", "onset"]})["x"], 10, 15, 30)


def test_onset_apex_and_apex_offset_images_have_opposite_motion():
    """A blob that brightens up to the apex and fades after: the two phase DIs are negatives."""
    T, apex = 21, 8
    intensity = np.concatenate([np.linspace(0, 1, apex + 1), np.linspace(1, 0, T - apex)[1:]])
    frames = np.zeros((T, 16, 16, 3), np.float32)
    frames[:, 4:12, 4:12, :] = 100 + 80 * intensity[:, None, None, None]
    numbers = np.arange(100, 100 + T)
    images, lengths = clip_dynamic_images(frames, numbers, 100, 100 + apex, 100 + T - 1, parse_phases(None), size=None)
    assert lengths == {"full": T, "onset_apex": apex + 1, "apex_offset": T - apex}
    rise = dynamic_image(frames[: apex + 1])[6, 6, 0]
    fall = dynamic_image(frames[apex:])[6, 6, 0]
    assert rise > 0 > fall
    centre, corner = (6, 6, 0), (0, 0, 0)
    assert images["onset_apex"][centre] > images["onset_apex"][corner]
    assert images["apex_offset"][centre] < images["apex_offset"][corner]


def test_short_phases_are_widened_within_the_clip():
    onset_apex = parse_phases(None)["onset_apex"]
    assert phase_frames(onset_apex, 10, 10, 30, min_frames=2) == (10, 11)  # apex on the onset frame
    assert phase_frames(onset_apex, 10, 10, 30, min_frames=4) == (10, 13)  # cannot grow before the onset
    apex_offset = parse_phases(None)["apex_offset"]
    assert phase_frames(apex_offset, 10, 30, 30, min_frames=3) == (28, 30)
    assert phase_frames(parse_phases({"mid": ["apex", "apex"]})["mid"], 10, 20, 30, min_frames=3) == (19, 21)
    assert phase_frames(onset_apex, 10, 10, 10, min_frames=3) == (10, 10)  # a one-frame clip stays one frame


def test_all_phases_come_from_one_product_equal_to_separate_dynamic_images():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (25, 12, 10, 3), dtype=np.uint8)
    numbers = np.arange(300, 325)
    phases = parse_phases({"full": ["onset", "offset"], "a": ["onset", "apex"], "b": ["apex", "offset-3"]})
    images, _ = clip_dynamic_images(frames, numbers, 302, 311, 324, phases, size=None)
    for name, (lo, hi) in {"full": (2, 24), "a": (2, 11), "b": (11, 21)}.items():
        assert np.array_equal(images[name], to_uint8(dynamic_image(frames[lo : hi + 1])))


def test_long_clips_are_read_block_by_block_from_the_cache(tmp_path):
    """A clip longer than FRAME_BLOCK, read straight from an HDF5 dataset, gives the DIs of the
    frames held in memory: memory per clip is bounded without changing the result."""
    import h5py

    from pipeline.dynimg.rank_pooling import FRAME_BLOCK

    rng = np.random.default_rng(1)
    T = 3 * FRAME_BLOCK + 7
    frames = rng.integers(0, 256, (T, 12, 10, 3), dtype=np.uint8)
    numbers = np.arange(T)
    phases = parse_phases(None)
    with h5py.File(tmp_path / "clip.h5", "w") as handle:
        handle.create_dataset("frames", data=frames, chunks=(1, 12, 10, 3))
    with h5py.File(tmp_path / "clip.h5", "r") as handle:
        from_file, lengths = clip_dynamic_images(handle["frames"], numbers, 3, 60, T - 2, phases, size=None)
    in_memory, _ = clip_dynamic_images(frames, numbers, 3, 60, T - 2, phases, size=None)
    assert lengths == {"full": T - 4, "onset_apex": 58, "apex_offset": T - 61}
    for name, (lo, hi) in {"full": (3, T - 2), "onset_apex": (3, 60), "apex_offset": (60, T - 2)}.items():
        assert np.array_equal(from_file[name], in_memory[name])
        reference = to_uint8(dynamic_image(frames[lo : hi + 1]))
        assert np.abs(from_file[name].astype(int) - reference).max() <= 1, name  # float32 sums in another order
