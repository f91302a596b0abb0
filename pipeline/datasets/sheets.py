"""Reading spreadsheets (.xlsx, or a CSV export) into tables of cells, shared by the coding sheet
and the overrides file: header detection, loose column matching, cell parsing, row problems.

Column names are matched ignoring case, spaces and '_', with the aliases that real copies use
(`Onset`, `OnsetF`, `Onset Frame`, `onset_frame`; `Label`, `Estimated Emotion`; `Video`,
`Participant`, ...), so other versions and exports of a sheet read the same.

Workbooks are read with the values a spreadsheet program saved for formula cells (SMIC's
`=D2+M2-1`); a formula saved without its value (written by a program that does not compute
formulas) is read as a `Formula`, which the coding sheet reports with its row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.layouts import normalize_subject
from pipeline.errors import MerError

HEADER_SEARCH_ROWS = 30  # the header must be within the first rows of a sheet

# field -> accepted column names after `_column_key` (the first one present wins).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "subject": ("subject", "sub", "participant", "subjects"),
    "clip": ("filename", "clip", "clipname", "file", "video", "folder"),
    "onset": ("onsetframe", "onset", "onsetf", "onsetframes", "onsetframenumber"),
    "apex": ("apexframe", "apex", "apexf", "apexframes", "apexframenumber"),
    "offset": ("offsetframe", "offset", "offsetf", "offsetframes", "offsetframenumber"),
    "emotion": ("estimatedemotion", "emotion", "estimatedemotions", "emotions", "label", "emotionlabel", "labels"),
    "action_units": ("actionunits", "actionunit", "aus", "au"),
}
REQUIRED_FIELDS = ("subject", "clip", "onset", "apex", "offset", "emotion")  # the formats' required_fields
# Apex cells meaning "not coded" (CASME II writes '/', SAMM -1): the apex is imputed instead.
MISSING_APEX = {"", "/", "-", "\\", "?", "n/a", "na", "none", "-1"}


def _column_key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower()) if name is not None else ""


def is_blank(value: Any) -> bool:
    """True for an empty cell or one holding only spaces."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def header_columns(row: Sequence[Any]) -> dict[str, int]:
    """field -> column index of a candidate header row."""
    keys = [_column_key(v) for v in row]
    columns = {}
    for name, aliases in FIELD_ALIASES.items():
        for alias in aliases:
            if alias in keys:
                columns[name] = keys.index(alias)
                break
    return columns


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one spreadsheet row (or the whole sheet when source_row is None)."""

    source_row: int | None
    subject: str | None
    clip: str | None
    reason: str  # short category, used to count dropped rows
    detail: str  # what is wrong and what to do
    where: str | None = None  # another file's row (an overrides file); None: the coding sheet

    def line(self) -> str:
        where = self.where or (f"row {self.source_row}" if self.source_row is not None else "sheet")
        who = f"subject {self.subject or '?'}, clip {self.clip or '?'}"
        return f"{where} ({who}): {self.detail}"


class Formula(str):
    """A formula cell whose computed value the workbook does not hold (e.g. '=D2+M2-1')."""


def _load_workbook_tables(path: Path, data_only: bool) -> list[tuple[str, list[tuple]]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=data_only)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise MerError(
            f"cannot read {path} as an .xlsx workbook ({exc}); open it in a spreadsheet program "
            "and save it as .xlsx, or export it as .csv"
        ) from exc
    tables = []
    try:
        for sheet in workbook.worksheets:
            if hasattr(sheet, "reset_dimensions"):
                sheet.reset_dimensions()  # stored dimensions are sometimes wrong; read every row
            tables.append((sheet.title, [tuple(row) for row in sheet.iter_rows(min_row=1, values_only=True)]))
    finally:
        workbook.close()
    return tables


def _xlsx_tables(path: Path) -> list[tuple[str | None, list[tuple]]]:
    """Every sheet's cells, formula cells as the value the workbook saved for them.

    A formula saved without a value reads as None with data_only; the formulas are read too,
    so such a cell becomes a `Formula` instead of looking empty.
    """
    values = _load_workbook_tables(path, data_only=True)
    if not any(cell is None for _, rows in values for row in rows for cell in row):
        return values
    formulas = dict(_load_workbook_tables(path, data_only=False))
    tables = []
    for title, rows in values:
        source = formulas.get(title, [])
        patched = []
        for index, row in enumerate(rows):
            other = source[index] if index < len(source) else ()
            if any(cell is None for cell in row) and any(isinstance(c, str) and c.startswith("=") for c in other):
                row = tuple(
                    Formula(other[i])
                    if cell is None and i < len(other) and isinstance(other[i], str) and other[i].startswith("=")
                    else cell
                    for i, cell in enumerate(row)
                )
            patched.append(row)
        tables.append((title, patched))
    return tables


def _csv_text(path: Path) -> str:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _csv_tables(path: Path) -> Iterator[tuple[str | None, list[tuple]]]:
    text = _csv_text(path)
    # Spreadsheet programs export with ',' or, in many locales, ';' (or tabs): try each.
    for delimiter in (",", ";", "\t"):
        yield None, [tuple(row) for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)]


def read_tables(path: Path) -> Iterable[tuple[str | None, list[tuple]]]:
    """(sheet name, rows of cells) of every sheet of a workbook, or of a CSV read with each delimiter."""
    suffix = path.suffix.lower()
    if suffix == ".xls":
        raise MerError(
            f"{path}: the legacy .xls format cannot be read; open it and save it as .xlsx, or export it as .csv"
        )
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"
    if suffix in (".xlsx", ".xlsm") or (suffix not in (".csv", ".txt", ".tsv") and is_zip):
        return _xlsx_tables(path)
    return _csv_tables(path)


def find_header(table: list[tuple], required: Sequence[str] = REQUIRED_FIELDS) -> tuple[int, dict[str, int]] | None:
    """(0-based index, columns) of the first row within the search window holding >= 3 fields."""
    for index, row in enumerate(table[:HEADER_SEARCH_ROWS]):
        columns = header_columns(row)
        if sum(f in columns for f in required) >= 3:
            return index, columns
    return None


def int_cell(value: Any) -> int | None:
    """An integer from a numeric cell or numeric text; None when it is not one."""
    if isinstance(value, (bool, Formula)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([+-]?\d+)(?:\.0*)?\s*", value)
        return int(match.group(1)) if match else None
    return None


def normalize_action_units(value: Any) -> str:
    """Canonical AU string: 12 -> '12', '4+7+L10' -> '4+7+L10', 'R12 + R15' -> 'R12+R15'."""
    if is_blank(value):
        return ""
    number = int_cell(value) if not isinstance(value, str) else None
    if number is not None:
        return str(number)
    text = str(value).strip()
    if text in ("/", "-"):
        return ""
    tokens = []
    for token in re.split(r"[+,;&]", text):
        token = " ".join(token.split())
        if not token:
            continue
        match = re.fullmatch(r"(?:au\s*)?([lrbu])?\s*(\d+)(?:\.0+)?\s*([a-e])?", token, flags=re.IGNORECASE)
        if match:
            side, number, intensity = match.groups()
            token = f"{(side or '').upper()}{int(number)}{(intensity or '').upper()}"
        tokens.append(token)
    return "+".join(tokens)


def normalize_emotion(value: Any) -> str:
    """Lower case with single spaces: ' Happiness ' -> 'happiness'."""
    return " ".join(str(value).split()).lower() if not is_blank(value) else ""


def cell_value(cells: Sequence[Any], columns: Mapping[str, int], name: str) -> Any:
    """The cell of field `name` in a row; None when the sheet lacks the column or the row is short."""
    index = columns.get(name)
    return cells[index] if index is not None and index < len(cells) else None


def row_identity(dataset: str, cells: Sequence[Any], columns: Mapping[str, int]) -> tuple[str | None, str | None]:
    """(subject, clip) of a data row, normalized; None for a part that is blank or invalid."""
    subject = clip = None
    raw_subject = cell_value(cells, columns, "subject")
    with contextlib.suppress(ValueError):
        subject = normalize_subject(dataset, raw_subject) if not is_blank(raw_subject) else None
    raw_clip = cell_value(cells, columns, "clip")
    if not is_blank(raw_clip):
        clip = str(int(raw_clip)) if isinstance(raw_clip, float) and raw_clip.is_integer() else str(raw_clip).strip()
    return subject, clip
