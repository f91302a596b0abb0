"""Alignment: one similarity transform per clip, landmark-consistent crops, clean failures."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import pipeline.align.clip as align_module
import pipeline.align.dataset as align_dataset_module
import pipeline.datasets.layouts as frames_module
import pipeline.parallel as parallel_module
from pipeline.align.clip import AlignSettings, align_clip, transform_points
from pipeline.align.montage import aligned_montage
from pipeline.datasets.layouts import find_clip_folders, read_frame
from pipeline.io.aligned_cache import AlignedCacheWriter, AlignedClip, read_aligned_clip
from pipeline.io.caches import verify
from pipeline.io.hdf5 import array_sha256, frames_sha256
from stages.cli import cli
from tests.conftest import PROJECT, write_params
from tests.faces import drifting, place, portrait, write_clip, write_gray_clip


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
    args = [
        "align",
        "--dataset",
        "casme2",
        "--root",
        str(root),
        "--out",
        str(out),
        "--params",
        str(params),
        "--jobs",
        "1",
        *extra,
    ]
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


BAD = "CASME2_RAW_selected/sub03/EP05_01"


def _damage(casme_root, damage, monkeypatch):
    """Make clip sub03/EP05_01 bad in one way; returns the reason the report must give."""
    clip = casme_root / BAD
    if damage == "corrupt":
        write_clip(clip, [place(portrait(), 1.6, 0, 0)] * 2)
        (clip / "img46.jpg").write_bytes(b"not a jpeg at all")
        return "cannot decode image"
    if damage == "truncated":
        write_clip(clip, [place(portrait(), 1.6, 0, 0)] * 2)
        data = (clip / "img47.jpg").read_bytes()
        (clip / "img47.jpg").write_bytes(data[: len(data) // 3])  # cut short, as an interrupted copy leaves it
        return "truncated JPEG"
    if damage == "empty":
        clip.mkdir(parents=True)
        return "holds no image frames"
    if damage == "noface":
        write_clip(clip, [np.full((480, 640, 3), 128, np.uint8)] * 2)
        return "no face found"
    assert damage == "unreadable"
    write_clip(clip, [place(portrait(), 1.6, 0, 0)] * 2)
    if os.geteuid() == 0:  # root reads anything: simulate the permission error where the folder is listed
        real = frames_module.list_frames

        def list_frames(folder):
            if folder.name == "EP05_01":
                raise PermissionError(13, "Permission denied", str(folder))
            return real(folder)

        monkeypatch.setattr(frames_module, "list_frames", list_frames)
    else:
        clip.chmod(0)
    return "cannot read clip folder"


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty", "noface", "unreadable"])
def test_bad_clips_fail_the_stage_and_nothing_is_written(tmp_path, casme_root, project_params, monkeypatch, damage):
    reason = _damage(casme_root, damage, monkeypatch)
    out = tmp_path / "aligned.h5"
    out.write_bytes(b"previous output")  # an earlier result must survive a failed run
    try:
        result, out = _run_align(tmp_path, casme_root, project_params)
    finally:
        (casme_root / BAD).chmod(0o755)
    assert result.exit_code != 0
    assert "sub03/EP05_01" in result.output and reason in result.output, result.output
    assert "--on-error skip" in result.output
    assert out.read_bytes() == b"previous output"
    assert not (tmp_path / "aligned.h5.failures.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty", "noface", "unreadable"])
def test_bad_clips_are_skipped_and_reported(tmp_path, casme_root, project_params, monkeypatch, damage):
    reason = _damage(casme_root, damage, monkeypatch)
    try:
        result, out = _run_align(tmp_path, casme_root, project_params, "--on-error", "skip")
    finally:
        (casme_root / BAD).chmod(0o755)
    assert result.exit_code == 0, result.output
    assert "warning: 1 of 3 clips could not be aligned" in result.output
    assert "sub03/EP05_01" in result.output and reason in result.output
    with h5py.File(out) as handle:
        assert sorted(handle) == ["sub01", "sub02"]
        assert json.loads(handle.attrs["params"])["on_error"] == "skip"
    with open(tmp_path / "aligned.h5.failures.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["subject"] == "sub03" and rows[0]["clip"] == "EP05_01"
    assert reason in rows[0]["reason"] and "EP05_01" in rows[0]["file"]
    if damage in ("corrupt", "truncated"):
        assert rows[0]["file"].endswith("img46.jpg" if damage == "corrupt" else "img47.jpg")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a later clean run in either mode removes the stale report
    shutil.rmtree(casme_root / BAD)
    result, out = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "aligned.h5.failures.csv").exists()


def test_on_error_comes_from_params(tmp_path, casme_root, project_params, monkeypatch):
    _damage(casme_root, "empty", monkeypatch)
    project_params["align"]["on_error"] = "skip"
    result, _ = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code == 0 and (tmp_path / "aligned.h5.failures.csv").exists(), result.output
    project_params["align"]["on_error"] = "ignore"
    result, _out = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code != 0 and "on_error" in result.output


def test_all_clips_bad_is_an_error_even_when_skipping(tmp_path, project_params):
    root = tmp_path / "data"
    (root / "sub01" / "EP01_01").mkdir(parents=True)
    result, out = _run_align(tmp_path, root, project_params, "--on-error", "skip")
    assert result.exit_code != 0 and "none of the 1 clips" in result.output
    assert not out.exists()


def test_a_killed_run_leaves_the_previous_output(tmp_path, project_params):
    """SIGKILL after the first clip is in the temporary file: the output path keeps the old file."""
    face = portrait()
    root = tmp_path / "data"
    for i in range(8):
        write_clip(root / f"sub{i + 1:02d}" / "EP01_01", [place(face, 1.6, i, 0)] * 12)
    params = write_params(tmp_path, project_params)
    out = tmp_path / "aligned.h5"
    out.write_bytes(b"previous output")
    command = [
        sys.executable,
        "-m",
        "stages",
        "align",
        "--dataset",
        "casme2",
        "--root",
        str(root),
        "--out",
        str(out),
        "--params",
        str(params),
        "--jobs",
        "1",
    ]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            temporaries = list(tmp_path.glob(".aligned.h5.tmp-*"))
            if temporaries and temporaries[0].stat().st_size > 100_000:  # at least one clip's frames
                break
            time.sleep(0.005)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert out.read_bytes() == b"previous output"
    assert list(tmp_path.glob(".aligned.h5.tmp-*"))  # SIGKILL allows no clean-up ...
    result, out = _run_align(tmp_path, root, project_params)
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # ... the next run removes it


def test_missing_data_folder_is_named(tmp_path, project_params):
    result, out = _run_align(tmp_path, tmp_path / "nowhere", project_params)
    assert result.exit_code != 0
    assert "data folder not found" in result.output and "nowhere" in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Detection fallbacks, grayscale


def test_detection_fallbacks_are_recorded(tmp_path):
    face = portrait()
    blank = np.full((480, 640, 3), 128, np.uint8)
    settings = AlignSettings()
    later = align_clip(
        _folder(write_clip(tmp_path / "sub01" / "EP01_01", [blank, place(face, 1.6, 0, 0)], first=20)), settings
    )
    assert later.attrs["reference_frame"] == 21 and later.attrs["reference_index"] == 1
    assert later.attrs["fallback"] == "later_frame" and later.attrs["detect_upsample"] == 0
    small = align_clip(_folder(write_clip(tmp_path / "sub01" / "EP01_02", [place(face, 0.5, 0, 0)] * 2)), settings)
    assert small.attrs["fallback"] == "upsample" and small.attrs["detect_upsample"] == 1
    assert small.attrs["reference_frame"] == 46 and small.attrs["detect_score"] > 0
    assert json.loads(small.attrs["align_settings"])["upsample"] == 1
    with pytest.raises(align_module.AlignmentFailure, match="upsampling up to 0"):
        align_clip(_folder(tmp_path / "sub01" / "EP01_02"), AlignSettings(upsample=0))


def _folder(path):
    from pipeline.datasets.layouts import ClipFolder, list_frames

    return ClipFolder("casme2", path.parent.name, path.name, path, list_frames(path))


@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_clips_are_warped_on_one_channel(tmp_path, monkeypatch, channels):
    """SAMM frames (grayscale JPEG, or colour JPEG with equal channels) give the colour path's result."""
    gray = cv2.cvtColor(place(portrait(), 3.2, 0, 0, size=(1360, 725)), cv2.COLOR_BGR2GRAY)
    frames = [gray, np.roll(gray, 1, axis=1)]
    folder = tmp_path / "006" / "006_1_2"
    if channels == 1:
        write_gray_clip(folder, frames, pattern="006_{:05d}.jpg")
    else:
        write_clip(folder, [cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in frames], first=5562, pattern="006_{:05d}.jpg")
    warped_shapes = []
    real_warp = cv2.warpAffine
    monkeypatch.setattr(
        align_module.cv2, "warpAffine", lambda src, *a, **k: warped_shapes.append(src.shape) or real_warp(src, *a, **k)
    )
    clip = align_clip(_folder(folder), AlignSettings())
    monkeypatch.undo()
    assert clip.attrs["grayscale"] == 1 and clip.frames.shape == (2, 224, 224, 3)
    assert all(len(shape) == 2 for shape in warped_shapes)  # one channel warped, not three
    assert np.array_equal(clip.frames[..., 0], clip.frames[..., 2])
    for index, (_, path) in enumerate(sorted(_folder(folder).frames)):  # the colour path, for reference
        rgb = read_frame(path)
        expected = cv2.warpAffine(rgb, clip.affine, (224, 224), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(expected.astype(int) - clip.frames[index]).max() <= 1
    assert clip.attrs["detect_scale"] < 1  # a 1360-wide frame is downscaled for detection


def test_small_crops_of_large_frames_decode_at_reduced_size(tmp_path):
    """A crop scale <= 1/2 decodes JPEGs at 1/2 size (DCT scaling): faster, and no aliasing."""
    frame = place(portrait(), 6.0, 0, 0, size=(2040, 1088))
    folder = _folder(write_clip(tmp_path / "sub01" / "EP01_01", [frame, frame]))
    clip = align_clip(folder, AlignSettings())
    assert clip.attrs["decode_reduction"] == 2 and clip.attrs["source_size"] == [2040, 1088]
    assert np.hypot(*clip.affine[:, 0]) < 0.5  # the stored affine stays in full-resolution pixels
    full = cv2.warpAffine(read_frame(folder.frames[0][1]), clip.affine, (224, 224), flags=cv2.INTER_AREA)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in (full, clip.frames[0])]
    (dx, dy), _ = cv2.phaseCorrelate(*gray)
    (x0, y0), _ = cv2.phaseCorrelate(gray[0], gray[0])  # this OpenCV reports (0.5, 0.5) for no shift
    assert abs(dx - x0) < 0.15 and abs(dy - y0) < 0.15  # same geometry as warping the full-size frame
    assert np.abs(gray[0] - gray[1]).mean() < 3
    tracked = align_clip(folder, AlignSettings(redetect_every=1))  # per-frame transforms, reduced too
    assert tracked.attrs["decode_reduction"] == 2
    assert np.abs(tracked.frames.astype(int) - clip.frames).mean() < 0.5


