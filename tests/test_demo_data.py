"""The synthetic dataset generator: real layouts, real spreadsheet quirks, visible motion, determinism."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from pipeline.align.landmarks import detect_faces
from pipeline.demo.motion import displacement_field, intensity_curve
from pipeline.demo.patterns import EMOTION_PATTERNS, MIRROR, PATTERN_NAMES, pattern
from pipeline.demo.plan import build_plan
from pipeline.demo.presets import PRESETS
from stages.cli import cli
from tests.conftest import write_params


def _generate(folder: Path, *extra: str, seed: int = 7, preset: str = "demo") -> tuple[Path, str]:
    """Run `mer demo-data` into folder/out with a params file whose demo section says `preset`."""
    folder.mkdir(parents=True, exist_ok=True)
    params = write_params(folder, {"demo": {"preset": preset, "format": "both", "seed": seed}})
    out = folder / "out"
    result = CliRunner().invoke(cli, ["demo-data", "--out", str(out), "--params", str(params), *extra])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out, output = _generate(tmp_path_factory.mktemp("tiny"), "--preset", "tiny")
    assert "casme2: 16 clips" in output and "samm: 15 clips" in output
    return out


def _ground_truth(root: Path, dataset: str) -> list[dict]:
    with open(root / dataset / "ground_truth.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _clip_frames(root: Path, dataset: str, row: dict) -> dict[int, Path]:
    """Frame number -> file of one ground-truth clip, parsed from the file names."""
    if dataset == "casme2":
        folder = root / "casme2" / "CASME2_RAW_selected" / row["subject"] / row["clip"]
        pattern = re.compile(r"^img([1-9]\d*)\.jpg$")
    else:
        folder = root / "samm" / "SAMM" / row["subject"] / row["clip"]
        pattern = re.compile(rf"^{row['subject']}_(\d{{5}})\.jpg$")
    frames = {}
    for path in folder.iterdir():
        match = pattern.match(path.name)
        assert match, f"unexpected file {path}"
        frames[int(match.group(1))] = path
    return frames


# ----------------------------------------------------------------------------------------------
# layout


def test_casme2_layout(tiny):
    root = tiny / "casme2" / "CASME2_RAW_selected"
    assert sorted(p.name for p in root.iterdir()) == ["sub01", "sub02", "sub03"]
    rows = _ground_truth(tiny, "casme2")
    assert len(rows) == 16
    assert len({(r["subject"], r["clip"]) for r in rows}) == 16
    on_disk = {(p.parent.name, p.name) for p in root.glob("*/*") if p.is_dir()}
    assert on_disk == {(r["subject"], r["clip"]) for r in rows}
    for row in rows:
        assert re.fullmatch(r"EP\d\d_\d\df?", row["clip"]), row["clip"]
        onset, apex, offset = int(row["onset"]), int(row["apex"]), int(row["offset"])
        assert onset < apex < offset
        frames = _clip_frames(tiny, "casme2", row)
        assert sorted(frames) == list(range(onset, offset + 1))  # only onset..offset, absolute numbers
        assert 10 <= len(frames) <= 16
        image = cv2.imread(str(frames[onset]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (480, 640, 3)
        assert np.abs(image[..., 0].astype(int) - image[..., 2]).mean() > 1  # really colour
    assert {int(r["onset"]) for r in rows} != {1}  # clips start at arbitrary frame numbers
    assert any(r["clip"].endswith("f") for r in rows)


def test_samm_layout(tiny):
    root = tiny / "samm" / "SAMM"
    subjects = sorted(p.name for p in root.iterdir())
    assert subjects == ["006", "007", "009"]
    rows = _ground_truth(tiny, "samm")
    assert len(rows) == 15
    on_disk = {(p.parent.name, p.name) for p in root.glob("*/*") if p.is_dir()}
    assert on_disk == {(r["subject"], r["clip"]) for r in rows}
    for row in rows:
        assert re.fullmatch(rf"{row['subject']}_\d_\d+", row["clip"]), row["clip"]
        onset, offset = int(row["onset"]), int(row["offset"])
        frames = _clip_frames(tiny, "samm", row)  # names checked: SSS_NNNNN.jpg, five digits
        assert sorted(frames) == list(range(onset, offset + 1))
        image = cv2.imread(str(frames[onset]), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 2 and image.shape == (363, 680)  # single-channel grayscale JPEG


# ----------------------------------------------------------------------------------------------
# spreadsheets


def test_casme2_coding_sheet(tiny):
    sheet = load_workbook(tiny / "casme2" / "CASME2-coding-20140508.xlsx").active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == (
        "Subject",
        "Filename",
        None,
        "OnsetFrame",
        "ApexFrame",
        "OffsetFrame",
        None,
        "Action Units",
        "Estimated Emotion",
    )
    data = rows[1:]
    truth = {(r["subject"], r["clip"]): r for r in _ground_truth(tiny, "casme2")}
    assert len(data) == len(truth) == 16
    assert all(type(row[0]) is int for row in data)  # subject 1 for folder sub01
    keys = [(f"sub{row[0]:02d}", row[1]) for row in data]
    assert set(keys) == set(truth)
    assert keys != sorted(keys)  # not in folder order: readers must match by (subject, clip)
    apexes = [row[4] for row in data]
    assert "/" in apexes and sum(a == "/" for a in apexes) <= 3
    units = [row[7] for row in data]
    assert any(type(u) is int for u in units) and any(isinstance(u, str) for u in units)
    emotions = {row[8] for row in data}
    assert emotions == {"happiness", "disgust", "repression", "surprise", "others", "fear"}
    for row, key in zip(data, keys):
        expected = truth[key]
        assert (row[3], row[5]) == (int(expected["onset"]), int(expected["offset"]))
        assert row[4] == "/" or row[4] == int(expected["apex"])
        assert row[8] == expected["emotion"]


def test_samm_coding_sheet(tiny):
    sheet = load_workbook(tiny / "samm" / "SAMM_Micro_FACS_Codes_v2.xlsx").active
    rows = list(sheet.iter_rows(values_only=True))
    preamble, header, data = rows[:13], rows[13], rows[14:]
    assert isinstance(preamble[0][0], str) and preamble[0][0]
    assert any(all(cell is None for cell in row) for row in preamble)  # some preamble rows are blank
    assert header[:12] == (
        "Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
        "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes",
    )  # fmt: skip
    truth = {(r["subject"], r["clip"]): r for r in _ground_truth(tiny, "samm")}
    assert len(data) == 15
    subjects = [row[0] for row in data]
    assert any(type(s) is int for s in subjects) and any(isinstance(s, str) for s in subjects)
    assert all(s in (6, 7, 9) for s in subjects if type(s) is int)
    assert all(re.fullmatch(r"\d{3}", s) for s in subjects if isinstance(s, str))
    assert -1 in [row[4] for row in data]
    assert {row[9] for row in data} == {"Anger", "Contempt", "Happiness", "Surprise", "Other"}
    for row in data:
        expected = truth[(f"{int(row[0]):03d}", row[1])]
        onset, offset = int(expected["onset"]), int(expected["offset"])
        assert (row[3], row[5], row[6]) == (onset, offset, offset - onset + 1)
        assert row[4] in (-1, int(expected["apex"]))
        assert row[9].lower() == expected["emotion"]


def test_ground_truth_keeps_the_true_apex(tiny):
    for dataset in ("casme2", "samm"):
        rows = _ground_truth(tiny, dataset)
        assert list(rows[0]) == ["subject", "clip", "onset", "apex", "offset", "emotion", "pattern"]
        for row in rows:
            assert int(row["onset"]) <= int(row["apex"]) <= int(row["offset"])
            assert row["pattern"] in PATTERN_NAMES
    # the apex position within the clip varies
    positions = {
        (int(r["apex"]) - int(r["onset"])) / (int(r["offset"]) - int(r["onset"])) for r in _ground_truth(tiny, "casme2")
    }
    assert max(positions) - min(positions) > 0.15


# ----------------------------------------------------------------------------------------------
# pixels


def test_dlib_finds_the_face_in_every_first_frame(tiny):
    for dataset in ("casme2", "samm"):
        for row in _ground_truth(tiny, dataset):
            frames = _clip_frames(tiny, dataset, row)
            image = cv2.imread(str(frames[int(row["onset"])]), cv2.IMREAD_COLOR)
            assert detect_faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), 0), (
                f"no face in {dataset} {row['subject']}/{row['clip']}"
            )


def test_the_apex_frame_shows_motion(tiny):
    """Within the face, the apex differs from the onset more than the onset from its neighbour."""
    for dataset in ("casme2", "samm"):
        for row in _ground_truth(tiny, dataset):
            frames = _clip_frames(tiny, dataset, row)
            onset, apex = int(row["onset"]), int(row["apex"])
            read = {n: cv2.imread(str(frames[n]), cv2.IMREAD_GRAYSCALE) for n in (onset, onset + 1, apex)}
            box = detect_faces(read[onset], 0)[0][1]
            face = (slice(max(0, box.top()), box.bottom()), slice(max(0, box.left()), box.right()))
            smooth = {n: cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.5)[face] for n, image in read.items()}
            motion = np.abs(smooth[apex] - smooth[onset])
            neighbour = np.abs(smooth[onset + 1] - smooth[onset])
            where = f"{dataset} {row['subject']}/{row['clip']}"
            assert motion.mean() > neighbour.mean(), where
            assert np.percentile(motion, 99) > 1.5 * np.percentile(neighbour, 99), where


# ----------------------------------------------------------------------------------------------
# determinism and settings


def test_same_seed_same_bytes_other_seed_other_bytes(tiny, tmp_path):
    again, _ = _generate(tmp_path / "again", "--preset", "tiny", "--jobs", "2")
    first, second = _hashes(tiny), _hashes(again)
    assert first == second  # also whatever the number of jobs
    other, _ = _generate(tmp_path / "other", "--preset", "tiny", "--format", "casme2", "--seed", "8")
    third = _hashes(other)
    assert not any(path.startswith("samm") for path in third)
    shared = set(first) & set(third)
    assert all(first[path] != third[path] for path in shared)


def test_settings_come_from_params(tmp_path):
    params = write_params(tmp_path, {"demo": {"preset": "tiny", "format": "samm", "seed": 3}})
    plan = build_plan("samm", "tiny", 3, check_faces=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["demo-data", "--out", str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["samm"]
    assert [r["clip"] for r in _ground_truth(out, "samm")] == [c.clip for c in plan.clips]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]  # no leftovers


def test_bad_preset_is_a_clean_error(tmp_path):
    params = write_params(tmp_path, {"demo": {"preset": "huge", "format": "both", "seed": 1}})
    result = CliRunner().invoke(cli, ["demo-data", "--out", str(tmp_path / "out"), "--params", str(params)])
    assert result.exit_code != 0
    assert "demo.preset = 'huge': allowed: 'tiny', 'demo' or 'casme2-scale'" in result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# pure synthesis pieces


def test_intensity_curve_rises_to_the_apex_and_decays():
    curve = intensity_curve(20, 6, residual=0.1)
    assert curve[0] == 0 and curve[6] == pytest.approx(1) and curve[-1] == pytest.approx(0.1)
    assert np.all(np.diff(curve[:7]) > 0) and np.all(np.diff(curve[6:]) < 0)


def test_patterns_are_distinct_and_normalised():
    assert sorted(MIRROR[MIRROR]) == list(range(68))  # mirroring twice is the identity
    assert np.array_equal(MIRROR[MIRROR], np.arange(68))
    vectors = []
    for name in PATTERN_NAMES:
        moves = pattern(name)
        assert np.linalg.norm(moves, axis=1).max() == pytest.approx(1)
        vectors.append(moves.ravel() / np.linalg.norm(moves))
    similarity = np.array(vectors) @ np.array(vectors).T
    assert (similarity - np.eye(len(vectors))).max() < 0.8
    for dataset, patterns in EMOTION_PATTERNS.items():
        five = list(patterns.values())[:5]
        assert len(set(five)) == 5, dataset  # the five main classes never share a pattern


def test_displacement_field_peaks_near_the_moved_landmark():
    landmarks = np.array([[100.0, 100.0], [160.0, 100.0]], dtype=np.float32)
    moves = np.array([[0.0, -3.0], [0.0, 0.0]], dtype=np.float32)
    (x0, y0, x1, y1), field = displacement_field(landmarks, moves, 12.0, (640, 480))
    assert field.shape == (y1 - y0, x1 - x0, 2)
    assert field[100 - y0, 100 - x0, 1] == pytest.approx(-3.0, abs=0.3)
    assert abs(field[100 - y0, 160 - x0, 1]) < 0.1
    assert abs(field[0, 0]).max() < 0.05  # fades out towards the region's edge


def test_presets_have_the_documented_sizes():
    scale = PRESETS["casme2-scale"]["casme2"]
    assert scale.clips == 255 and scale.subjects == 26
    assert dict(scale.counts) == {
        "others": 99,
        "disgust": 63,
        "happiness": 32,
        "repression": 27,
        "surprise": 25,
        "sadness": 7,
        "fear": 2,
    }
    assert PRESETS["casme2-scale"]["samm"].clips == 159
    assert PRESETS["demo"]["casme2"].clips == 102
