"""Annotate on the real sheets' quirks: SAMM's apex outside its clip, CAS(ME)^3's several
micro-expressions per video, SMIC's two sheets and formulas, the aliases of cleaned CSVs,
warnings by spreadsheet row and the MEGC 2019 composite recipe."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from pipeline.datasets.annotate import annotate_samples
from pipeline.datasets.coding import read_coding
from pipeline.datasets.layouts import find_clip_folders
from pipeline.datasets.presets import label_names_for
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import read_samples, sample_ids
from stages.cli import cli
from tests.conftest import write_params
from tests.sheets import (
    CASME2_HEADER,
    casme2_clip,
    casme2_row,
    casme2_sheet,
    casme3_clip,
    casme3_row,
    casme3_sheet,
    samm_clip,
    samm_row,
    samm_sheet,
    smic_clip,
    smic_row,
    smic_workbook,
    write_csv,
    write_overrides,
    write_xlsx,
)


def _run(tmp_path, project_params, *args):
    params = write_params(tmp_path, project_params)
    out = tmp_path / "out" / "samples.csv"
    result = CliRunner().invoke(cli, ["annotate", *map(str, args), "--out", str(out), "--params", str(params)])
    return result, out


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------
# SAMM: an apex outside onset..offset is a missing apex
# --------------------------------------------------------------------------------------------


@pytest.fixture
def samm_outside(tmp_path):
    """The SAMM v2 quirk: two apex cells outside their clip (one just past the offset, one a typo)."""
    root = tmp_path / "SAMM"
    samm_clip(root, "006", "006_1_2", 100, 140)
    samm_clip(root, "028", "028_4_1", 1071, 1134, peak=20)
    samm_clip(root, "032", "032_3_1", 4896, 4970, peak=30)
    rows = [
        samm_row("006", "006_1_2", 100, 112, 140, "Anger"),
        samm_row("028", "028_4_1", 1071, 1143, 1134, "Contempt"),  # spreadsheet row 16
        samm_row("032", "032_3_1", 4896, 1930, 4970, "Anger"),  # row 17
    ]
    return root, samm_sheet(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx", rows)


def test_an_apex_outside_the_clip_is_estimated_and_flagged(samm_outside):
    root, sheet = samm_outside
    result = annotate_samples("samm", sheet, root)
    samples = {s.clip: s for s in result.samples}
    assert len(samples) == 3 and not result.dropped
    assert samples["006_1_2"].apex_source == "annotated"
    for clip, onset, offset, peak in (("028_4_1", 1071, 1134, 20), ("032_3_1", 4896, 4970, 30)):
        sample = samples[clip]
        assert sample.apex_source == "imputed_outside" and onset <= sample.apex <= offset
        assert abs(sample.apex - (onset + peak)) <= 2
    assert [(w.source_row, w.kind) for w in result.warnings] == [(16, "apex outside clip"), (17, "apex outside clip")]
    assert "apex 1143 is outside the clip 1071..1134" in result.warnings[0].detail
    assert result.n_imputed == 2


def test_apex_outside_error_refuses_the_rows(samm_outside, tmp_path, project_params):
    root, sheet = samm_outside
    with pytest.raises(InputProblems) as caught:
        annotate_samples("samm", sheet, root, apex_outside="error")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "row 16 (subject 028, clip 028_4_1)",
        "row 17 (subject 032, clip 032_3_1)",
    ]
    assert "Apex Frame 1143 is outside Onset Frame..Offset Frame (1071..1134)" in caught.value.problems[0]
    # Through the CLI option and through params.
    result, out = _run(
        tmp_path, project_params, "--dataset", "samm", "--root", root, "--coding", sheet, "--apex-outside", "error"
    )
    assert result.exit_code != 0 and "row 16" in result.output and not out.exists()
    project_params["annotate"]["apex_outside"] = "error"
    result, out = _run(tmp_path, project_params, "--dataset", "samm", "--root", root, "--coding", sheet)
    assert result.exit_code != 0 and "row 17" in result.output
    project_params["annotate"]["apex_outside"] = "clamp"
    result, _ = _run(tmp_path, project_params, "--dataset", "samm", "--root", root, "--coding", sheet)
    assert result.exit_code != 0 and "annotate.apex_outside = 'clamp': allowed: 'estimate' or 'error'" in result.output


def test_the_cli_lists_estimated_apexes_in_the_summary_and_the_warnings_file(samm_outside, tmp_path, project_params):
    root, sheet = samm_outside
    result, out = _run(tmp_path, project_params, "--dataset", "samm", "--root", root, "--coding", sheet)
    assert result.exit_code == 0, result.output
    assert "2 of them because the sheet's apex lies outside the clip" in result.output
    assert "row 16 (028/028_4_1): the sheet's apex 1143 is outside" in result.output
    rows = read_samples(out)
    assert [r["apex_source"] for r in rows] == ["annotated", "imputed_outside", "imputed_outside"]
    warnings = _csv_rows(out.with_name("samples.warnings.csv"))
    assert [(w["source_row"], w["clip"], w["kind"]) for w in warnings] == [
        ("16", "028_4_1", "apex outside clip"),
        ("17", "032_3_1", "apex outside clip"),
    ]


# --------------------------------------------------------------------------------------------
# CAS(ME)^3: a sample is (subject, video, onset)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def casme3_copy(tmp_path):
    root = tmp_path / "part_A"
    casme3_clip(root / "part_A", "spNO.1", "a", 0, 80)  # doubled top folder
    casme3_clip(root / "part_A", "spNO.1", "e", 50, 130)
    casme3_clip(root / "part_A", "spNO.2", "d", 100, 140)
    rows = [
        casme3_row("spNO.1", "a", 10, 14, 20, "happy"),  # row 2
        casme3_row("spNO.1", "e", 62, 68, 96, "others"),  # row 3: three MEs in one video
        casme3_row("spNO.1", "e", 96, 102, 106, "Others"),  # row 4
        casme3_row("spNO.1", "e", 110, 115, 120, "disgust"),  # row 5
        casme3_row("spNO.1", "a", 40, 45, 0, "others"),  # row 6: offset 0
        casme3_row("spNO.2", "d", 112, 83, 138, "fear"),  # row 7: apex before the onset
        casme3_row("spNO.2", "d", 120, 125, 130, "surprise"),  # row 8
        casme3_row("spNO.1", "a", 60, 63, 70, "sad", "4"),  # row 9
    ]
    return root, casme3_sheet(tmp_path / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", rows), rows


def test_casme3_keeps_several_samples_per_video(casme3_copy):
    root, sheet, _ = casme3_copy
    coding = read_coding(sheet, "casme3")
    assert coding.sheet_name == "label" and coding.n_rows == 8
    result = annotate_samples("casme3", sheet, root)
    assert [(s.subject, s.clip, s.onset) for s in result.samples] == [
        ("spNO.1", "a", 10),
        ("spNO.1", "a", 60),
        ("spNO.1", "e", 62),
        ("spNO.1", "e", 96),
        ("spNO.1", "e", 110),
        ("spNO.2", "d", 120),
    ]
    e96 = next(s for s in result.samples if s.onset == 96)
    assert (e96.apex, e96.offset, e96.emotion, e96.apex_source, e96.source_row) == (102, 106, "others", "annotated", 4)
    # Frames out of order are dropped and listed by row, not refused (the distributed sheet has four such rows).
    assert [(d.source_row, d.reason) for d in result.dropped] == [(6, "frame order"), (7, "frame order")]
    assert "Onset 40 is after Offset 0" in result.dropped[0].detail
    assert "Apex 83 is outside Onset..Offset (112..138)" in result.dropped[1].detail
    assert result.scheme.labels == ("disgust", "fear", "happy", "others", "sad", "surprise")  # "Others" is "others"
    rows = [s.as_row() for s in result.samples]
    ids = sample_ids(rows)
    assert ids == [
        "casme3/spNO.1/a/10",
        "casme3/spNO.1/a/60",
        "casme3/spNO.1/e/62",
        "casme3/spNO.1/e/96",
        "casme3/spNO.1/e/110",
        "casme3/spNO.2/d",  # the only sample kept from that video
    ]
    assert len(set(ids)) == len(ids)
    assert set(find_clip_folders("casme3", root)) == {("spNO.1", "a"), ("spNO.1", "e"), ("spNO.2", "d")}


def test_casme3_frame_order_fail_and_apex_outside_estimate(casme3_copy):
    root, sheet, _ = casme3_copy
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme3", sheet, root, frame_order="fail")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "row 6 (subject spNO.1, clip a)",
        "row 7 (subject spNO.2, clip d)",
    ]
    result = annotate_samples("casme3", sheet, root, apex_outside="estimate")
    d112 = next(s for s in result.samples if s.onset == 112)
    assert d112.apex_source == "imputed_outside" and 112 <= d112.apex <= 138
    assert [d.source_row for d in result.dropped] == [6]
    with pytest.raises(MerError, match="frame_order must be one of fail, drop"):
        annotate_samples("casme3", sheet, root, frame_order="skip")


def test_casme3_duplicates_are_per_onset(casme3_copy, tmp_path):
    root, _, rows = casme3_copy
    rows = rows + [
        casme3_row("spNO.1", "e", 62, 68, 96, "others"),  # row 10: repeats row 3
        casme3_row("spNO.1", "e", 110, 116, 120, "disgust"),  # row 11: conflicts with row 5
    ]
    sheet = casme3_sheet(tmp_path / "dup.xlsx", rows)
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme3", sheet, root)
    problems = caught.value.problems
    assert any(p.startswith("row 10 (subject spNO.1, clip e)") and "repeats row 3 (same sample" in p for p in problems)
    assert any(p.startswith("row 5 (subject spNO.1, clip e)") and "also coded on row 11" in p for p in problems)
    assert any(p.startswith("row 11 (subject spNO.1, clip e)") and "also coded on row 5" in p for p in problems)
    assert len(problems) == 3  # rows 6 and 7 (frames out of order) are dropped, not refused


def test_casme3_overrides_pick_a_sample_by_onset(casme3_copy, tmp_path):
    root, sheet, _ = casme3_copy
    fixes = write_overrides(tmp_path / "fixes.csv", [["spNO.1", "e", 96, 100, None], ["spNO.2", "d", 112, 115, None]])
    result = annotate_samples("casme3", sheet, root, overrides=fixes)
    by_onset = {(s.clip, s.onset): s for s in result.samples}
    assert by_onset[("e", 96)].apex == 100 and by_onset[("e", 96)].apex_source == "override"
    assert by_onset[("e", 62)].apex == 68 and by_onset[("e", 62)].apex_source == "annotated"
    assert by_onset[("d", 112)].apex == 115  # the override repairs the apex before the onset
    assert result.n_overridden == 2
    # Without the onset, an override of a video with several samples is ambiguous; a wrong onset names none.
    fixes = write_overrides(tmp_path / "bad.csv", [["spNO.1", "e", None, 100, None], ["spNO.1", "a", 11, 12, None]])
    with pytest.raises(InputProblems) as caught:
        annotate_samples("casme3", sheet, root, overrides=fixes)
    assert caught.value.problems == [
        "bad.csv row 2 (subject spNO.1, clip e): the folder spNO.1/e holds 3 samples, onsets 62 (row 3), 96 (row 4), "
        "110 (row 5); add an onset column that says which one the override corrects",
        "bad.csv row 3 (subject spNO.1, clip a): no row of cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx codes subject "
        "spNO.1, clip a, onset 11 (its rows have the onsets 10, 40, 60); fix the subject, clip or onset of the override",
    ]


def test_casme3_through_the_cli(casme3_copy, tmp_path, project_params):
    root, sheet, _ = casme3_copy
    result, out = _run(tmp_path, project_params, "--dataset", "casme3", "--root", root, "--coding", sheet)
    assert result.exit_code == 0, result.output
    assert "kept 6 clips of 2 subjects" in result.output and "dropped 2 rows: frame order 2" in result.output
    assert "row 6 (spNO.1/a): Onset 40 is after Offset 0" in result.output
    dropped = _csv_rows(out.with_name("samples.dropped.csv"))
    assert [(d["source_row"], d["reason"]) for d in dropped] == [("6", "frame order"), ("7", "frame order")]
    assert [(r["clip"], r["onset"]) for r in read_samples(out)][:2] == [("a", 10), ("a", 60)]


# --------------------------------------------------------------------------------------------
# SMIC-HS-E: two coding sheets, formulas, no apex column
# --------------------------------------------------------------------------------------------


@pytest.fixture
def smic_copy(tmp_path):
    root = tmp_path / "SMIC" / "HS"
    hs = [
        smic_row(1, "s1_ne_01", 17581039, 17, "negative", 2),
        smic_row(1, "s1_po_02", 2000, 12, "positive", 3),
        smic_row(2, "s2_sur_01", 5000, 20, "surprise", 4),
    ]
    smic_clip(root, 1, "negative", "s1_ne_01", 17581039, 17581055, peak=6)
    smic_clip(root, 1, "positive", "s1_po_02", 1990, 2015)  # SMIC-E: frames before and after the ME
    smic_clip(root, 2, "surprise", "s2_sur_01", 5000, 5019, peak=9)
    vis = [smic_row(11, "s11_po_01", 64702, 12, "positive", 2)]
    return root, hs, vis


def test_smic_two_sheets_must_be_chosen(smic_copy, tmp_path, project_params):
    root, hs, vis = smic_copy
    book = smic_workbook(tmp_path / "SMIC-HS-E_annotation.xlsx", hs, vis)
    with pytest.raises(MerError) as caught:
        annotate_samples("smic", book, root)
    assert "holds 2 sheets with a coding table: 'HS' (3 rows), 'VIS' (1 rows); choose one with annotate.sheet" in str(
        caught.value
    )
    with pytest.raises(MerError, match="has no sheet 'NIR'; its sheets are 'HS', 'VIS', 'Sheet2'"):
        annotate_samples("smic", book, root, sheet="NIR")
    result, out = _run(tmp_path, project_params, "--dataset", "smic", "--root", root, "--coding", book)
    assert result.exit_code != 0 and "'HS' (3 rows), 'VIS' (1 rows)" in result.output and not out.exists()
    project_params["annotate"]["sheet"] = "HS"
    result, out = _run(tmp_path, project_params, "--dataset", "smic", "--root", root, "--coding", book)
    assert result.exit_code == 0, result.output
    assert "from sheet 'HS' of SMIC-HS-E_annotation.xlsx" in result.output
    assert "apex imputed for 3 clips (the sheet has no apex column)" in result.output


def test_smic_formulas_with_saved_values_and_every_apex_estimated(smic_copy, tmp_path):
    root, hs, vis = smic_copy
    book = smic_workbook(tmp_path / "SMIC-HS-E_annotation.xlsx", hs, vis)
    result = annotate_samples("smic", book, root, sheet="HS")
    samples = {s.clip: s for s in result.samples}
    assert [(s.subject, s.onset, s.offset) for s in samples.values()] == [
        ("s1", 17581039, 17581055),  # OffsetF =D2+K2-1, read from the value the workbook saved
        ("s1", 2000, 2011),
        ("s2", 5000, 5019),
    ]
    assert all(s.apex_source == "imputed" for s in samples.values())
    assert abs(samples["s1_ne_01"].apex - 17581045) <= 2 and abs(samples["s2_sur_01"].apex - 5009) <= 2
    assert result.scheme.labels == ("negative", "positive", "surprise") and not result.warnings
    megc = annotate_samples("smic", book, root, "megc2019", sheet="HS")
    assert len(megc.samples) == 3  # no apex column: nothing for megc2019 to leave out


def test_smic_formulas_without_saved_values_are_named_by_row(smic_copy, tmp_path):
    root, hs, vis = smic_copy
    book = smic_workbook(tmp_path / "written-by-a-script.xlsx", hs, vis, cached=False)
    with pytest.raises(InputProblems) as caught:
        annotate_samples("smic", book, root, sheet="HS")
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(
        "row 2 (subject s1, clip s1_ne_01): OffsetF holds the formula '=D2+K2-1' but the workbook"
    )
    assert "open it in a spreadsheet program and save it" in problems[0]


def test_smic_subject_folders_s1_and_s01(tmp_path):
    hs = [smic_row(1, "s1_ne_01", 100, 10, "negative", 2)]
    root = tmp_path / "HS"
    smic_clip(root, 1, "negative", "s1_ne_01", 100, 109)
    (root / "s1").rename(root / "s01")  # a copy whose subject folders are zero-padded
    (root / "notes").mkdir()
    result = annotate_samples("smic", smic_workbook(tmp_path / "hs.xlsx", hs, []), root, sheet="HS")
    assert [(s.subject, s.clip) for s in result.samples] == [("s1", "s1_ne_01")]


def test_the_sheet_setting_on_a_csv_is_an_error(tmp_path):
    path = write_csv(
        tmp_path / "c.csv", [["subject", "clip", "onset", "apex", "offset", "emotion"], ["1", "c", 1, 2, 3, "x"]]
    )
    with pytest.raises(MerError, match="is a CSV file and has no sheets"):
        annotate_samples("generic", path, None, sheet="HS")


# --------------------------------------------------------------------------------------------
# Column aliases of cleaned copies
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        ["Subject", "Filename", "Onset", "Apex", "Offset", "Action Units", "Label", "catego"],  # a cleaned CSV
        ["data", "subject", "clip", "label", "onset_frame", "apex_frame", "offset_frame", "onset_frame_path"],
        ["Subject", "Filename", "OnsetF", "ApexF", "OffsetF", "Emotion"],
        ["Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion"],
        ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "emotion"],
    ],
)
def test_cleaned_csv_headers_read_as_generic(tmp_path, header):
    root = tmp_path / "copy"
    casme2_clip(root, "01", "EP02_01f", 46, 86)
    values = {"subject": "01", "clip": "EP02_01f", "onset": 46, "apex": 59, "offset": 86, "emotion": "happiness"}
    keys = {
        "Subject": "subject",
        "subject": "subject",
        "Filename": "clip",
        "clip": "clip",
        "Label": "emotion",
        "label": "emotion",
        "Emotion": "emotion",
        "emotion": "emotion",
        "Estimated Emotion": "emotion",
    }
    row = []
    for title in header:
        key = keys.get(title) or next((f for f in ("onset", "apex", "offset") if title.lower().startswith(f)), None)
        row.append(values[key] if key and not title.endswith("path") else "x")
    path = write_csv(tmp_path / "clean.csv", [header, row])
    result = annotate_samples("generic", path, root)
    [sample] = result.samples
    assert (sample.subject, sample.clip, sample.onset, sample.apex, sample.offset, sample.emotion) == (
        "01",
        "EP02_01f",
        46,
        59,
        86,
        "happiness",
    )


# --------------------------------------------------------------------------------------------
# Warnings by spreadsheet row
# --------------------------------------------------------------------------------------------


def test_frames_beyond_the_span_and_apex_on_onset_or_offset_are_warned(tmp_path, project_params):
    root = tmp_path / "CASME2"
    casme2_clip(root, "sub16", "EP01_08", 40, 110)  # the folder goes on past the sheet's offset 96
    casme2_clip(root, "sub05", "EP09_05f", 69, 123)
    casme2_clip(root, "sub12", "EP09_06", 66, 111)
    casme2_clip(root, "sub01", "EP02_01f", 40, 80)  # frames before the onset 46
    rows = [
        casme2_row(16, "EP01_08", 40, 60, 96, "happiness"),  # row 2
        casme2_row(5, "EP09_05f", 69, 69, 123, "disgust"),  # row 3: apex = onset
        casme2_row(12, "EP09_06", 66, 111, 111, "disgust"),  # row 4: apex = offset
        casme2_row(1, "EP02_01f", 46, 59, 80, "happiness"),  # row 5
    ]
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    result = annotate_samples("casme2", sheet, root)
    assert [(w.source_row, w.kind) for w in result.warnings] == [
        (2, "frames after offset"),
        (3, "apex on onset"),
        (4, "apex on offset"),
        (5, "frames before onset"),
    ]
    assert "holds 14 frame(s) after OffsetFrame 96 (97-110)" in result.warnings[0].detail
    assert "onset-apex phase is one frame" in result.warnings[1].detail
    assert len(result.samples) == 4 and not result.dropped  # warnings never drop a row
    result, out = _run(tmp_path, project_params, "--dataset", "casme2", "--root", root, "--coding", sheet)
    assert result.exit_code == 0, result.output
    assert (
        "warnings on 4 kept rows" in result.output
        and "row 2 (sub16/EP01_08): the folder holds 14 frame(s)" in result.output
    )
    assert [w["kind"] for w in _csv_rows(out.with_name("samples.warnings.csv"))] == [
        "frames after offset",
        "apex on onset",
        "apex on offset",
        "frames before onset",
    ]


def test_layouts_holding_whole_videos_are_not_warned(casme3_copy):
    root, sheet, _ = casme3_copy
    result = annotate_samples("casme3", sheet, root)
    assert not [w for w in result.warnings if w.kind.startswith("frames")]


# --------------------------------------------------------------------------------------------
# MEGC 2019 composite
# --------------------------------------------------------------------------------------------


def test_megc2019_leaves_out_the_clips_the_challenge_left_out(tmp_path, samm_outside):
    root = tmp_path / "CASME2"
    for subject, clip in (("sub04", "EP12_01f"), ("sub05", "EP09_05f"), ("sub12", "EP09_06"), ("sub01", "EP02_01f")):
        casme2_clip(root, subject, clip, 60, 130)
    rows = [
        casme2_row(4, "EP12_01f", 61, "/", 121, "disgust"),  # row 2: apex not coded
        casme2_row(5, "EP09_05f", 69, 69, 123, "disgust"),  # row 3: apex on onset
        casme2_row(12, "EP09_06", 66, 111, 111, "disgust"),  # row 4: apex on offset: kept
        casme2_row(1, "EP02_01f", 70, 80, 90, "happiness"),  # row 5
    ]
    sheet = casme2_sheet(tmp_path / "coding.xlsx", rows)
    assert len(annotate_samples("casme2", sheet, root, "megc-3").samples) == 4
    result = annotate_samples("casme2", sheet, root, "megc2019")
    assert [s.clip for s in result.samples] == ["EP02_01f", "EP09_06"]
    assert [(d.source_row, d.reason) for d in result.dropped] == [(2, "apex not coded"), (3, "apex on onset")]
    assert label_names_for("megc2019") == label_names_for("megc-3") == ["positive", "negative", "surprise"]
    samm_root, samm = samm_outside
    assert len(annotate_samples("samm", samm, samm_root, "megc2019").samples) == 3  # an apex outside is coded


def test_header_only_workbook_sheets_do_not_count_as_candidates(tmp_path):
    """A workbook whose second sheet holds only the header (a template) still has one coding table."""
    import openpyxl

    path = write_xlsx(tmp_path / "c.xlsx", [CASME2_HEADER, casme2_row(1, "EP02_01f", 46, 59, 80, "happiness")])
    workbook = openpyxl.load_workbook(path)
    workbook.create_sheet("template").append(CASME2_HEADER)
    workbook.save(path)
    coding = read_coding(path, "casme2")
    assert coding.sheet_name == "Sheet1" and len(coding.rows) == 1


def test_a_composite_keeps_the_samples_of_one_video_apart(casme3_copy, samm_outside, tmp_path):
    from pipeline.datasets.annotate import annotate_to_file
    from pipeline.datasets.composite import combine_samples

    root, sheet, _ = casme3_copy
    annotate_to_file(tmp_path / "casme3.csv", "casme3", sheet, root, classes="megc-3")
    samm_root, samm = samm_outside
    annotate_to_file(tmp_path / "samm.csv", "samm", samm, samm_root, classes="megc-3")
    result = combine_samples([tmp_path / "casme3.csv", tmp_path / "samm.csv"], "megc-3")
    assert sample_ids(result.rows) == [
        "casme3/spNO.1/a/10",
        "casme3/spNO.1/a/60",
        "casme3/spNO.1/e",
        "casme3/spNO.2/d",
        "samm/006/006_1_2",
        "samm/028/028_4_1",
        "samm/032/032_3_1",
    ]
    # The same sample twice in one table is still caught.
    rows = _csv_rows(tmp_path / "casme3.csv")
    with open(tmp_path / "twice.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + rows[:1])
    with pytest.raises(InputProblems) as caught:
        combine_samples([tmp_path / "twice.csv", tmp_path / "samm.csv"], "megc-3")
    assert any("casme3/spNO.1/a (onset 10) is also on" in p for p in caught.value.problems)
