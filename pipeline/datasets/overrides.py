"""The overrides file: per-clip corrections of the coding sheet, kept outside it.

A CSV or .xlsx with columns subject, clip and any of onset, apex, offset; a blank cell keeps the
sheet's value. The values replace the sheet's cells before validation, so they are checked like
the sheet's own; an apex written `/` or -1 is re-imputed.

Where a folder holds several samples (`casme3`: a video with several micro-expressions), the
onset column does not set the onset: it says which sample of the folder the row corrects (the
sheet's onset), and may be left blank only for a folder with one sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.datasets.layouts import dataset_format
from pipeline.datasets.sheets import (
    HEADER_SEARCH_ROWS,
    MISSING_APEX,
    Problem,
    cell_value,
    header_columns,
    int_cell,
    is_blank,
    read_tables,
    row_identity,
)
from pipeline.errors import MerError

OVERRIDE_FIELDS = ("onset", "apex", "offset")
REIMPUTE = "/"  # an override apex written '/' or -1: forget the sheet's apex and impute it


@dataclass(frozen=True)
class Override:
    """One row of an overrides file: the frame numbers it sets (REIMPUTE for the apex)."""

    source_row: int
    subject: str
    clip: str
    values: Mapping[str, int | str]
    onset: int | None = None  # several samples per folder: the sheet's onset of the sample corrected


@dataclass
class Overrides:
    """A parsed overrides file: the usable rows and the problems of the others."""

    path: Path
    rows: list[Override] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def where(self, row: int) -> str:
        return f"{self.path.name} row {row}"


def read_overrides(path: str | Path, dataset: str) -> Overrides:
    """Parse an overrides file (.csv or .xlsx): columns subject, clip and any of onset, apex, offset.

    A blank cell keeps the coding sheet's value; an apex written '/' or -1 is re-imputed.
    Subjects are normalized like the sheet's (1 -> sub01 for CASME II). Raises MerError when
    the file is missing or has no header; row problems (text in a frame column, a row that
    changes nothing, the same clip twice) are collected with the file's row number.
    """
    path = Path(path)
    if not path.is_file():
        raise MerError(f"overrides file not found: {path} (annotate.overrides / --overrides)")
    overrides = Overrides(path)
    header = None
    for _, table in read_tables(path):
        for index, row in enumerate(table[:HEADER_SEARCH_ROWS]):
            columns = header_columns(row)
            if "subject" in columns and "clip" in columns and any(f in columns for f in OVERRIDE_FIELDS):
                header = (index, columns, table)
                break
        if header is not None:
            break
    if header is None:
        raise MerError(
            f"{path} is not an overrides file: no header row with the columns subject, clip and "
            "at least one of onset, apex, offset (names matched ignoring case, spaces and '_')"
        )
    index, columns, table = header
    selects = dataset_format(dataset).several_per_folder  # the onset column picks a sample of the folder
    seen: dict[tuple, int] = {}
    for number, cells in enumerate(table[index + 1 :], start=index + 2):
        if all(is_blank(c) for c in cells):
            continue
        subject, clip = row_identity(dataset, cells, columns)

        def problem(reason: str, detail: str, subject=subject, clip=clip, number=number) -> None:
            overrides.problems.append(Problem(None, subject, clip, reason, detail, overrides.where(number)))

        n_before = len(overrides.problems)
        if subject is None:
            problem("override", f"subject {cell_value(cells, columns, 'subject')!r} is missing or not a subject id")
        if clip is None:
            problem("override", "clip is empty; write the clip folder name")
        values: dict[str, int | str] = {}
        onset = None
        for name in OVERRIDE_FIELDS:
            value = cell_value(cells, columns, name)
            if is_blank(value):
                continue
            if name == "onset" and selects:
                onset = int_cell(value)
                if onset is None:
                    problem(
                        "override", f"onset holds {value!r}, not a frame number; write the sheet's onset of the sample"
                    )
                continue
            number_value = int_cell(value)
            if name == "apex" and (
                number_value == -1 or (number_value is None and str(value).strip().lower() in MISSING_APEX)
            ):
                values[name] = REIMPUTE
            elif number_value is None:
                problem(
                    "override",
                    f"{name} holds {value!r}, not a frame number; write the integer frame number or leave it blank",
                )
            elif number_value < 0:
                problem("override", f"{name} is negative ({number_value})")
            else:
                values[name] = number_value
        if not values and len(overrides.problems) == n_before:
            settable = "apex, offset (onset picks the sample)" if selects else "onset, apex, offset"
            problem("override", f"sets none of {settable}; fill one in or delete the row")
        if subject is not None and clip is not None:
            key = (subject, clip, onset) if selects else (subject, clip)
            if key in seen:
                what = "sample" if selects else "clip"
                problem("override", f"the {what} is also overridden on row {seen[key]}; keep one row per {what}")
            else:
                seen[key] = number
        if len(overrides.problems) == n_before:
            overrides.rows.append(Override(number, subject, clip, values, onset))
    return overrides


def apply_override(cells: Sequence[Any], columns: Mapping[str, int], override: Override) -> list[Any]:
    """A coding-sheet row with the override's values in place of the sheet's cells."""
    cells = list(cells) + [None] * max(0, max(columns.values()) + 1 - len(cells))
    for name, value in override.values.items():
        cells[columns[name]] = value
    return cells
