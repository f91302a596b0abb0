"""Alignment: one similarity transform per clip, landmark-consistent crops, clean failures."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.align import AlignSettings, align_clip, transform_points
from pipeline.frames import find_clip_folders
from stages.cli import cli
from tests.conftest import write_params
from tests.faces import place, portrait, write_clip


@pytest.fixture
def casme_root(tmp_path):
    """Two subjects; the second's clip is shifted and scaled relative to the first's."""
    face = portrait()
    root = tmp_path / "CASME2_RAW_selected" / "CASME2_RAW_selected"  # doubled top folder, as archives unpack
    write_clip(root / "sub01" / "EP01_01", [place(face, 1.6, 0, 0)] * 3, first=9)
    write_clip(root / "sub02" / "EP02_03f", [place(face, 1.75, 7, -5)] * 3, first=98)
    (root / "sub01" / "notes.txt").write_text("not a clip")
    return tmp_path / "CASME2_RAW_selected"


def test_shifted_and_scaled_clips_align_to_the_same_landmarks(casme_root):
    settings = AlignSettings(size=224)
    clips = find_clip_folders("casme2", casme_root)
    assert sorted(clips) == [("sub01", "EP01_01"), ("sub02", "EP02_03f")]
    a, b = (align_clip(clips[key], settings) for key in sorted(clips))
    points_a = transform_points(a.landmarks, a.affine)
    points_b = transform_points(b.landmarks, b.affine)
    error = np.linalg.norm(points_a - points_b, axis=1)
    assert error.mean() < 1.5, error
    assert a.frames.shape == (3, 224, 224, 3) and a.frames.dtype == np.uint8
    # frames sorted by number, not by name (img9 < img10 < img11)
    assert a.frame_numbers.tolist() == [9, 10, 11]
    # the eyes land where the settings put them
    right, left = points_a[36:42].mean(0), points_a[42:48].mean(0)
    assert abs(right[1] - left[1]) < 0.5
    assert np.linalg.norm(left - right) == pytest.approx(0.38 * 224, abs=0.5)


def _run_align(tmp_path, root, project_params, *extra):
    params = write_params(tmp_path, project_params)
    out = tmp_path / "aligned.h5"
    args = ["align", "--dataset", "casme2", "--root", str(root), "--out", str(out), "--params", str(params), "--jobs", "1", *extra]
    return CliRunner().invoke(cli, args), out


def test_align_stage_writes_the_cache(tmp_path, casme_root, project_params):
    result, out = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        assert handle.attrs["schema"] == "mer.aligned"
        assert handle["sub02/EP02_03f/frames"].shape == (3, 224, 224, 3)
        assert handle["sub02/EP02_03f/frames"].chunks == (1, 224, 224, 3)
        assert handle["sub02/EP02_03f/landmarks"].shape == (68, 2)
        assert handle["sub02/EP02_03f/affine"].shape == (2, 3)
        assert handle["sub02/EP02_03f/frame_numbers"][()].tolist() == [98, 99, 100]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("corrupt", "cannot decode image"),
        ("empty", "holds no image frames"),
        ("noface", "no face found"),
    ],
)
def test_bad_clips_are_reported_and_nothing_is_written(tmp_path, casme_root, project_params, damage, reason):
    clip = casme_root / "CASME2_RAW_selected" / "sub03" / "EP05_01"
    if damage == "corrupt":
        write_clip(clip, [place(portrait(), 1.6, 0, 0)] * 2)
        data = (clip / "img47.jpg").read_bytes()
        (clip / "img47.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
        (clip / "img46.jpg").write_bytes(b"not a jpeg at all")
    elif damage == "empty":
        clip.mkdir(parents=True)
    else:
        write_clip(clip, [np.full((480, 640, 3), 128, np.uint8)] * 2)
    out = tmp_path / "aligned.h5"
    out.write_bytes(b"previous output")  # an earlier result must survive a failed run
    result, out = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code != 0
    assert "sub03/EP05_01" in result.output and reason in result.output
    assert out.read_bytes() == b"previous output"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_data_folder_is_named(tmp_path, project_params):
    result, out = _run_align(tmp_path, tmp_path / "nowhere", project_params)
    assert result.exit_code != 0
    assert "data folder not found" in result.output and "nowhere" in result.output
    assert not out.exists()