# ---------------------------------------------------------------------------------------------
# --resume, --preview


def test_resume_reuses_clips_made_with_the_same_settings(tmp_path, casme_root, project_params):
    result, out = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code == 0, result.output
    write_clip(casme_root / BAD, [place(portrait(), 1.7, 3, 2)] * 2)
    result, out = _run_align(tmp_path, casme_root, project_params, "--resume")
    assert result.exit_code == 0, result.output
    assert "aligned 3 of 3 clips (8 frames, 2 reused from the previous output)" in result.output
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    result, fresh = _run_align(fresh_dir, casme_root, project_params)
    assert _contents(fresh) == _contents(out)  # reusing clips gives what a full run gives
    # a clip whose frames changed is aligned again
    write_clip(casme_root / BAD, [place(portrait(), 1.7, 3, 2)] * 3)
    result, out = _run_align(tmp_path, casme_root, project_params, "--resume")
    assert "2 reused" in result.output, result.output
    # other settings: nothing is reused
    project_params["align"]["size"] = 112
    result, out = _run_align(tmp_path, casme_root, project_params, "--resume")
    assert result.exit_code == 0 and "0 reused" in result.output and "matches the current settings" in result.output
    with h5py.File(out) as handle:
        assert handle["sub01/EP01_01/frames"].shape[1:] == (112, 112, 3)


