"""Ambiguous or broken data is refused, naming the culprits, and nothing is written (DESIGN §9).

Two subject folders for one subject, two files for one frame number, a clip mixing grayscale and
colour frames, dangling and looping frame links: align and annotate stop with a message naming
the paths concerned instead of silently dropping or replacing data.
"""

from __future__ import annotations

import os

import cv2
import pytest
from click.testing import CliRunner

from stages.cli import cli
from tests.conftest import write_params
from tests.faces import place, portrait, write_clip
from tests.sheets import casme2_clip, casme2_row, casme2_sheet


def _align(tmp_path, root, project_params):
    out = tmp_path / "out" / "aligned.h5"
    params = write_params(tmp_path, project_params)
    args = ["align", "--dataset", "casme2", "--root", root, "--out", out, "--params", params, "--jobs", "1"]
    return CliRunner().invoke(cli, [str(a) for a in args]), out


def _annotate(tmp_path, root, project_params):
    out = tmp_path / "out" / "casme2.csv"
    sheet = casme2_sheet(tmp_path / "coding.xlsx", [casme2_row(1, "EP01_01", 46, 50, 54, "happiness")])
    params = write_params(tmp_path, project_params)
    args = ["annotate", "--dataset", "casme2", "--root", root, "--coding", sheet, "--out", out, "--params", params]
    return CliRunner().invoke(cli, [str(a) for a in args]), out


def _refused(result, out, *culprits):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    for culprit in culprits:
        assert str(culprit) in result.output, (culprit, result.output)
    assert not out.parent.exists() or not any(out.parent.iterdir()), "something was written"


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    casme2_clip(root, "sub01", "EP01_01", 46, 54)
    return root


@pytest.mark.parametrize("stage", [_align, _annotate])
def test_two_subject_folders_for_one_subject(tmp_path, root, project_params, stage):
    casme2_clip(root, "sub1", "EP02_01", 46, 54)  # sub1 and sub01 are both subject sub01
    result, out = stage(tmp_path, root, project_params)
    _refused(result, out, root / "sub01", root / "sub1")


@pytest.mark.parametrize("stage", [_align, _annotate])
def test_two_files_with_one_frame_number(tmp_path, root, project_params, stage):
    clip = root / "sub01" / "EP01_01"
    (clip / "img045.jpg").write_bytes((clip / "img47.jpg").read_bytes())
    (clip / "img45.jpg").write_bytes((clip / "img48.jpg").read_bytes())
    result, out = stage(tmp_path, root, project_params)
    _refused(result, out, clip / "img45.jpg", clip / "img045.jpg")


@pytest.mark.parametrize("stage", [_align, _annotate])
@pytest.mark.parametrize("link", ["dangling", "looping"])
def test_broken_frame_links(tmp_path, root, project_params, stage, link):
    path = root / "sub01" / "EP01_01" / "img55.jpg"
    os.symlink(tmp_path / "gone.jpg" if link == "dangling" else path, path)
    result, out = stage(tmp_path, root, project_params)
    _refused(result, out, path)
    assert ("loop" if link == "looping" else "dangling") in result.output


@pytest.mark.parametrize("first", ["grayscale", "colour"])
def test_mixed_grayscale_and_colour_frames_in_one_clip(tmp_path, project_params, first):
    root = tmp_path / "data"
    frames = [place(portrait(), 1.6, 0, 0)] * 4
    clip = write_clip(root / "sub01" / "EP01_01", frames, first=46)
    odd = clip / ("img46.jpg" if first == "grayscale" else "img48.jpg")
    cv2.imwrite(str(odd), cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY))  # a single-channel JPEG
    result, out = _align(tmp_path, root, project_params)
    colour = clip / "img47.jpg" if first == "grayscale" else clip / "img46.jpg"
    _refused(result, out, "sub01/EP01_01", odd, colour)
    assert "grayscale" in result.output and "colour" in result.output


def test_a_gray_looking_first_frame_keeps_a_colour_clip_colour(tmp_path):
    """A blank (R = G = B) colour first frame no longer turns the whole clip grayscale."""
    import numpy as np

    from pipeline.align.clip import AlignSettings, align_clip
    from pipeline.datasets.layouts import find_clip_folders

    blank = np.full((480, 640, 3), 128, np.uint8)
    tinted = place(portrait(), 1.6, 0, 0)
    tinted[..., 2] = np.minimum(tinted[..., 2].astype(int) + 40, 255)  # clearly not gray
    write_clip(tmp_path / "sub01" / "EP01_01", [blank, tinted, tinted], first=20)
    clip = align_clip(find_clip_folders("casme2", tmp_path)[("sub01", "EP01_01")], AlignSettings())
    assert clip.attrs["grayscale"] == 0
    frames = clip.frames[1].astype(int)
    assert np.abs(frames[..., 0] - frames[..., 2]).mean() > 10  # the colour survived
