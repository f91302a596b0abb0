"""`mer annotate`: coding sheets in the real CASME II / SAMM formats -> the samples table."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.datasets.annotate import annotate_samples, impute_apex
from pipeline.datasets.coding import read_coding
from pipeline.datasets.layouts import find_clip_folders
from pipeline.datasets.presets import class_scheme, label_names_for
from pipeline.datasets.sheets import normalize_action_units
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import SAMPLE_COLUMNS, read_samples
from pipeline.motion import estimate_apex
from stages.cli import cli
from tests.conftest import write_params
from tests.sheets import (
    CASME2_HEADER,
    SAMM_HEADER,
    blob_frames,
    casme2_clip,
    casme2_distribution,
    casme2_row,
    casme2_sheet,
    samm_clip,
    samm_distribution,
    samm_row,
    samm_sheet,
    write_csv,
    write_overrides,
    write_xlsx,
)

# --------------------------------------------------------------------------------------------
# Fixtures: a small CASME II copy and a small SAMM copy with their coding sheets
# --------------------------------------------------------------------------------------------


@pytest.fixture
def casme2_copy(tmp_path):
    """CASME II layout with a doubled top folder, stray files and img9/img10/img100 numbering."""
    root = tmp_path / "CASME2_RAW_selected"
    base = root / "CASME2_RAW_selected"  # archives often unpack with the top folder doubled
    casme2_clip(base, "sub01", "EP02_01f", 46, 80)
    casme2_clip(base, "sub01", "EP03_02", 9, 100, peak=30)  # img9, img10 ... img100: numeric order matters
    casme2_clip(base, "sub02", "EP01_11f", 120, 150, peak=25)
    casme2_clip(base, "sub02", "EP09_10", 5, 40)  # sadness: dropped by casme2-5
    (base / "sub01" / "Thumbs.db").write_bytes(b"\0junk")
    (base / "sub02" / "notes.txt").write_text("coded by two coders")
    (base / "sub01" / "EP02_01f" / "desktop.ini").write_text("[x]")
    rows = [
        casme2_row(1, "EP02_01f", 46, 59, 80, "happiness", 12),
        casme2_row(1, "EP03_02", 9, "/", 100, "Disgust ", "4+7+L10"),
        casme2_row(2, "EP01_11f", 120, 131, 150, "others", "R12 + R15"),
        casme2_row(2, "EP09_10", 5, 20, 40, "sadness", "R14A"),
    ]
    return root, rows


@pytest.fixture
def samm_copy(tmp_path):
    root = tmp_path / "SAMM"
    samm_clip(root, "006", "006_1_2", 5562, 5600)
    samm_clip(root, "006", "006_1_6", 900, 960, peak=12)
    samm_clip(root, "011", "011_2_3", 100, 140)
    (root / "006" / "readme.txt").write_text("x")
    rows = [
        samm_row("006", "006_1_2", 5562, 5580, 5600, "Anger", "4+7"),
        samm_row(6, "006_1_6", 900, -1, 960, "Other", "R12 + R15"),
        samm_row(11.0, "011_2_3", 100, 120, 140, "Contempt", "R14A"),
    ]
    return root, rows


def _by_clip(samples):
    return {(s.subject, s.clip): s for s in samples}


# --------------------------------------------------------------------------------------------
# Reading the real formats
# --------------------------------------------------------------------------------------------


def test_casme2_xlsx_is_normalized_validated_and_apex_imputed(tmp_path, casme2_copy):
    root, rows = casme2_copy
    sheet = casme2_sheet(tmp_path / "CASME2-coding-20140508.xlsx", rows)
    result = annotate_samples("casme2", sheet, root, "casme2-5")
    samples = _by_clip(result.samples)
    assert list(samples) == [("sub01", "EP02_01f"), ("sub01", "EP03_02"), ("sub02", "EP01_11f")]  # sorted
    first = samples[("sub01", "EP02_01f")]
    assert (first.onset, first.apex, first.offset, first.n_frames) == (46, 59, 80, 35)
    assert (first.apex_source, first.emotion, first.label, first.action_units, first.source_row) == (
        "annotated",
        "happiness",
        "happiness",
        "12",
        2,
    )
    imputed = samples[("sub01", "EP03_02")]
    assert imputed.apex_source == "imputed" and imputed.emotion == "disgust" and imputed.action_units == "4+7+L10"
    assert abs(imputed.apex - (9 + 30)) <= 2  # the blob peaks at the 31st frame, img39; midpoint would be 54
    assert samples[("sub02", "EP01_11f")].action_units == "R12+R15"
    assert result.n_rows == 4 and [d.reason for d in result.dropped] == ["not in class preset"]
    assert result.dropped[0].source_row == 5 and result.dropped[0].emotion == "sadness"


def test_casme2_csv_exports_read_like_the_workbook(tmp_path, casme2_copy):
    root, rows = casme2_copy
    xlsx = annotate_samples("casme2", casme2_sheet(tmp_path / "coding.xlsx", rows), root, "casme2-5")
    for delimiter, encoding in ((",", "utf-8-sig"), (";", "cp1252"), ("\t", "utf-8")):
        path = write_csv(tmp_path / f"coding{ord(delimiter)}.csv", [CASME2_HEADER, *rows], delimiter, encoding)
        exported = annotate_samples("casme2", path, root, "casme2-5")
        assert exported.samples == xlsx.samples


def test_samm_xlsx_with_preamble_and_mixed_subject_cells(tmp_path, samm_copy):
    root, rows = samm_copy
    sheet = samm_sheet(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx", rows)
    coding = read_coding(sheet, "samm")
    assert coding.header_row == 14 and [r.source_row for r in coding.rows] == [15, 16, 17]
    result = annotate_samples("samm", sheet, root, "samm-5")
    samples = _by_clip(result.samples)
    assert list(samples) == [("006", "006_1_2"), ("006", "006_1_6"), ("011", "011_2_3")]
    assert samples[("006", "006_1_2")].apex_source == "annotated"
    other = samples[("006", "006_1_6")]
    assert other.apex_source == "imputed" and abs(other.apex - 912) <= 2  # -1 in the sheet
    assert (other.emotion, other.label, other.action_units) == ("other", "other", "R12+R15")
    assert samples[("011", "011_2_3")].label == "contempt"
    assert not result.dropped


def test_header_found_by_content_and_names_matched_loosely(tmp_path, casme2_copy):
    root, rows = casme2_copy
    header = [
        "subject",
        "File_Name",
        "Extra",
        "onset_frame",
        "APEX FRAME",
        "Offset Frame",
        "Coder",
        "action units",
        "estimated_emotion",
    ]
    preamble = [["CASME II coding, updated version"], [], ["see the readme"]]
    path = write_xlsx(tmp_path / "CASME2-coding-updated.xlsx", [*preamble, header, *rows])
    result = annotate_samples("casme2", path, root, "casme2-5")
    assert len(result.samples) == 3
    assert result.header_row == 4 and {s.source_row for s in result.samples} == {5, 6, 7}


# --------------------------------------------------------------------------------------------
# Class presets
# --------------------------------------------------------------------------------------------


def test_casme2_class_counts_per_preset(tmp_path):
    sheet = casme2_sheet(tmp_path / "c.xlsx", casme2_distribution())
    five = annotate_samples("casme2", sheet, None, "casme2-5")
    assert five.n_rows == 255 and len(five.samples) == 246
    assert Counter(s.label for s in five.samples) == {
        "others": 99,
        "disgust": 63,
        "happiness": 32,
        "repression": 27,
        "surprise": 25,
    }
    assert Counter(d.emotion for d in five.dropped) == {"sadness": 7, "fear": 2}
    megc = annotate_samples("casme2", sheet, None, "megc-3")
    assert len(megc.samples) == 147
    assert Counter(s.label for s in megc.samples) == {"negative": 90, "positive": 32, "surprise": 25}


def test_samm_class_counts_per_preset(tmp_path):
    sheet = samm_sheet(tmp_path / "s.xlsx", samm_distribution())
    five = annotate_samples("samm", sheet, None, "samm-5")
    assert five.n_rows == 159 and len(five.samples) == 136
    assert len({s.subject for s in five.samples}) == 27
    assert Counter(s.label for s in five.samples) == {
        "anger": 57,
        "other": 26,
        "happiness": 26,
        "surprise": 15,
        "contempt": 12,
    }
    megc = annotate_samples("samm", sheet, None, "megc-3")
    assert len(megc.samples) == 133
    assert Counter(s.label for s in megc.samples) == {"negative": 92, "positive": 26, "surprise": 15}


def test_label_order_and_user_mappings():
    assert label_names_for("casme2-5") == ["happiness", "disgust", "repression", "surprise", "others"]
    assert label_names_for("samm-5") == ["anger", "contempt", "happiness", "surprise", "other"]
    assert label_names_for("megc-3") == ["positive", "negative", "surprise"]
    assert class_scheme("megc-3", "casme2").label_of("fear") is None
    assert class_scheme("megc-3", "samm").label_of("Fear") == "negative"
    assert class_scheme("casme2-5", "samm").label_of("Other") == "others"  # other == others
    mapping = {"happiness": "pos", "Disgust": "neg", "fear": "neg", "surprise": "surp", "others": None}
    scheme = class_scheme(mapping, "casme2")
    assert scheme.labels == ("pos", "neg", "surp") and scheme.label_of("others") is None
    grouped = class_scheme({"neg": ["disgust", "repression"], "pos": ["happiness"]}, "casme2")
    assert grouped.labels == ("neg", "pos") and grouped.label_of("repression") == "neg"
    assert label_names_for("happiness=pos, disgust=neg,repression=neg") == ["pos", "neg"]
    with pytest.raises(MerError, match="unknown class preset"):
        class_scheme("casme2-7", "casme2")
    with pytest.raises(MerError, match="two classes"):
        class_scheme({"happiness": "a", "Happiness": "b"}, "casme2")


def test_inline_class_mapping_through_the_cli(tmp_path, casme2_copy, project_params):
    root, rows = casme2_copy
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    params = write_params(tmp_path, project_params)
    out = tmp_path / "samples.csv"
    args = [
        "annotate",
        "--dataset",
        "casme2",
        "--root",
        str(root),
        "--coding",
        str(sheet),
        "--out",
        str(out),
        "--classes",
        "happiness=positive,disgust=negative,sadness=negative",
        "--params",
        str(params),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    labels = {(r["clip"], r["label"]) for r in read_samples(out)}
    assert labels == {("EP02_01f", "positive"), ("EP03_02", "negative"), ("EP09_10", "negative")}


def test_a_class_mapping_naming_an_emotion_the_sheet_never_codes_is_refused(tmp_path, casme2_copy, project_params):
    """A misspelled emotion in a mapping used to drop its clips without a word."""
    root, rows = casme2_copy
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    result, out = _run(
        tmp_path, project_params, "casme2", root, sheet, "--classes", "happyness=positive,disgust=negative"
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "'happyness' (did you mean 'happiness'?)" in result.output and "no row of" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# The stage: output table, atomic writes, malformed input
# --------------------------------------------------------------------------------------------


def _run(tmp_path, project_params, dataset, root, sheet, *extra):
    params = write_params(tmp_path, project_params)
    out = tmp_path / "cache" / "samples" / f"{dataset}.csv"
    args = [
        "annotate",
        "--dataset",
        dataset,
        "--root",
        str(root),
        "--coding",
        str(sheet),
        "--out",
        str(out),
        "--params",
        str(params),
        *extra,
    ]
    return CliRunner().invoke(cli, args), out


def test_cli_writes_the_samples_table(tmp_path, casme2_copy, project_params):
    root, rows = casme2_copy
    result, out = _run(
        tmp_path, project_params, "casme2", root, casme2_sheet(tmp_path / "c.xlsx", rows), "--classes", "casme2-5"
    )
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == SAMPLE_COLUMNS
    samples = read_samples(out)
    assert [(r["subject"], r["clip"]) for r in samples] == [
        ("sub01", "EP02_01f"),
        ("sub01", "EP03_02"),
        ("sub02", "EP01_11f"),
    ]
    assert samples[0] == {
        "dataset": "casme2",
        "subject": "sub01",
        "clip": "EP02_01f",
        "onset": 46,
        "apex": 59,
        "offset": 80,
        "apex_source": "annotated",
        "n_frames": 35,
        "emotion": "happiness",
        "label": "happiness",
        "action_units": "12",
        "source_row": 2,
    }
    assert samples[1]["apex_source"] == "imputed" and isinstance(samples[1]["apex"], int)
    assert (
        "read 4 rows" in result.output and "happiness 1, disgust 1, repression 0, surprise 0, others 1" in result.output
    )
    assert "not in class preset 1" in result.output and "apex imputed for 1 clips" in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["casme2.csv", "casme2.dropped.csv", "casme2.warnings.csv"]
    # Same inputs, same bytes.
    first = out.read_bytes()
    again, _ = _run(
        tmp_path, project_params, "casme2", root, casme2_sheet(tmp_path / "c.xlsx", rows), "--classes", "casme2-5"
    )
    assert again.exit_code == 0 and out.read_bytes() == first


@pytest.fixture
def broken_casme2(tmp_path, casme2_copy):
    """Every kind of row problem once, each on a known spreadsheet row."""
    root, rows = casme2_copy
    base = root / "CASME2_RAW_selected"
    casme2_clip(base, "sub03", "EP01_01", 10, 30)
    casme2_clip(base, "sub03", "EP05_02", 10, 30)
    gap = base / "sub03" / "EP05_02"
    for n in (15, 16, 17):
        (gap / f"img{n}.jpg").unlink()
    bad = rows + [
        casme2_row(3, "EP01_01", "ten", 20, 30, "happiness"),  # row 6: text in a frame column
        casme2_row(3, "EP01_02", 30, 20, 10, "happiness"),  # row 7: onset after offset
        casme2_row(1, "EP02_01f", 46, 59, 80, "happiness", 12),  # row 8: duplicate of row 2
        casme2_row(4, "EP07_07", 1, 5, 9, "surprise"),  # row 9: no such folder
        casme2_row(3, "EP05_02", 10, 20, 30, "repression"),  # row 10: frames 15-17 missing
    ]
    return root, bad


def test_malformed_rows_fail_with_every_problem_listed(tmp_path, broken_casme2):
    root, rows = broken_casme2
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme2", sheet, root, "casme2-5")
    problems = caught.value.problems
    text = str(caught.value)
    assert "nothing was written" in text and "on_problem: drop" in text
    assert any(
        p.startswith("row 6 (subject sub03, clip EP01_01)") and "OnsetFrame holds text 'ten'" in p for p in problems
    )
    assert any(
        p.startswith("row 7 (subject sub03, clip EP01_02)") and "OnsetFrame 30 is after OffsetFrame 10" in p
        for p in problems
    )
    assert any(p.startswith("row 8 (subject sub01, clip EP02_01f)") and "repeats row 2" in p for p in problems)
    assert any(p.startswith("row 9 (subject sub04, clip EP07_07)") and "no clip folder" in p for p in problems)
    assert any(p.startswith("row 10 (subject sub03, clip EP05_02)") and "15-17" in p for p in problems)
    assert len(problems) == 5


def test_cli_fails_and_writes_nothing_on_malformed_rows(tmp_path, broken_casme2, project_params):
    root, rows = broken_casme2
    result, out = _run(tmp_path, project_params, "casme2", root, casme2_sheet(tmp_path / "c.xlsx", rows))
    assert result.exit_code != 0
    for row in ("row 6", "row 7", "row 8", "row 9", "row 10"):
        assert row in result.output
    # One message: a summary line, then every problem under it.
    assert result.output.count("Error:") == 1 and "(5 problems):" in result.output
    assert not out.exists() and not out.with_name("casme2.dropped.csv").exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary files left behind


def test_drop_policy_writes_the_valid_rows_and_reports_the_rest(tmp_path, broken_casme2, project_params):
    root, rows = broken_casme2
    result, out = _run(
        tmp_path, project_params, "casme2", root, casme2_sheet(tmp_path / "c.xlsx", rows), "--on-problem", "drop"
    )
    assert result.exit_code == 0, result.output
    assert [(r["subject"], r["clip"]) for r in read_samples(out)] == [
        ("sub01", "EP02_01f"),
        ("sub01", "EP03_02"),
        ("sub02", "EP01_11f"),
    ]
    with open(out.with_name("casme2.dropped.csv"), newline="") as handle:
        dropped = {int(r["source_row"]): r["reason"] for r in csv.DictReader(handle)}
    assert dropped == {
        5: "not in class preset",
        6: "text in frame column",
        7: "frame order",
        8: "duplicate row",
        9: "clip folder missing",
        10: "frames missing",
    }
    assert "dropped 6 rows" in result.output and "row 9 (sub04/EP07_07)" in result.output


def test_conflicting_duplicates_are_all_dropped(tmp_path, casme2_copy):
    root, rows = casme2_copy
    rows = rows + [casme2_row(1, "EP02_01f", 46, 60, 80, "surprise")]
    result = annotate_samples("casme2", casme2_sheet(tmp_path / "c.xlsx", rows), root, "casme2-5", on_problem="drop")
    assert ("sub01", "EP02_01f") not in _by_clip(result.samples)
    assert {d.source_row for d in result.dropped if d.reason == "conflicting duplicate rows"} == {2, 6}
    # A repeat that cannot even be parsed still makes the clip ambiguous.
    rows = rows[:-1] + [casme2_row(2, "EP01_11f", "x", 131, 150, "others")]
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme2", casme2_sheet(tmp_path / "d.xlsx", rows), root, "casme2-5")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "row 4 (subject sub02, clip EP01_11f)",
        "row 6 (subject sub02, clip EP01_11f)",
        "row 6 (subject sub02, clip EP01_11f)",
    ]


def test_a_file_that_is_not_a_coding_sheet(tmp_path, casme2_copy, project_params):
    root, _ = casme2_copy
    sheet = write_xlsx(tmp_path / "budget.xlsx", [["Item", "Cost"], ["chairs", 12]])
    with pytest.raises(MerError, match="budget.xlsx does not look like a casme2 coding sheet.*OnsetFrame"):
        annotate_samples("casme2", sheet, root)
    result, out = _run(tmp_path, project_params, "casme2", root, sheet)
    assert result.exit_code != 0 and "Subject, Filename, OnsetFrame" in result.output and not out.exists()
    text = tmp_path / "notes.csv"
    text.write_text("just some notes\nnothing tabular\n")
    with pytest.raises(MerError, match="notes.csv does not look like"):
        annotate_samples("casme2", text, root)


def test_missing_required_column_is_named(tmp_path, samm_copy, project_params):
    root, rows = samm_copy
    header = [c for c in SAMM_HEADER if c != "Offset Frame"]
    body = [r[:5] + r[6:] for r in rows]
    sheet = samm_sheet(tmp_path / "s.xlsx", body, header)
    with pytest.raises(MerError, match="row 14 lacks the column\\(s\\) Offset Frame"):
        annotate_samples("samm", sheet, root, "samm-5")
    result, out = _run(tmp_path, project_params, "samm", root, sheet)
    assert result.exit_code != 0 and "lacks the column(s) Offset Frame" in result.output and not out.exists()


def test_missing_inputs_are_clear_errors(tmp_path, casme2_copy):
    root, rows = casme2_copy
    with pytest.raises(MerError, match="coding spreadsheet not found"):
        annotate_samples("casme2", tmp_path / "nope.xlsx", root)
    with pytest.raises(MerError, match="data folder not found"):
        annotate_samples("casme2", casme2_sheet(tmp_path / "c.xlsx", rows), tmp_path / "missing")
    legacy = tmp_path / "old.xls"
    legacy.write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(MerError, match="save it as .xlsx"):
        annotate_samples("casme2", legacy, root)


# --------------------------------------------------------------------------------------------
# Per-clip overrides file
# --------------------------------------------------------------------------------------------


def test_overrides_correct_the_sheet_without_editing_it(tmp_path, casme2_copy):
    root, rows = casme2_copy
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    original = sheet.read_bytes()
    overrides = write_overrides(
        tmp_path / "fixes.csv",
        [
            [1, "EP02_01f", None, 62, None],  # apex only; subject written as in the sheet
            ["sub02", "EP01_11f", 121, None, 149],  # onset / offset only: the sheet's apex stays
            ["sub01", "EP03_02", None, 40, None],  # an apex for a clip the sheet leaves '/'
        ],
    )
    result = annotate_samples("casme2", sheet, root, "casme2-5", overrides=overrides)
    samples = _by_clip(result.samples)
    first = samples[("sub01", "EP02_01f")]
    assert (first.onset, first.apex, first.offset, first.apex_source) == (46, 62, 80, "override")
    second = samples[("sub02", "EP01_11f")]
    assert (second.onset, second.apex, second.offset, second.apex_source) == (121, 131, 149, "annotated")
    assert second.n_frames == 29
    third = samples[("sub01", "EP03_02")]
    assert (third.apex, third.apex_source) == (40, "override")
    assert result.n_imputed == 0 and result.n_overridden == 3
    assert sheet.read_bytes() == original
    # '/' (or -1) in the apex column forgets the sheet's apex: it is imputed instead.
    again = write_overrides(tmp_path / "impute.csv", [["sub02", "EP01_11f", None, "/", None]])
    imputed = _by_clip(annotate_samples("casme2", sheet, root, "casme2-5", overrides=again).samples)[
        ("sub02", "EP01_11f")
    ]
    assert imputed.apex_source == "imputed" and abs(imputed.apex - (120 + 25)) <= 2


def test_an_override_can_repair_a_broken_row(tmp_path, broken_casme2):
    root, rows = broken_casme2
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    fixes = write_overrides(
        tmp_path / "fixes.csv",
        [
            ["sub03", "EP01_01", 10, None, None],  # row 6 held 'ten'
            ["sub03", "EP05_02", None, 12, 14],  # row 10: stop before the missing frames 15-17
        ],
    )
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme2", sheet, root, "casme2-5", overrides=fixes)
    rows_left = sorted(int(p.split()[1]) for p in caught.value.problems)
    assert rows_left == [7, 8, 9]
    # A problem on a corrected row says which values came from the overrides file.
    bad = write_overrides(tmp_path / "bad.csv", [["sub03", "EP01_01", 31, None, None]])
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme2", sheet, root, "casme2-5", overrides=bad)
    line = next(p for p in caught.value.problems if p.startswith("row 6 "))
    assert "OnsetFrame 31 is after OffsetFrame 30" in line and "[onset from bad.csv row 2]" in line


def test_override_problems_are_reported_with_the_override_row(tmp_path, casme2_copy, project_params):
    root, rows = casme2_copy
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    overrides = write_overrides(
        tmp_path / "fixes.csv",
        [
            ["sub01", "EP02_01f", None, 60, None],  # row 2: fine
            ["sub09", "EP02_01f", None, 60, None],  # row 3: no such clip in the sheet
            ["sub02", "EP01_11f", "abc", None, None],  # row 4: text
            ["sub02", "EP09_10", None, None, None],  # row 5: changes nothing
            ["sub01", "EP02_01f", None, 61, None],  # row 6: the same clip again
        ],
    )
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme2", sheet, root, "casme2-5", overrides=overrides)
    problems = caught.value.problems
    assert len(problems) == 4
    assert (
        problems[0].startswith("fixes.csv row 3 (subject sub09, clip EP02_01f)")
        and "sheet has sub01/EP02_01f" in problems[0]
    )
    assert problems[1].startswith("fixes.csv row 4") and "'abc'" in problems[1]
    assert problems[2].startswith("fixes.csv row 5") and "sets none of" in problems[2]
    assert problems[3].startswith("fixes.csv row 6") and "row 2" in problems[3]
    # Overrides are never silently dropped, whatever on_problem says; the CLI exits non-zero.
    with pytest.raises(InputProblems, match="fixes.csv row 3"):
        annotate_samples("casme2", sheet, root, "casme2-5", on_problem="drop", overrides=overrides)
    result, out = _run(tmp_path, project_params, "casme2", root, sheet, "--overrides", str(overrides))
    assert result.exit_code != 0 and "fixes.csv row 3" in result.output and not out.exists()


def test_overrides_through_params_and_cli(tmp_path, casme2_copy, project_params):
    root, rows = casme2_copy
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    overrides = write_overrides(tmp_path / "fixes.csv", [["sub01", "EP02_01f", None, 60, None]])
    project_params["annotate"]["overrides"] = str(overrides)
    result, out = _run(tmp_path, project_params, "casme2", root, sheet)
    assert result.exit_code == 0, result.output
    row = next(r for r in read_samples(out) if r["clip"] == "EP02_01f")
    assert (row["apex"], row["apex_source"]) == (60, "override")
    assert "1 clips corrected by fixes.csv (apex set for 1)" in result.output
    missing, _ = _run(tmp_path, project_params, "casme2", root, sheet, "--overrides", str(tmp_path / "nope.csv"))
    assert missing.exit_code != 0 and "overrides file not found" in missing.output


# --------------------------------------------------------------------------------------------
# Cell normalization and apex imputation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell, expected",
    [
        (12, "12"),
        (12.0, "12"),
        ("4+7+L10", "4+7+L10"),
        ("R12 + R15", "R12+R15"),
        ("R14A", "R14A"),
        ("r14a", "R14A"),
        ("AU4 + AU7", "4+7"),
        ("1+2+R4B", "1+2+R4B"),
        (None, ""),
        ("/", ""),
        ("12.0+4", "12+4"),
    ],
)
def test_action_units_are_canonical(cell, expected):
    assert normalize_action_units(cell) == expected


def test_estimate_apex_finds_a_known_peak():
    frames = blob_frames(60, peak=14, size=32, seed=3, noise=4.0)
    assert abs(estimate_apex(frames) - 14) <= 1
    colour = np.repeat(frames[..., None], 3, axis=3)
    assert estimate_apex(colour) == estimate_apex(frames)
    # Frames before the onset are ignored and the index stays relative to the whole array.
    assert abs(estimate_apex(np.concatenate([frames[::-1][:10], frames]), onset_index=10) - 24) <= 1
    assert estimate_apex(frames[:1]) == 0
    with pytest.raises(ValueError):
        estimate_apex(frames, onset_index=60)


def test_one_noisy_frame_does_not_win():
    frames = blob_frames(40, peak=28, size=32, seed=1, noise=1.0)
    frames[5] = 255 - frames[5]  # a single corrupted frame far from the real peak
    assert abs(estimate_apex(frames) - 28) <= 1


# --------------------------------------------------------------------------------------------
# The demo data, whose true apexes are known
# --------------------------------------------------------------------------------------------


def test_demo_data_imputed_apexes_are_near_the_truth(tmp_path, project_params, tiny_demo, capsys):
    """Done-when: imputed apexes within 3 frames of the truth for >= 90 % of the demo clips.

    The stage imputes only the apexes the sheet leaves out; to measure the estimator on every
    clip, each clip's apex is imputed here from its frames, whatever the sheet says."""
    params = write_params(tmp_path, project_params)
    demo = tiny_demo
    layouts = {
        "casme2": ("CASME2_RAW_selected", "CASME2-coding-20140508.xlsx"),
        "samm": ("SAMM", "SAMM_Micro_FACS_Codes_v2.xlsx"),
    }
    n_imputed = 0
    errors: dict[str, list[int]] = {}
    for dataset, (folder, coding) in layouts.items():
        out = tmp_path / f"{dataset}.csv"
        args = [
            "annotate",
            "--dataset",
            dataset,
            "--root",
            str(demo / dataset / folder),
            "--coding",
            str(demo / dataset / coding),
            "--out",
            str(out),
            "--params",
            str(params),
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        with open(demo / dataset / "ground_truth.csv", newline="") as handle:
            truth = {(r["subject"], r["clip"]): int(r["apex"]) for r in csv.DictReader(handle)}
        for sample in read_samples(out):
            true_apex = truth[(sample["subject"], sample["clip"])]
            if sample["apex_source"] == "imputed":
                n_imputed += 1
                assert abs(sample["apex"] - true_apex) <= 5, sample
            else:
                assert sample["apex"] == true_apex
        # Every clip of the copy (all rows of the sheet that have folders), not only the uncoded ones.
        clips = find_clip_folders(dataset, demo / dataset / folder)
        sheet = read_coding(demo / dataset / coding, dataset)
        errors[dataset] = [
            impute_apex(clips[(r.subject, r.clip)], r.onset, r.offset) - truth[(r.subject, r.clip)] for r in sheet.rows
        ]
    assert n_imputed >= 2
    with capsys.disabled():
        print()
        for dataset, errs in [*errors.items(), ("all", [e for found in errors.values() for e in found])]:
            within = sum(abs(e) <= 3 for e in errs)
            print(
                f"  apex imputation, {dataset}: {within}/{len(errs)} clips ({100 * within / len(errs):.0f} %) within 3 frames "
                f"of the true apex; median |error| {float(np.median(np.abs(errs))):.1f}, max {max(map(abs, errs))}"
            )
    all_errors = [e for errs in errors.values() for e in errs]
    assert len(all_errors) >= 20
    assert sum(abs(e) <= 3 for e in all_errors) >= 0.9 * len(all_errors)
    for errs in errors.values():
        assert sum(abs(e) <= 3 for e in errs) >= 0.9 * len(errs)