def _contents(path):
    """Every dataset's checksum and every attribute (LZF-compressed bytes may differ between runs)."""
    items = {}
    with h5py.File(path) as handle:
        items["/"] = sorted((k, str(v)) for k, v in handle.attrs.items())

        def visit(name, obj):
            items[name] = sorted((k, str(v)) for k, v in obj.attrs.items())
            if isinstance(obj, h5py.Dataset):
                items[name].append(("data", array_sha256(obj[()])))

        handle.visititems(visit)
    return items


def test_resume_without_previous_output_aligns_everything(tmp_path, casme_root, project_params):
    result, _out = _run_align(tmp_path, casme_root, project_params, "--resume")
    assert result.exit_code == 0 and "no previous output" in result.output and "0 reused" in result.output


def test_preview_montage_shows_reference_frames_and_landmarks(tmp_path, casme_root, project_params):
    result, _out = _run_align(tmp_path, casme_root, project_params, "--preview", "2")
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(tmp_path / "aligned.h5.preview.png"))
    assert sheet is not None and sheet.shape[0] > 100 and sheet.shape[1] >= 2 * 160
    green = (sheet[..., 1] > 200) & (sheet[..., 0] < 80) & (sheet[..., 2] < 80)
    assert green.sum() > 2 * 68  # the landmarks are drawn
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_montage_is_a_pure_image_function():
    image = np.zeros((224, 224, 3), np.uint8)
    points = np.array([[10.0, 10.0], [np.nan, np.nan]])
    sheet = aligned_montage([image, image[..., 0]], [points, points], ["a", "b"], tile=100)
    assert sheet.shape == (118, 200, 3) and sheet.dtype == np.uint8
    assert sheet[:100, :100, 1].max() == 255  # the point at (10, 10) is drawn in green


