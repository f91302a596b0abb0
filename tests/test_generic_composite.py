"""The `generic` format (any lab's data: a CSV plus a folder pattern) and composite runs (`mer combine`)."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.datasets.annotate import annotate_samples
from pipeline.datasets.composite import SamplesInput, aligned_caches, combine_samples
from pipeline.datasets.layouts import DATASETS, compile_folder_pattern, find_clip_folders
from pipeline.datasets.presets import label_names_for
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import SAMPLE_COLUMNS, read_samples, write_samples
from stages.cli import cli
from tests.conftest import write_params
from tests.sheets import (
    GENERIC_HEADER,
    casme2_distribution,
    casme2_sheet,
    generic_clip,
    samm_distribution,
    samm_sheet,
    write_csv,
)

# --------------------------------------------------------------------------------------------
# A small generic dataset on disk: ROOT/s<subject>/<clip>/color/frame_0001.png ...
# --------------------------------------------------------------------------------------------


@pytest.fixture
def generic_copy(tmp_path):
    """Three subjects written as the lab names them ('01', '02', 'A3'), PNG frames with a
    zero-padded trailing number, a depth-only sibling folder and stray files to ignore."""
    root = tmp_path / "MYLAB"
    generic_clip(root, "s01/happy_1/color", 1, 30, peak=11)
    generic_clip(root, "s01/disgust_2/color", 5, 45, peak=20)
    generic_clip(root, "s02/surprise_1/color", 100, 130, peak=8)
    generic_clip(root, "sA3/fear_1/color", 1, 25, peak=10)
    generic_clip(root, "s02/surprise_1/depth", 100, 130)  # not matched by the pattern
    (root / "s01" / "happy_1" / "color" / "Thumbs.db").write_bytes(b"\0")
    (root / "s01" / "notes.txt").write_text("x")
    (root / "calibration").mkdir()  # no 's' prefix: not a subject folder
    rows = [
        ["01", "happy_1", 1, 12, 30, "Happiness"],
        ["01", "disgust_2", 5, "", 45, "disgust"],  # blank apex: imputed
        ["02", "surprise_1", 100, 108, 130, "surprise"],
        ["A3", "fear_1", 1, None, 25, "Fear"],  # blank apex: imputed
    ]
    coding = write_csv(tmp_path / "mylab.csv", [GENERIC_HEADER, *rows], encoding="utf-8")
    return root, coding, "s{subject}/{clip}/color"


def test_generic_is_a_dataset_and_its_folders_follow_the_pattern(generic_copy):
    root, _, pattern = generic_copy
    assert "generic" in DATASETS
    clips = find_clip_folders("generic", root, pattern=pattern)
    assert sorted(clips) == [("01", "disgust_2"), ("01", "happy_1"), ("02", "surprise_1"), ("A3", "fear_1")]
    folder = clips[("01", "happy_1")]
    assert folder.path == root / "s01" / "happy_1" / "color" and folder.dataset == "generic"
    assert folder.frame_numbers == list(range(1, 31)) and folder.frames[0][1].name == "frame_0001.png"
    # Default pattern {subject}/{clip}: the 'color' folders become clips of subject 's01', ...
    default = find_clip_folders("generic", root)
    assert ("s01", "happy_1") in default and ("calibration", "x") not in default
    # A doubled top folder is descended into, as for CASME II.
    doubled = root.parent / "outer"
    doubled.mkdir()
    root.rename(doubled / "MYLAB")
    assert sorted(find_clip_folders("generic", doubled, pattern)) == sorted(clips)
    # The CASME II / SAMM signature is unchanged and takes no pattern.
    with pytest.raises(MerError, match="generic format only"):
        find_clip_folders("casme2", doubled, pattern="{subject}/{clip}")


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("{clip}", "once each"),
        ("{subject}/{subject}/{clip}", "once each"),
        ("{subject}/{take}/{clip}", "unknown placeholder"),
        ("/data/{subject}/{clip}", "relative"),
        ("{subject}/../{clip}", "'..'"),
        ("", "empty"),
        ("{subject}/{clip}}", "braces"),
    ],
)
def test_bad_folder_patterns_are_explained(pattern, message):
    with pytest.raises(MerError, match=message):
        compile_folder_pattern(pattern)


def test_ambiguous_and_empty_patterns(tmp_path, generic_copy):
    root, _, _ = generic_copy
    with pytest.raises(MerError, match="matches two folders"):
        find_clip_folders("generic", root, "s{subject}/*/{clip}")  # color/ and depth/ of surprise_1
    with pytest.raises(MerError, match="no clip folders matching"):
        find_clip_folders("generic", root, "x{subject}/{clip}")
    assert len(find_clip_folders("generic", root, "s{subject}/{clip}/c*")) == 4


def test_generic_sheet_is_annotated_and_missing_apexes_imputed(generic_copy):
    root, coding, pattern = generic_copy
    result = annotate_samples("generic", coding, root, None, folder_pattern=pattern)
    samples = {(s.subject, s.clip): s for s in result.samples}
    assert list(samples) == [("01", "disgust_2"), ("01", "happy_1"), ("02", "surprise_1"), ("A3", "fear_1")]
    assert result.scheme.labels == ("disgust", "fear", "happiness", "surprise")  # every emotion its own class
    assert samples[("01", "happy_1")].apex_source == "annotated" and samples[("01", "happy_1")].apex == 12
    disgust = samples[("01", "disgust_2")]
    assert disgust.apex_source == "imputed" and abs(disgust.apex - (5 + 20)) <= 2
    fear = samples[("A3", "fear_1")]
    assert fear.apex_source == "imputed" and abs(fear.apex - (1 + 10)) <= 2
    assert {s.dataset for s in result.samples} == {"generic"} and result.header_row == 1
    megc = annotate_samples("generic", coding, root, "megc-3", folder_pattern=pattern)
    assert Counter(s.label for s in megc.samples) == {"positive": 1, "negative": 2, "surprise": 1}


def test_generic_overrides_use_the_subjects_as_written(tmp_path, generic_copy):
    root, coding, pattern = generic_copy
    fixes = write_csv(
        tmp_path / "fixes.csv",
        [["Subject", "Clip", "Apex"], ["01", "disgust_2", 24], ["1", "happy_1", 13]],
        encoding="utf-8",
    )
    with pytest.raises(InputProblems) as caught:  # '1' is not '01' in a generic sheet
        annotate_samples("generic", coding, root, None, overrides=fixes, folder_pattern=pattern)
    assert caught.value.problems == [
        "fixes.csv row 3 (subject 1, clip happy_1): no row of mylab.csv codes subject 1, clip "
        "happy_1 (the sheet has 01/happy_1); fix the subject or clip of the override"
    ]
    write_csv(fixes, [["Subject", "Clip", "Apex"], ["01", "disgust_2", 24]], encoding="utf-8")
    result = annotate_samples("generic", coding, root, None, overrides=fixes, folder_pattern=pattern)
    fixed = next(s for s in result.samples if s.clip == "disgust_2")
    assert (fixed.apex, fixed.apex_source) == (24, "override") and result.n_imputed == 1


def test_generic_through_the_cli_with_params_and_option(tmp_path, generic_copy, project_params):
    root, coding, pattern = generic_copy
    out = tmp_path / "samples" / "mylab.csv"
    base = ["annotate", "--dataset", "generic", "--root", str(root), "--coding", str(coding), "--out", str(out)]
    project_params["annotate"]["folder_pattern"] = pattern
    params = write_params(tmp_path, project_params)
    result = CliRunner().invoke(cli, [*base, "--params", str(params)])
    assert result.exit_code == 0, result.output
    rows = read_samples(out)
    assert [(r["subject"], r["clip"], r["label"]) for r in rows][0] == ("01", "disgust_2", "disgust")
    assert "classes emotions: disgust 1, fear 1, happiness 1, surprise 1" in result.output
    # Frames one level deeper than the pattern says: the message suggests the pattern.
    shallow = CliRunner().invoke(cli, [*base, "--params", str(params), "--folder-pattern", "s{subject}/{clip}"])
    assert shallow.exit_code != 0 and "e.g. s{subject}/{clip}/color" in shallow.output
    # The option wins over params; a wrong pattern is a clear error.
    wrong = CliRunner().invoke(cli, [*base, "--params", str(params), "--folder-pattern", "{subject}/{clip}"])
    assert wrong.exit_code != 0 and "no clip folder s01/happy_1/color" not in wrong.output
    assert "no clip folder 01/happy_1" in wrong.output
    # --folder-pattern is for generic only.
    casme = CliRunner().invoke(
        cli,
        [
            "annotate",
            "--dataset",
            "casme2",
            "--root",
            str(root),
            "--coding",
            str(coding),
            "--out",
            str(out),
            "--params",
            str(params),
            "--folder-pattern",
            pattern,
        ],
    )
    assert casme.exit_code != 0 and "generic only" in casme.output


def test_malformed_generic_sheet_lists_every_problem(tmp_path, generic_copy, project_params):
    root, _, pattern = generic_copy
    rows = [
        ["01", "happy_1", 1, 12, 30, "happiness"],
        ["01", "happy_1", 1, 12, 30, "happiness"],  # row 3: duplicate of row 2
        ["02", "surprise_1", "x1", 108, 130, "surprise"],  # row 4: text in a frame column
        ["A3", "fear_1", 25, None, 1, "fear"],  # row 5: onset after offset
        ["04", "anger_1", 1, 5, 9, "anger"],  # row 6: no such folder
        ["01", "disgust_2", 5, 20, 60, "disgust"],  # row 7: frames 46-60 missing
    ]
    coding = write_csv(tmp_path / "bad.csv", [GENERIC_HEADER, *rows], encoding="utf-8")
    with pytest.raises(InputProblems) as caught:
        annotate_samples("generic", coding, root, None, folder_pattern=pattern)
    problems = caught.value.problems
    assert [p.split(" (")[0] for p in problems] == ["row 3", "row 4", "row 5", "row 6", "row 7"]
    assert "repeats row 2" in problems[0] and "onset holds text 'x1'" in problems[1]
    assert "onset 25 is after offset 1" in problems[2] and "no clip folder s04/anger_1/color" in problems[3]
    assert "46-60 of onset..offset" in problems[4]
    project_params["annotate"]["folder_pattern"] = pattern
    params = write_params(tmp_path, project_params)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        cli,
        [
            "annotate",
            "--dataset",
            "generic",
            "--root",
            str(root),
            "--coding",
            str(coding),
            "--out",
            str(out),
            "--params",
            str(params),
        ],
    )
    assert result.exit_code != 0 and result.output.count("  - row ") == 5 and not out.exists()
    # No header row / a missing required column name the generic columns.
    headless = write_csv(tmp_path / "headless.csv", rows, encoding="utf-8")
    with pytest.raises(MerError, match="subject, clip, onset, apex, offset"):
        annotate_samples("generic", headless, root, None, folder_pattern=pattern)
    no_apex = write_csv(
        tmp_path / "noapex.csv", [[c for c in GENERIC_HEADER if c != "apex"], ["01", "happy_1", 1, 30, "x"]]
    )
    with pytest.raises(MerError, match="lacks the column\\(s\\) apex"):
        annotate_samples("generic", no_apex, root, None, folder_pattern=pattern)


# --------------------------------------------------------------------------------------------
# Composite runs: mer combine
# --------------------------------------------------------------------------------------------


def _samples_table(path: Path, dataset: str, sheet: Path, classes: str) -> Path:
    """A samples table made from a distribution sheet (no folders: apexes filled in)."""
    result = annotate_samples(dataset, sheet, None, classes)
    samples = [
        dataclasses.replace(s, apex=s.onset + 1, apex_source="imputed") if s.apex is None else s for s in result.samples
    ]
    write_samples(path, [s.as_row() for s in samples])
    return path


@pytest.fixture
def megc_tables(tmp_path):
    casme = casme2_sheet(tmp_path / "casme2.xlsx", casme2_distribution())
    samm = samm_sheet(tmp_path / "samm.xlsx", samm_distribution())
    return {
        "casme2": _samples_table(tmp_path / "casme2.csv", "casme2", casme, "megc-3"),
        "samm": _samples_table(tmp_path / "samm.csv", "samm", samm, "megc-3"),
        "casme2-5": _samples_table(tmp_path / "casme2-5.csv", "casme2", casme, "casme2-5"),
        "samm-5": _samples_table(tmp_path / "samm-5.csv", "samm", samm, "samm-5"),
    }


def test_megc_composite_concatenates_and_counts(tmp_path, megc_tables):
    result = combine_samples([megc_tables["casme2"], megc_tables["samm"]], "megc-3")
    assert result.datasets == ["casme2", "samm"] and result.labels == ["positive", "negative", "surprise"]
    assert dict(result.counts["casme2"]) == {"negative": 90, "positive": 32, "surprise": 25}
    assert dict(result.counts["samm"]) == {"negative": 92, "positive": 26, "surprise": 15}
    assert len(result.rows) == 147 + 133
    assert [r["dataset"] for r in result.rows] == ["casme2"] * 147 + ["samm"] * 133
    # Without --classes the label sets must simply agree.
    assert len(combine_samples([megc_tables["casme2"], megc_tables["samm"]]).rows) == 280
    # Subjects stay as written; (dataset, subject) is unique, and training folds are per dataset/subject.
    from pipeline.train.data import fold_keys

    keys = fold_keys([r["dataset"] for r in result.rows], [r["subject"] for r in result.rows])
    assert len(set(keys.tolist())) == result.subjects["casme2"] + result.subjects["samm"]
    assert {k.split("/")[0] for k in keys.tolist()} == {"casme2", "samm"}


def test_composite_problems_are_listed_together(tmp_path, megc_tables):
    with pytest.raises(InputProblems) as caught:
        combine_samples([megc_tables["casme2-5"], megc_tables["samm-5"], tmp_path / "missing.csv"])
    problems = caught.value.problems
    assert len(problems) == 2 and "missing.csv" in problems[0] and "different label sets" in problems[1]
    assert "others" in problems[1] and "other," in problems[1]
    with pytest.raises(InputProblems, match="not classes of megc-3"):
        combine_samples([megc_tables["casme2"], megc_tables["samm-5"]], "megc-3")
    with pytest.raises(InputProblems, match="dataset casme2 is in both"):
        combine_samples([megc_tables["casme2"], megc_tables["casme2"]])
    # Naming the tables tells two copies (or two generic datasets) apart.
    named = combine_samples([SamplesInput.parse(f"a={megc_tables['casme2']}"), f"b={megc_tables['casme2']}"])
    assert [d for d in named.datasets] == ["a", "b"] and len(named.rows) == 294
    with pytest.raises(MerError, match="at least two"):
        combine_samples([megc_tables["casme2"]])
    # A duplicate clip inside one table.
    rows = list(csv.reader(megc_tables["samm"].read_text().splitlines()))
    dup = tmp_path / "dup.csv"
    write_csv(dup, rows + [rows[1]], encoding="utf-8")
    with pytest.raises(InputProblems, match="line 135: samm/"):
        combine_samples([megc_tables["casme2"], dup])


def test_combine_command_writes_the_table_and_prints_counts(tmp_path, megc_tables):
    out = tmp_path / "composite" / "megc.csv"
    args = [
        "combine",
        "--samples",
        str(megc_tables["casme2"]),
        "--samples",
        str(megc_tables["samm"]),
        "--classes",
        "megc-3",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == SAMPLE_COLUMNS
    rows = read_samples(out)
    assert len(rows) == 280 and Counter(r["label"] for r in rows) == {"negative": 182, "positive": 58, "surprise": 40}
    assert "casme2    147 clips" in result.output and "samm      133 clips" in result.output
    assert "total     280 clips" in result.output and "positive 58, negative 182, surprise 40" in result.output
    assert label_names_for("megc-3", "mmew") == ["positive", "negative", "surprise"]  # any dataset name resolves
    bad = CliRunner().invoke(
        cli,
        [
            "combine",
            "--samples",
            str(megc_tables["casme2-5"]),
            "--samples",
            str(megc_tables["samm-5"]),
            "--out",
            str(tmp_path / "bad.csv"),
        ],
    )
    assert bad.exit_code != 0 and "different label sets" in bad.output and not (tmp_path / "bad.csv").exists()


# --------------------------------------------------------------------------------------------
# Alignment of a generic copy (faces): the aligned cache is keyed by the generic subjects
# --------------------------------------------------------------------------------------------


def test_generic_clip_folders_align(tmp_path):
    from pipeline.align.clip import AlignSettings, align_clip
    from tests.faces import place, portrait
    from tests.faces import write_clip as write_face_clip

    root = tmp_path / "SMIC"
    write_face_clip(
        root / "s3" / "s3_ne_01" / "color", [place(portrait(), 1.6, 0, 0)] * 3, first=1, pattern="image{:06d}.bmp"
    )
    clips = find_clip_folders("generic", root, "s{subject}/{clip}/color")
    assert list(clips) == [("3", "s3_ne_01")]
    aligned = align_clip(clips[("3", "s3_ne_01")], AlignSettings(size=112))
    assert aligned.frames.shape == (3, 112, 112, 3) and aligned.frame_numbers.tolist() == [1, 2, 3]


def test_aligned_caches_per_dataset_for_the_di_stage():
    assert aligned_caches(["a/casme2.h5"], ["casme2", "casme2"]) == {"casme2": Path("a/casme2.h5")}
    both = aligned_caches(["samm=a/samm.h5", "casme2=a/casme2.h5"], ["casme2", "samm"])
    assert both == {"casme2": Path("a/casme2.h5"), "samm": Path("a/samm.h5")}
    with pytest.raises(MerError, match="--aligned casme2=cache/aligned/casme2.h5 --aligned samm="):
        aligned_caches(["a/casme2.h5"], ["casme2", "samm"])
    with pytest.raises(InputProblems) as caught:
        aligned_caches(["casme2=a.h5", "smic=b.h5"], ["casme2", "samm"])
    assert len(caught.value.problems) == 2 and "no aligned cache for dataset samm" in caught.value.problems[0]
