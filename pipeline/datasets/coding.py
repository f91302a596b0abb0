"""The coding sheet: one parsed row per clip, and every problem of every row.

- CASME II `CASME2-coding-*.xlsx` (or a CSV export): header on row 1, columns Subject, Filename,
  OnsetFrame, ApexFrame, OffsetFrame, Action Units, Estimated Emotion; a missing apex written '/'.
- SAMM `SAMM_Micro_FACS_Codes_v2.xlsx`: 13 preamble rows, header on row 14, columns Subject,
  Filename, Onset Frame, Apex Frame, Offset Frame, Action Units, Estimated Emotion (and others);
  subject text '006' or the number 6; a missing apex written -1.
- CAS(ME)^3 part A `cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx` (`casme3`): sheet `label`, columns
  Subject, Filename (the video), Onset, Apex, Offset, AU, emotion, every cell text; one video
  holds several rows, told apart by their onset.
- SMIC-HS-E `SMIC-HS-E_annotation.xlsx` (`smic`): sheets HS and VIS (choose one with `sheet`),
  columns Subject, Filename, OnsetF, OffsetF, Emotion; no apex column; OffsetF is a formula.
- `generic`: a CSV (or .xlsx) with the columns subject, clip, onset, apex, offset, emotion and
  optionally action_units; subjects are kept as written.

An apex outside onset..offset is, with `apex_outside='estimate'`, treated as missing (estimated
later and flagged); with 'error' it is a frame-order problem of the row. Every problem is
reported with its spreadsheet row number as Excel shows it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.datasets.layouts import dataset_format
from pipeline.datasets.overrides import Override, Overrides, apply_override
from pipeline.datasets.sheets import (
    HEADER_SEARCH_ROWS,
    MISSING_APEX,
    Formula,
    Problem,
    cell_value,
    find_header,
    int_cell,
    is_blank,
    normalize_action_units,
    normalize_emotion,
    read_tables,
    row_identity,
)
from pipeline.errors import MerError


@dataclass(frozen=True)
class CodingRow:
    """One parsed spreadsheet row; apex None when the sheet leaves it out."""

    source_row: int
    subject: str
    clip: str
    onset: int
    apex: int | None
    offset: int
    emotion: str
    action_units: str
    overridden: tuple[str, ...] = ()  # fields whose value came from the overrides file
    apex_note: str = ""  # why apex is None: 'not coded' ('/', -1), 'no column' (SMIC), 'outside' (see sheet_apex)
    sheet_apex: int | None = None  # the sheet's apex when it lies outside onset..offset


@dataclass(frozen=True)
class RowKey:
    """What identifies a data row, also when it could not be parsed in full."""

    source_row: int
    subject: str | None
    clip: str | None
    emotion: str
    values: tuple | None  # (onset, apex, offset, emotion) when the row parsed
    onset: int | None = None  # the onset cell as a number, also when the row did not parse


@dataclass
class CodingSheet:
    path: Path
    dataset: str
    sheet_name: str | None
    header_row: int
    n_rows: int = 0  # non-blank data rows
    rows: list[CodingRow] = field(default_factory=list)
    keys: list[RowKey] = field(default_factory=list)  # every data row, parsed or not
    problems: list[Problem] = field(default_factory=list)
    overridden: dict[int, tuple[Override, str]] = field(default_factory=dict)  # sheet row -> override, note
    override_problems: list[Problem] = field(default_factory=list)  # problems of the overrides file
    sheet_names: tuple[str, ...] = ()  # every sheet of the workbook


APEX_OUTSIDE = ("estimate", "error")
FRAME_ORDER = ("fail", "drop")


def _expected_columns(dataset: str) -> str:
    titles = dataset_format(dataset).columns
    return ", ".join(titles[f] for f in ("subject", "clip", "onset", "apex", "offset", "action_units", "emotion"))


def _parse_row(
    dataset: str,
    number: int,
    cells: Sequence[Any],
    columns: Mapping[str, int],
    titles: Mapping[str, str],
    apex_outside: str = "estimate",
) -> tuple[CodingRow | None, list[Problem], RowKey]:
    def cell(name: str) -> Any:
        return cell_value(cells, columns, name)

    problems: list[Problem] = []
    raw_subject = cell("subject")
    subject, clip = row_identity(dataset, cells, columns)

    def problem(reason: str, detail: str) -> None:
        problems.append(Problem(number, subject, clip, reason, detail))

    if subject is None:
        example = dataset_format(dataset).subject_hint
        if is_blank(raw_subject):
            problem("missing subject", f"no Subject; fill it in with {example}")
        else:
            problem("bad subject", f"{titles['subject']} {raw_subject!r} is not a subject id; write {example}")
    if clip is None:
        problem("missing filename", "no Filename; fill in the clip folder name (e.g. EP02_01f or 006_1_2)")

    frames: dict[str, int | None] = {}
    apex_note = ""
    for name in ("onset", "apex", "offset"):
        value = cell(name)
        title = titles.get(name, name)
        if name == "apex" and "apex" not in columns:
            frames[name], apex_note = None, "no column"  # SMIC: every apex is estimated from the frames
            continue
        if isinstance(value, Formula):
            problem(
                "formula without value",
                f"{title} holds the formula {str(value)!r} but the workbook holds no value for it (it was written "
                "by a program that does not compute formulas); open it in a spreadsheet program and save it, "
                "or type the frame number",
            )
            frames[name] = None
            continue
        if name == "apex" and (is_blank(value) or str(value).strip().lower() in MISSING_APEX or int_cell(value) == -1):
            frames[name], apex_note = None, "not coded"  # imputed later from the frames
            continue
        if is_blank(value):
            problem("missing frame number", f"{title} is empty; fill in the frame number")
            frames[name] = None
            continue
        number_value = int_cell(value)
        if number_value is None:
            kind = "text" if isinstance(value, str) else type(value).__name__
            problem(
                "text in frame column",
                f"{title} holds {kind} {value!r}, not a frame number; write the integer frame number",
            )
        elif number_value < 0:
            problem("bad frame number", f"{title} is negative ({number_value}); write the frame number")
            number_value = None
        frames[name] = number_value

    emotion = normalize_emotion(cell("emotion"))
    if not emotion:
        problem("missing emotion", f"{titles['emotion']} is empty; fill it in")

    onset, apex, offset = frames["onset"], frames["apex"], frames["offset"]
    sheet_apex = None
    if onset is not None and offset is not None:
        if onset > offset:
            problem(
                "frame order",
                f"{titles['onset']} {onset} is after {titles['offset']} {offset}; correct the frame numbers",
            )
        elif apex is not None and not onset <= apex <= offset:
            if apex_outside == "estimate":
                # An apex outside its clip is a missing apex: estimated from the frames, flagged.
                sheet_apex, apex, apex_note = apex, None, "outside"
            else:
                problem(
                    "frame order",
                    f"{titles['apex']} {apex} is outside {titles['onset']}..{titles['offset']} "
                    f"({onset}..{offset}); correct the frame numbers, or set annotate.apex_outside: estimate "
                    "to estimate the apex from the frames",
                )
    key_onset = onset if onset is not None else int_cell(cell("onset"))
    if problems:
        return None, problems, RowKey(number, subject, clip, emotion, None, key_onset)
    row = CodingRow(
        number,
        subject,
        clip,
        onset,
        apex,
        offset,
        emotion,
        normalize_action_units(cell("action_units")),
        apex_note=apex_note,
        sheet_apex=sheet_apex,
    )
    return row, [], RowKey(number, subject, clip, emotion, (onset, sheet_apex or apex, offset, emotion), key_onset)


def _choose_table(path: Path, dataset: str, sheet: str | None):
    """(sheet name, header index, columns, table) of the coding table; MerError when there is none,
    when `sheet` names no sheet, or when several sheets hold a coding table and `sheet` is not set."""
    fmt = dataset_format(dataset)
    required = fmt.required_fields
    tables = list(read_tables(path))
    names = tuple(name for name, _ in tables if name is not None)
    if sheet is not None:
        if not names:
            raise MerError(f"{path} is a CSV file and has no sheets; remove the setting annotate.sheet ({sheet!r})")
        if sheet not in names:
            raise MerError(
                f"{path} has no sheet {sheet!r}; its sheets are {', '.join(repr(n) for n in names)} (annotate.sheet / --sheet)"
            )
        tables = [(name, table) for name, table in tables if name == sheet]
    complete, partial = [], None
    for sheet_name, table in tables:
        found = find_header(table, required)
        if found is None:
            continue
        index, columns = found
        if all(f in columns for f in required):
            complete.append((sheet_name, index, columns, table))
            if sheet_name is None:
                break  # a CSV: the first delimiter that gives every column
        elif partial is None:
            partial = (sheet_name, index, columns, table)

    def n_data(candidate) -> int:
        _, index, _, table = candidate
        return sum(1 for row in table[index + 1 :] if any(not is_blank(c) for c in row))

    # A sheet holding only a header (a template, a copy emptied) is no candidate when another holds rows.
    complete = [c for c in complete if n_data(c)] or complete[:1]
    if len(complete) > 1:
        listed = ", ".join(f"'{c[0]}' ({n_data(c)} rows)" for c in complete)
        raise MerError(
            f"{path} holds {len(complete)} sheets with a coding table: {listed}; choose one with annotate.sheet "
            f"(--sheet), e.g. --sheet {complete[0][0]!r}"
        )
    if complete:
        return complete[0], names
    where_sheet = f" (sheet {sheet!r})" if sheet is not None else ""
    if partial is not None:
        sheet_name, index, columns, table = partial
        missing = [fmt.columns[f] for f in required if f not in columns]
        present = ", ".join(str(v) for v in table[index] if not is_blank(v))
        where = f"sheet '{sheet_name}' " if sheet_name else ""
        raise MerError(
            f"{path}: the header on {where}row {index + 1} lacks the column(s) {', '.join(missing)} "
            f"(it has: {present}); add them, expected columns: {_expected_columns(dataset)}"
        )
    raise MerError(
        f"{path}{where_sheet} does not look like a {dataset} coding sheet: no header row within its first "
        f"{HEADER_SEARCH_ROWS} rows holds the columns {_expected_columns(dataset)} "
        "(names are matched ignoring case, spaces and '_')"
    )


def _match_overrides(
    sheet: CodingSheet, identities: dict[int, tuple[str | None, str | None, int | None]], overrides: Overrides
) -> dict[int, Override]:
    """sheet row -> the override that applies to it; an override naming no row (or, where a folder
    holds several samples, not saying which by its onset) is a problem of the overrides file."""
    by_folder: dict[tuple[str, str], list[int]] = defaultdict(list)
    for number, (subject, clip, _) in identities.items():
        if subject is not None and clip is not None:
            by_folder[(subject, clip)].append(number)
    several = dataset_format(sheet.dataset).several_per_folder
    chosen: dict[int, Override] = {}
    for o in overrides.rows:
        rows = by_folder.get((o.subject, o.clip), [])
        if several and o.onset is not None:
            rows = [n for n in rows if identities[n][2] == o.onset]
        if len(rows) == 1 or (rows and not several):
            chosen.update((n, o) for n in rows)  # one sample per folder: a repeated row is reported as a duplicate
            continue
        if not rows:
            known = {(s, c) for s, c, _ in identities.values() if s is not None and c is not None}
            hints = sorted(f"{s}/{c}" for s, c in known if c.lower() == o.clip.lower())
            hint = f" (the sheet has {', '.join(hints[:3])})" if hints else ""
            what = f"subject {o.subject}, clip {o.clip}" + (
                f", onset {o.onset}" if several and o.onset is not None else ""
            )
            onsets = [identities[n][2] for n in by_folder.get((o.subject, o.clip), [])]
            if onsets:
                hint = f" (its rows have the onsets {', '.join(str(x) for x in onsets)})"
            fix = "subject, clip or onset" if several else "subject or clip"
            detail = f"no row of {sheet.path.name} codes {what}{hint}; fix the {fix} of the override"
        else:
            onsets = ", ".join(f"{identities[n][2]} (row {n})" for n in rows)
            detail = (
                f"the folder {o.subject}/{o.clip} holds {len(rows)} samples, onsets {onsets}; "
                "add an onset column that says which one the override corrects"
            )
        sheet.override_problems.append(
            Problem(None, o.subject, o.clip, "override", detail, overrides.where(o.source_row))
        )
    return chosen


def read_coding(
    path: str | Path,
    dataset: str,
    overrides: Overrides | None = None,
    sheet: str | None = None,
    apex_outside: str | None = None,
) -> CodingSheet:
    """Parse a coding sheet (.xlsx or .csv) into rows and per-row problems.

    Raises MerError when the file is missing, unreadable, has no header row within its first
    rows, lacks a required column, or holds several coding tables (SMIC's HS and VIS) and
    `sheet` does not name one; row-level problems (text in a frame column, onset after
    offset, ...) are collected in `problems`, one per problem, with the spreadsheet row.
    Duplicates and folders are checked by `annotate_samples`. With `overrides`, their values
    replace the sheet's cells before the rows are parsed, and an override naming a clip that
    no row codes is a problem reported with the overrides file's row. `apex_outside`
    ('estimate' | 'error', None: the format's rule) says what an apex outside onset..offset is.
    """
    fmt = dataset_format(dataset)
    if apex_outside is None:
        apex_outside = "error" if fmt.bad_frame_rows == "drop" else "estimate"
    if apex_outside not in APEX_OUTSIDE:
        raise MerError(f"annotate.apex_outside must be one of {', '.join(APEX_OUTSIDE)}, got {apex_outside!r}")
    path = Path(path)
    if not path.is_file():
        raise MerError(f"coding spreadsheet not found: {path} (set the dataset's coding file in params.yaml)")
    (sheet_name, index, columns, table), names = _choose_table(path, dataset, sheet)
    coding = CodingSheet(path, dataset, sheet_name, index + 1, sheet_names=names)
    header = table[index]
    # Messages name the columns as this sheet spells them ('OnsetFrame', 'Onset Frame', ...).
    titles = {f: str(header[i]).strip() for f, i in columns.items()}
    data: list[tuple[int, Sequence[Any]]] = []
    for number, cells in enumerate(table[index + 1 :], start=index + 2):
        key_cells = [cell_value(cells, columns, f) for f in ("subject", "clip", "onset", "offset")]
        if all(is_blank(v) for v in key_cells):
            continue  # blank rows and notes below the table
        data.append((number, cells))
    chosen: dict[int, Override] = {}
    if overrides is not None:
        identities = {
            number: (*row_identity(dataset, cells, columns), int_cell(cell_value(cells, columns, "onset")))
            for number, cells in data
        }
        chosen = _match_overrides(coding, identities, overrides)
    for number, cells in data:
        coding.n_rows += 1
        override = chosen.get(number)
        if override is not None:
            cells = apply_override(cells, columns, override)
            coding.overridden[number] = (
                override,
                f"{', '.join(override.values)} from {overrides.where(override.source_row)}",
            )
        row, problems, key = _parse_row(dataset, number, cells, columns, titles, apex_outside)
        if override is not None and row is not None:
            row = replace(row, overridden=tuple(override.values))
        coding.keys.append(key)
        if row is not None:
            coding.rows.append(row)
        coding.problems.extend(problems)
    if overrides is not None:
        coding.override_problems = list(overrides.problems) + coding.override_problems
        coding.override_problems.sort(key=lambda p: int(p.where.rsplit(" ", 1)[1]))  # by the overrides file's row
    return coding


def duplicate_problems(keys: Sequence[RowKey], several_per_folder: bool = False) -> list[Problem]:
    """Rows coding the same sample: a repeat with the same values flags the later rows; rows
    that disagree (or could not all be parsed) are all flagged, as the right one is unknown.

    A sample is (subject, clip), or (subject, clip, onset) where a folder holds several samples
    (CAS(ME)^3: a video with several micro-expressions)."""
    by_clip: dict[tuple, list[RowKey]] = defaultdict(list)
    for key in keys:
        if key.subject is not None and key.clip is not None:
            by_clip[(key.subject, key.clip, key.onset) if several_per_folder else (key.subject, key.clip)].append(key)
    problems = []
    for (subject, clip, *_), group in by_clip.items():
        if len(group) < 2:
            continue
        first = group[0]
        if first.values is not None and all(k.values == first.values for k in group):
            for k in group[1:]:
                problems.append(
                    Problem(
                        k.source_row,
                        subject,
                        clip,
                        "duplicate row",
                        f"repeats row {first.source_row} (same {'sample' if several_per_folder else 'clip'}, same values); "
                        "delete one of the two rows",
                    )
                )
        else:
            for k in group:
                rest = ", ".join(str(o.source_row) for o in group if o is not k)
                problems.append(
                    Problem(
                        k.source_row,
                        subject,
                        clip,
                        "conflicting duplicate rows",
                        f"the same {'sample (clip and onset)' if several_per_folder else 'clip'} is also coded on row {rest} "
                        "with different values; "
                        "keep the correct row and delete the other",
                    )
                )
    return problems