# ---------------------------------------------------------------------------------------------
# method: resize, redetect_every


def test_resize_method_uses_the_datasets_own_crops(tmp_path, project_params):
    root = tmp_path / "Cropped"
    crops = [cv2.resize(portrait()[60:230, 140:300], (160, 170)) for _ in range(2)]
    write_clip(root / "sub01" / "EP02_01f", crops, pattern="reg_img{}.jpg")
    project_params["align"]["method"] = "resize"
    result, out = _run_align(tmp_path, root, project_params, "--preview", "1")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        group = handle["sub01/EP02_01f"]
        assert group["frames"].shape == (2, 224, 224, 3)
        assert group["frame_numbers"][()].tolist() == [46, 47]
        assert np.isnan(group["landmarks"][()]).all()
        affine = group["affine"][()]
        assert affine[0, 0] == pytest.approx(224 / 160) and affine[1, 1] == pytest.approx(224 / 170)
        assert group.attrs["method"] == "resize"
        expected = cv2.resize(
            cv2.imread(str(root / "sub01/EP02_01f/reg_img46.jpg")), (224, 224), interpolation=cv2.INTER_AREA
        )
        assert np.array_equal(group["frames"][0], expected[..., ::-1])


def test_redetection_follows_a_drifting_head(tmp_path, project_params):
    frames, shifts = drifting(portrait(), 16, (0.8, 0.5))  # 12 px right and 7.5 px down by the end
    folder = _folder(write_clip(tmp_path / "sub01" / "EP01_01", frames))
    still = align_clip(folder, AlignSettings())
    tracked = align_clip(folder, AlignSettings(redetect_every=4))
    assert tracked.attrs["redetect_frames"] == [46, 50, 54, 58, 61]
    affines = tracked.frame_affines
    assert "frame_affines" not in tracked.attrs
    assert affines.shape == (16, 2, 3) and np.allclose(affines[0], tracked.affine)

    def error(affine_of_frame):
        first = transform_points(tracked.landmarks, affine_of_frame(0))
        return max(
            np.linalg.norm(transform_points(tracked.landmarks + shifts[t], affine_of_frame(t)) - first, axis=1).mean()
            for t in range(len(frames))
        )

    assert error(lambda t: affines[t]) < 1.5
    assert error(lambda t: still.affine) > 5  # without re-detection the face drifts in the crop
    project_params["align"]["redetect_every"] = 4
    result, out = _run_align(tmp_path, tmp_path, project_params)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        assert np.allclose(handle["sub01/EP01_01/frame_affines"][()], affines)
        assert "frame_affines" not in handle["sub01/EP01_01"].attrs
        assert np.allclose(read_aligned_clip(handle, "sub01", "EP01_01").frame_affines, affines)
    assert verify(out) == []


