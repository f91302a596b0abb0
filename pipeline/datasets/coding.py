"""The coding sheet: one parsed row per clip, and every problem of every row.

- CASME II `CASME2-coding-*.xlsx` (or a CSV export): header on row 1, columns Subject, Filename,
  OnsetFrame, ApexFrame, OffsetFrame, Action Units, Estimated Emotion; a missing apex written '/'.
- SAMM `SAMM_Micro_FACS_Codes_v2.xlsx`: 13 preamble rows, header on row 14, columns Subject,
  Filename, Onset Frame, Apex Frame, Offset Frame, Action Units, Estimated Emotion (and others);
  subject text '006' or the number 6; a missing apex written -1.
- `generic`: a CSV (or .xlsx) with the columns subject, clip, onset, apex, offset, emotion and
  optionally action_units; subjects are kept as written.

Every problem is reported with its spreadsheet row number as Excel shows it.
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
    REQUIRED_FIELDS,
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


@dataclass(frozen=True)
class RowKey:
    """What identifies a data row, also when it could not be parsed in full."""

    source_row: int
    subject: str | None
    clip: str | None
    emotion: str
    values: tuple | None  # (onset, apex, offset, emotion) when the row parsed


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


def _expected_columns(dataset: str) -> str:
    titles = dataset_format(dataset).columns
    return ", ".join(titles[f] for f in ("subject", "clip", "onset", "apex", "offset", "action_units", "emotion"))


def _parse_row(
    dataset: str, number: int, cells: Sequence[Any], columns: Mapping[str, int], titles: Mapping[str, str]
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
    for name in ("onset", "apex", "offset"):
        value = cell(name)
        title = titles[name]
        if name == "apex" and (is_blank(value) or str(value).strip().lower() in MISSING_APEX or int_cell(value) == -1):
            frames[name] = None  # imputed later from the frames
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
    if onset is not None and offset is not None:
        if onset > offset:
            problem(
                "frame order",
                f"{titles['onset']} {onset} is after {titles['offset']} {offset}; correct the frame numbers",
            )
        elif apex is not None and not onset <= apex <= offset:
            problem(
                "frame order",
                f"{titles['apex']} {apex} is outside {titles['onset']}..{titles['offset']} "
                f"({onset}..{offset}); correct the frame numbers",
            )
    if problems:
        return None, problems, RowKey(number, subject, clip, emotion, None)
    row = CodingRow(number, subject, clip, onset, apex, offset, emotion, normalize_action_units(cell("action_units")))
    return row, [], RowKey(number, subject, clip, emotion, (onset, apex, offset, emotion))


def read_coding(path: str | Path, dataset: str, overrides: Overrides | None = None) -> CodingSheet:
    """Parse a coding sheet (.xlsx or .csv) into rows and per-row problems.

    Raises MerError when the file is missing, unreadable, has no header row within its first
    rows, or lacks a required column; row-level problems (text in a frame column, onset after
    offset, ...) are collected in `problems`, one per problem, with the spreadsheet row.
    Duplicates and folders are checked by `annotate_samples`. With `overrides`, their values
    replace the sheet's cells before the rows are parsed, and an override naming a clip that
    no row codes is a problem reported with the overrides file's row.
    """
    fmt = dataset_format(dataset)
    path = Path(path)
    if not path.is_file():
        raise MerError(f"coding spreadsheet not found: {path} (set the dataset's coding file in params.yaml)")
    best_partial: tuple[str | None, int, dict[str, int]] | None = None
    chosen = None
    for sheet_name, table in read_tables(path):
        found = find_header(table)
        if found is None:
            continue
        index, columns = found
        if all(f in columns for f in REQUIRED_FIELDS):
            chosen = (sheet_name, index, columns, table)
            break
        if best_partial is None:
            best_partial = (sheet_name, index, columns, table)
    if chosen is None and best_partial is not None:
        sheet_name, index, columns, table = best_partial
        missing = [fmt.columns[f] for f in REQUIRED_FIELDS if f not in columns]
        present = ", ".join(str(v) for v in table[index] if not is_blank(v))
        where = f"sheet '{sheet_name}' " if sheet_name else ""
        raise MerError(
            f"{path}: the header on {where}row {index + 1} lacks the column(s) {', '.join(missing)} "
            f"(it has: {present}); add them, expected columns: {_expected_columns(dataset)}"
        )
    if chosen is None:
        raise MerError(
            f"{path} does not look like a {dataset} coding sheet: no header row within its first "
            f"{HEADER_SEARCH_ROWS} rows holds the columns {_expected_columns(dataset)} "
            "(names are matched ignoring case, spaces and '_')"
        )
    sheet_name, index, columns, table = chosen
    sheet = CodingSheet(path, dataset, sheet_name, index + 1)
    header = table[index]
    # Messages name the columns as this sheet spells them ('OnsetFrame', 'Onset Frame', ...).
    titles = {f: str(header[i]).strip() for f, i in columns.items()}
    by_clip = {(o.subject, o.clip): o for o in overrides.rows} if overrides is not None else {}
    used: set[tuple[str, str]] = set()
    for number, cells in enumerate(table[index + 1 :], start=index + 2):
        key_cells = [
            cells[columns[f]] if columns[f] < len(cells) else None for f in ("subject", "clip", "onset", "offset")
        ]
        if all(is_blank(v) for v in key_cells):
            continue  # blank rows and notes below the table
        sheet.n_rows += 1
        override = by_clip.get(row_identity(dataset, cells, columns)) if by_clip else None
        if override is not None:
            used.add((override.subject, override.clip))
            cells = apply_override(cells, columns, override)
            sheet.overridden[number] = (
                override,
                f"{', '.join(override.values)} from {overrides.where(override.source_row)}",
            )
        row, problems, key = _parse_row(dataset, number, cells, columns, titles)
        if override is not None and row is not None:
            row = replace(row, overridden=tuple(override.values))
        sheet.keys.append(key)
        if row is not None:
            sheet.rows.append(row)
        sheet.problems.extend(problems)
    if overrides is not None:
        sheet.override_problems = list(overrides.problems)
        known = {(k.subject, k.clip) for k in sheet.keys}
        for o in overrides.rows:
            if (o.subject, o.clip) not in used:
                hints = sorted(
                    f"{s}/{c}" for s, c in known if c is not None and s is not None and c.lower() == o.clip.lower()
                )
                hint = f" (the sheet has {', '.join(hints[:3])})" if hints else ""
                sheet.override_problems.append(
                    Problem(
                        None,
                        o.subject,
                        o.clip,
                        "override",
                        f"no row of {path.name} codes subject {o.subject}, clip {o.clip}{hint}; fix the subject or clip of the override",
                        overrides.where(o.source_row),
                    )
                )
        sheet.override_problems.sort(key=lambda p: int(p.where.rsplit(" ", 1)[1]))  # by the overrides file's row
    return sheet


def duplicate_problems(keys: Sequence[RowKey]) -> list[Problem]:
    """Rows coding the same (subject, clip): a repeat with the same values flags the later rows;
    rows that disagree (or could not all be parsed) are all flagged, as the right one is unknown."""
    by_clip: dict[tuple[str, str], list[RowKey]] = defaultdict(list)
    for key in keys:
        if key.subject is not None and key.clip is not None:
            by_clip[(key.subject, key.clip)].append(key)
    problems = []
    for (subject, clip), group in by_clip.items():
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
                        f"repeats row {first.source_row} (same clip, same values); delete one of the two rows",
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
                        f"the same clip is also coded on row {rest} with different values; "
                        "keep the correct row and delete the other",
                    )
                )
    return problems