def test_generic_layouts_use_the_folder_pattern(tmp_path, project_params):
    root = tmp_path / "mydata"
    write_clip(root / "s7" / "happy1" / "color", [place(portrait(), 1.6, 0, 0)] * 2, pattern="frame{:03d}.jpg")
    result, out = _run_align(
        tmp_path, root, project_params, "--dataset", "generic", "--folder-pattern", "s{subject}/{clip}/color"
    )
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        assert handle["7/happy1/frame_numbers"][()].tolist() == [46, 47]
    result, out = _run_align(tmp_path, root, project_params, "--folder-pattern", "s{subject}/{clip}")
    assert result.exit_code != 0 and "generic only" in result.output


# ---------------------------------------------------------------------------------------------
# --jobs: byte-identical caches, frames handed over through shared memory, nothing left behind


@pytest.fixture
def shm_root(tmp_path, monkeypatch):
    """The shared-memory root of this test only (other runs may use /dev/shm at the same time)."""
    root = tmp_path / "shm"
    root.mkdir()
    monkeypatch.setattr(parallel_module, "SHARED_MEMORY_ROOT", root)
    return root


def _count_receives(monkeypatch) -> tuple[list, list]:
    """The shared-memory files of the clips workers aligned, and the clips the stage aligned itself."""
    received, here = [], []
    real = align_dataset_module._Shipped.receive
    monkeypatch.setattr(
        align_dataset_module._Shipped, "receive", lambda self: received.append(self.frames.path) or real(self)
    )
    real_here = align_dataset_module._align_here
    monkeypatch.setattr(
        align_dataset_module, "_align_here", lambda folder, *args: here.append(folder.clip) or real_here(folder, *args)
    )
    return received, here


@pytest.mark.parametrize("dataset, folder", [("casme2", "CASME2_RAW_selected"), ("samm", "SAMM")])
def test_aligned_cache_is_byte_identical_whatever_the_jobs(
    tmp_path, tiny_demo, project_params, shm_root, monkeypatch, dataset, folder
):
    """Colour (CASME II) and grayscale (SAMM) clips; per-frame transforms (frame_affines) for SAMM."""
    if dataset == "samm":
        project_params["align"]["redetect_every"] = 4
    params = write_params(tmp_path, project_params)
    received, here = _count_receives(monkeypatch)
    outputs = []
    for run, jobs in (("a", 1), ("b", 2), ("c", 2)):
        out = tmp_path / run / "aligned.h5"
        result = CliRunner().invoke(
            cli,
            [
                "align",
                "--dataset",
                dataset,
                "--root",
                str(tiny_demo / dataset / folder),
                "--out",
                str(out),
                "--params",
                str(params),
                "--jobs",
                str(jobs),
            ],
        )
        assert result.exit_code == 0, result.output
        assert verify(out) == []
        outputs.append(out.read_bytes())
        assert list(shm_root.iterdir()) == []  # the run's shared folder is gone
    assert outputs[0] == outputs[1] == outputs[2]
    with h5py.File(tmp_path / "b" / "aligned.h5") as handle:
        n_clips = sum(len(handle[subject]) for subject in handle)
        if dataset == "samm":
            subject = min(handle)
            group = handle[subject][min(handle[subject])]
            assert group["frame_affines"].shape == (group["frames"].shape[0], 2, 3)
    # the stage's process aligned some clips itself (jobs 1: all of them); every other clip of the
    # jobs-2 runs came from the worker through shared memory, none pickled
    assert len(received) > 0
    assert len(received) + len(here) == 3 * n_clips
    assert all(Path(path).parent.parent == shm_root for path in received)


def test_no_shared_memory_file_is_left_after_failed_clips(tmp_path, casme_root, project_params, shm_root, monkeypatch):
    # a frame of another size fails the clip after its output was allocated in shared memory
    face = place(portrait(), 1.6, 0, 0)
    write_clip(casme_root / BAD, [face, face, cv2.resize(face, (320, 240))])
    stale = shm_root / "mer-shared-999999999-abcd"  # left by a killed run: its process is gone
    stale.mkdir()
    (stale / "1-x.u8").write_bytes(b"x")
    for policy in ("skip", "fail"):
        result, _out = _run_align(tmp_path, casme_root, project_params, "--jobs", "2", "--on-error", policy)
        assert "sub03/EP05_01" in result.output and "frame is about 320x240" in result.output, result.output
        assert result.exit_code == (0 if policy == "skip" else 1), result.output
        assert list(shm_root.iterdir()) == []
    # in the worker itself: the failed clip's file is deleted at once, a good clip's is handed over
    from pipeline.datasets.layouts import find_clip_folders

    folders = find_clip_folders("casme2", casme_root)
    shared = shm_root / "shared"
    shared.mkdir()
    failure = align_dataset_module._align_one(folders[("sub03", "EP05_01")], AlignSettings(), str(shared))
    assert isinstance(failure, align_dataset_module.ClipFailure) and list(shared.iterdir()) == []
    shipped = align_dataset_module._align_one(folders[("sub01", "EP01_01")], AlignSettings(), str(shared))
    assert isinstance(shipped, align_dataset_module._Shipped) and len(list(shared.iterdir())) == 1
    clip = shipped.receive()
    assert list(shared.iterdir()) == []  # unlinked once mapped
    reference = align_clip(folders[("sub01", "EP01_01")], AlignSettings())
    assert np.array_equal(clip.frames, reference.frames)
    assert clip.checksums["frames"] == array_sha256(reference.frames)

    def crash(folder, settings, allocate):
        allocate((3, 8, 8, 3))
        raise RuntimeError("worker bug")

    monkeypatch.setattr(align_dataset_module, "align_clip", crash)
    with pytest.raises(RuntimeError):
        align_dataset_module._align_one(folders[("sub01", "EP01_01")], AlignSettings(), str(shared))
    assert list(shared.iterdir()) == []


def test_shared_allocator_falls_back_to_ordinary_memory(tmp_path):
    allocator = parallel_module.SharedAllocator(tmp_path / "missing")  # as when /dev/shm is full
    array = allocator((2, 4, 4, 3))
    array[...] = 7
    assert allocator.ship(array) is None and array.sum() == 7 * 96
    allocator = parallel_module.SharedAllocator(tmp_path)
    array = allocator((2, 4, 4, 3))
    array[...] = np.arange(96, dtype=np.uint8).reshape(array.shape)
    handle = allocator.ship(array)
    assert handle is not None and allocator.ship(array) is None
    allocator.discard()  # a shipped array is no longer the allocator's to delete
    received = handle.receive()
    assert np.array_equal(received, array) and not received.flags.writeable
    assert list(tmp_path.iterdir()) == []


def test_frames_checksum_is_the_caches_checksum():
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert frames_sha256(frames) == array_sha256(frames)
    assert frames_sha256(frames[:, ::2]) == array_sha256(frames[:, ::2])  # non-contiguous views too


def test_long_clips_keep_their_per_frame_affines(tmp_path):
    """1,500 per-frame transforms: beyond the ~1,365 an HDF5 attribute (64 KB) could hold."""
    count = 1500
    rng = np.random.default_rng(1)
    affines = rng.normal(size=(count, 2, 3))
    clip = AlignedClip(
        "006",
        "006_1_2",
        rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8),
        np.arange(count, dtype=np.int64) + 5562,
        np.zeros((68, 2), np.float32),
        affines[0],
        {"method": "landmarks"},
        frame_affines=affines,
    )
    path = tmp_path / "long.h5"
    with AlignedCacheWriter(path, "samm", {"redetect_every": 1}) as writer:
        writer.add(clip)
    assert verify(path) == []
    with h5py.File(path) as handle:
        assert "frame_affines" not in handle["006/006_1_2"].attrs
        assert handle["006/006_1_2/frame_affines"].attrs["sha256"] == array_sha256(affines)
        back = read_aligned_clip(handle, "006", "006_1_2")
    assert np.array_equal(back.frame_affines, affines) and np.array_equal(back.frames, clip.frames)
    with h5py.File(path, "a") as handle:  # damage is detected like in any other dataset
        handle["006/006_1_2/frame_affines"][5, 0, 0] += 1
    assert any("frame_affines" in problem for problem in verify(path))


def test_the_pipelines_align_stage_writes_its_preview(tmp_path, casme_root, project_params):
    import yaml

    from pipeline.align.dataset import preview_path

    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["align"]["do"]
    args = stage["cmd"].split()
    count = args[args.index("--preview") + 1]
    outs = [next(iter(out)) if isinstance(out, dict) else out for out in stage["outs"]]  # {path: {push: false}}
    assert int(count) > 0 and str(preview_path("cache/aligned/${key}.h5")) in outs
    result, out = _run_align(tmp_path, casme_root, project_params, "--preview", count)
    assert result.exit_code == 0, result.output
    assert (
        preview_path(out).read_bytes()[:4] == b"\x89PNG"
        and f"preview of 2 clips -> {preview_path(out)}" in result.output
    )


def test_cache_preview_draws_frames_of_an_aligned_cache(tmp_path, casme_root, project_params):
    from pipeline.align.preview import pick_aligned_clips

    result, out = _run_align(tmp_path, casme_root, project_params)
    assert result.exit_code == 0, result.output
    png = tmp_path / "aligned.png"
    shown = CliRunner().invoke(cli, ["cache", "preview", str(out), "--out", str(png)])
    assert shown.exit_code == 0, shown.output
    assert f"preview of 2 clips -> {png}" in shown.output  # one clip per subject
    sheet = cv2.imread(str(png))
    assert sheet.shape == (2 * 178, 4 * 160, 3)  # per clip: reference with landmarks, first, middle, last
    green = (sheet[..., 1] > 200) & (sheet[..., 0] < 80) & (sheet[..., 2] < 80)
    assert green[:160, :160].sum() > 68 and green[:160, 160:].sum() == 0  # landmarks on the reference only

    chosen = CliRunner().invoke(cli, ["cache", "preview", str(out), "--out", str(png), "--clips", "sub02/EP02_03f"])
    assert chosen.exit_code == 0 and "preview of 1 clips" in chosen.output
    assert cv2.imread(str(png)).shape == (178, 4 * 160, 3)
    missing = CliRunner().invoke(cli, ["cache", "preview", str(out), "--out", str(png), "--clips", "sub09/EP01"])
    assert missing.exit_code != 0 and "holds no clip sub09/EP01" in missing.output

    keys = [(f"s{i}", f"c{j}") for i in range(30) for j in range(2)]
    picks = pick_aligned_clips(keys)
    assert len(picks) == 12 and len({s for s, _ in picks}) == 12 and ("s0", "c0") in picks and ("s29", "c0") in picks
    assert pick_aligned_clips(keys[:4], 3) == [("s0", "c0"), ("s0", "c1"), ("s1", "c0")]


@pytest.mark.parametrize("channels", [3, 1])
def test_one_warp_per_clip_matches_warp_affine(channels):
    """The clip's precomputed warp (positions once, then only interpolation per frame) places the
    face where cv2.warpAffine does: on a smooth image within one grey level, border replicated."""
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float64)
    smooth = (127 + 60 * np.sin(xs / 37.0) * np.cos(ys / 23.0)).astype(np.uint8)
    frame = np.dstack([smooth, smooth[::-1], 255 - smooth]) if channels == 3 else smooth
    angle, scale = np.deg2rad(7.0), 0.83
    affine = np.array(
        [[scale * np.cos(angle), -scale * np.sin(angle), -180.0], [scale * np.sin(angle), scale * np.cos(angle), -60.0]]
    )
    expected = cv2.warpAffine(frame, affine, (224, 224), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    got = np.empty_like(expected)
    align_module._FixedWarp(affine, 224)(frame, got)
    assert np.abs(got.astype(int) - expected).max() <= 1
