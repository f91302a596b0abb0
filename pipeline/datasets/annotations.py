"""CASME II and SAMM coding spreadsheets -> one normalized row per clip (the samples table).

What is read (DESIGN.md section 4):

- CASME II `CASME2-coding-*.xlsx` (or a CSV export): header on row 1, columns Subject, Filename,
  OnsetFrame, ApexFrame, OffsetFrame, Action Units, Estimated Emotion; subject an integer; a
  missing apex written '/'.
- SAMM `SAMM_Micro_FACS_Codes_v2.xlsx`: 13 preamble rows, header on row 14, columns Subject,
  Filename, Onset Frame, Apex Frame, Offset Frame, Action Units, Estimated Emotion (and others);
  subject text '006' or the number 6; a missing apex written -1.

The header row is found by content and column names are matched loosely (case, spaces and '_'
ignored), so other versions and exports of the sheets read the same. Rows are matched to clip
folders by (subject, clip), never by position, and every problem is reported with its
spreadsheet row number as Excel shows it. A missing apex is imputed from the frames on disk as
the frame of peak motion relative to the onset (`estimate_apex`) and flagged `imputed`; it is
never silently the midpoint.

- `generic` (MMEW, CAS(ME)^3, SMIC, a lab's own data): a CSV (or .xlsx) with the columns
  subject, clip, onset, apex, offset, emotion and optionally action_units; a blank apex is
  imputed; subjects are kept as written; clip folders are found by a folder pattern relative
  to the root (`{subject}/{clip}` by default, see `pipeline.datasets.layouts`).

Class presets map emotions to the labels a study uses, in a fixed label order:
`casme2-5`, `samm-5`, `megc-3` (MEGC 2019 composite classes), or a user mapping. A generic
sheet without a class spec keeps every emotion as its own class (`emotions`, sorted).

An overrides file (`read_overrides`: CSV or .xlsx with columns subject, clip, onset, apex,
offset; a blank cell keeps the sheet's value) corrects the sheet without editing it: the
values replace the sheet's cells before validation, so they are checked like the sheet's
own; an apex set by an override gets apex_source `override`; an apex written `/` or -1 in the
overrides file is re-imputed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.layouts import DATASETS, DEFAULT_FOLDER_PATTERN, ClipFolder, find_clip_folders, normalize_subject
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import SAMPLE_COLUMNS
from pipeline.motion import estimate_apex, load_motion_frames

APEX_SOURCES = ("annotated", "imputed", "override")
HEADER_SEARCH_ROWS = 30  # the header must be within the first rows of a sheet

# --------------------------------------------------------------------------------------------
# Class presets
# --------------------------------------------------------------------------------------------

_SAME_FOR_BOTH = object()
# preset -> dataset (or _SAME_FOR_BOTH) -> ((label, (emotions...)), ...) in label order.
_PRESETS: dict[str, dict[object, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "casme2-5": {
        _SAME_FOR_BOTH: (
            ("happiness", ("happiness",)),
            ("disgust", ("disgust",)),
            ("repression", ("repression",)),
            ("surprise", ("surprise",)),
            ("others", ("others",)),
        )
    },
    "samm-5": {
        _SAME_FOR_BOTH: (
            ("anger", ("anger",)),
            ("contempt", ("contempt",)),
            ("happiness", ("happiness",)),
            ("surprise", ("surprise",)),
            ("other", ("others",)),
        )
    },
    # MEGC 2019 composite classes: which emotions count as negative differs per dataset.
    "megc-3": {
        "casme2": (
            ("positive", ("happiness",)),
            ("negative", ("disgust", "repression")),
            ("surprise", ("surprise",)),
        ),
        "samm": (
            ("positive", ("happiness",)),
            ("negative", ("anger", "contempt", "disgust", "fear", "sadness")),
            ("surprise", ("surprise",)),
        ),
        # Other datasets (SMIC codes positive / negative / surprise directly; MMEW and CAS(ME)^3
        # code basic emotions): every negative emotion of both sheets counts as negative.
        "generic": (
            ("positive", ("happiness", "happy", "positive")),
            ("negative", ("anger", "angry", "contempt", "disgust", "fear", "sadness", "sad", "repression", "negative")),
            ("surprise", ("surprise", "surprised")),
        ),
    },
}
PRESETS = tuple(_PRESETS)
# No default for generic: without a class spec every emotion of the sheet is its own class.
DEFAULT_PRESET = {"casme2": "casme2-5", "samm": "samm-5"}
EMOTIONS_SCHEME = "emotions"


@dataclass(frozen=True)
class ClassScheme:
    """Which emotions are kept and under which label; `labels` is the label order."""

    name: str
    labels: tuple[str, ...]
    mapping: Mapping[str, str]  # emotion key (see emotion_key) -> label

    def label_of(self, emotion: str) -> str | None:
        return self.mapping.get(emotion_key(emotion))


def emotion_key(emotion: str) -> str:
    """The emotion as used for class lookup: lower case, single spaces, 'other' == 'others'."""
    key = " ".join(str(emotion).split()).lower()
    return "others" if key == "other" else key


def _scheme_from_mapping(name: str, mapping: Mapping[Any, Any]) -> ClassScheme:
    """A user mapping, either {emotion: class} or {class: [emotions]}; label order = first seen."""
    if not mapping:
        raise ValueError("the class mapping is empty")
    labels: list[str] = []
    table: dict[str, str] = {}

    def add(emotion: Any, label: Any) -> None:
        if label is None or str(label).strip() == "":
            return  # an explicit null drops the emotion
        key, label = emotion_key(emotion), str(label).strip()
        if not key:
            raise ValueError(f"empty emotion name in the class mapping (class {label!r})")
        if key in table and table[key] != label:
            raise ValueError(f"emotion {emotion!r} is mapped to two classes: {table[key]!r} and {label!r}")
        table[key] = label
        if label not in labels:
            labels.append(label)

    for k, v in mapping.items():
        if isinstance(v, (list, tuple)):
            for emotion in v:
                add(emotion, k)
        else:
            add(k, v)
    if not labels:
        raise ValueError("the class mapping keeps no emotion")
    return ClassScheme(name, tuple(labels), table)


def class_scheme(spec: str | Mapping[str, Any], dataset: str) -> ClassScheme:
    """Resolve a class spec for a dataset.

    `spec` is a preset name (`casme2-5`, `samm-5`, `megc-3`), a mapping {emotion: class} or
    {class: [emotions]}, or the same inline as a string: 'happiness=positive,disgust=negative'.
    The label order of a mapping is the order in which its classes first appear.
    """
    if dataset not in DATASETS:
        raise MerError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    if isinstance(spec, Mapping):
        try:
            return _scheme_from_mapping("custom", spec)
        except ValueError as exc:
            raise MerError(f"invalid class mapping: {exc}") from exc
    text = str(spec).strip()
    if "=" in text or ":" in text:
        try:
            mapping = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                pieces = re.split(r"\s*[=:]\s*", part, maxsplit=1)
                if len(pieces) != 2:
                    raise ValueError(f"{part!r} is not 'emotion=class'")
                mapping[pieces[0]] = pieces[1]
            return _scheme_from_mapping(text, mapping)
        except ValueError as exc:
            raise MerError(f"invalid class spec {text!r}: {exc}; write it as 'emotion=class,emotion=class'") from exc
    if text not in _PRESETS:
        raise MerError(
            f"unknown class preset {text!r}; expected one of {', '.join(PRESETS)} "
            "or a mapping such as 'happiness=positive,disgust=negative,surprise=surprise'"
        )
    table = _PRESETS[text]
    groups = table.get(dataset, table.get(_SAME_FOR_BOTH, table.get("generic")))
    return ClassScheme(
        text, tuple(label for label, _ in groups), {e: label for label, emotions in groups for e in emotions}
    )


def label_names_for(spec: str | Mapping[str, Any], dataset: str = "casme2") -> list[str]:
    """The label order of a class preset or mapping: index i of this list is label i.

    Any dataset name is accepted (a composite may name its parts freely, e.g. `mmew`); names
    other than casme2 / samm resolve like `generic`. Every preset has the same label order
    for every dataset.
    """
    return list(class_scheme(spec, dataset if dataset in DATASETS else "generic").labels)


def emotions_scheme(emotions: Iterable[str]) -> ClassScheme:
    """Every emotion its own class, labels sorted: the default for a generic sheet."""
    keys = sorted({emotion_key(e) for e in emotions if emotion_key(e)})
    return ClassScheme(EMOTIONS_SCHEME, tuple(keys), {k: k for k in keys})


# --------------------------------------------------------------------------------------------
# Reading the coding sheet
# --------------------------------------------------------------------------------------------

# field -> accepted column names after `_column_key` (the first one present wins).
_FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "subject": ("subject", "sub", "participant", "subjects"),
    "clip": ("filename", "clip", "clipname", "file", "video", "folder"),
    "onset": ("onsetframe", "onset", "onsetframes"),
    "apex": ("apexframe", "apex", "apexframes"),
    "offset": ("offsetframe", "offset", "offsetframes"),
    "emotion": ("estimatedemotion", "emotion", "estimatedemotions", "emotions"),
    "action_units": ("actionunits", "actionunit", "aus", "au"),
}
REQUIRED_FIELDS = ("subject", "clip", "onset", "apex", "offset", "emotion")
# Column names for messages about columns the sheet lacks, as each dataset's sheet spells them.
_FIELD_TITLES = {
    "subject": "Subject",
    "clip": "Filename",
    "onset": "OnsetFrame",
    "apex": "ApexFrame",
    "offset": "OffsetFrame",
    "emotion": "Estimated Emotion",
    "action_units": "Action Units",
}
_SAMM_TITLES = {**_FIELD_TITLES, "onset": "Onset Frame", "apex": "Apex Frame", "offset": "Offset Frame"}
_GENERIC_TITLES = {f: f for f in _FIELD_TITLES}


def _titles(dataset: str) -> dict[str, str]:
    return {"samm": _SAMM_TITLES, "generic": _GENERIC_TITLES}.get(dataset, _FIELD_TITLES)


_MISSING_APEX = {"", "/", "-", "\\", "?", "n/a", "na", "none", "-1"}


def _column_key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower()) if name is not None else ""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _header_columns(row: Sequence[Any]) -> dict[str, int]:
    """field -> column index of a candidate header row."""
    keys = [_column_key(v) for v in row]
    columns = {}
    for name, aliases in _FIELD_ALIASES.items():
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
    titles = _titles(dataset)
    return ", ".join(titles[f] for f in ("subject", "clip", "onset", "apex", "offset", "action_units", "emotion"))


def _xlsx_tables(path: Path) -> list[tuple[str | None, list[tuple]]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
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


def _tables(path: Path) -> Iterable[tuple[str | None, list[tuple]]]:
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


def _find_header(table: list[tuple]) -> tuple[int, dict[str, int]] | None:
    """(0-based index, columns) of the first row within the search window holding >= 3 fields."""
    for index, row in enumerate(table[:HEADER_SEARCH_ROWS]):
        columns = _header_columns(row)
        if sum(f in columns for f in REQUIRED_FIELDS) >= 3:
            return index, columns
    return None


def _int_cell(value: Any) -> int | None:
    """An integer from a numeric cell or numeric text; None when it is not one."""
    if isinstance(value, bool):
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
    if _blank(value):
        return ""
    number = _int_cell(value) if not isinstance(value, str) else None
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
    return " ".join(str(value).split()).lower() if not _blank(value) else ""


def _parse_row(
    dataset: str, number: int, cells: Sequence[Any], columns: Mapping[str, int], titles: Mapping[str, str]
) -> tuple[CodingRow | None, list[Problem], RowKey]:
    def cell(name: str) -> Any:
        index = columns.get(name)
        return cells[index] if index is not None and index < len(cells) else None

    problems: list[Problem] = []
    raw_subject = cell("subject")
    subject, clip = _row_identity(dataset, cells, columns)

    def problem(reason: str, detail: str) -> None:
        problems.append(Problem(number, subject, clip, reason, detail))

    if subject is None:
        example = {"casme2": "an integer such as 1 (folder sub01)", "samm": "a number such as 006 or 6"}.get(
            dataset, "the subject as its folder is named (without '/')"
        )
        if _blank(raw_subject):
            problem("missing subject", f"no Subject; fill it in with {example}")
        else:
            problem("bad subject", f"{titles['subject']} {raw_subject!r} is not a subject id; write {example}")
    if clip is None:
        problem("missing filename", "no Filename; fill in the clip folder name (e.g. EP02_01f or 006_1_2)")

    frames: dict[str, int | None] = {}
    for name in ("onset", "apex", "offset"):
        value = cell(name)
        title = titles[name]
        if name == "apex" and (_blank(value) or str(value).strip().lower() in _MISSING_APEX or _int_cell(value) == -1):
            frames[name] = None  # imputed later from the frames
            continue
        if _blank(value):
            problem("missing frame number", f"{title} is empty; fill in the frame number")
            frames[name] = None
            continue
        number_value = _int_cell(value)
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


def _cell(cells: Sequence[Any], columns: Mapping[str, int], name: str) -> Any:
    index = columns.get(name)
    return cells[index] if index is not None and index < len(cells) else None


def _row_identity(dataset: str, cells: Sequence[Any], columns: Mapping[str, int]) -> tuple[str | None, str | None]:
    """(subject, clip) of a data row, normalized; None for a part that is blank or invalid."""
    subject = clip = None
    raw_subject = _cell(cells, columns, "subject")
    with contextlib.suppress(ValueError):
        subject = normalize_subject(dataset, raw_subject) if not _blank(raw_subject) else None
    raw_clip = _cell(cells, columns, "clip")
    if not _blank(raw_clip):
        clip = str(int(raw_clip)) if isinstance(raw_clip, float) and raw_clip.is_integer() else str(raw_clip).strip()
    return subject, clip


# --------------------------------------------------------------------------------------------
# Per-clip overrides
# --------------------------------------------------------------------------------------------

OVERRIDE_FIELDS = ("onset", "apex", "offset")
REIMPUTE = "/"  # an override apex written '/' or -1: forget the sheet's apex and impute it


@dataclass(frozen=True)
class Override:
    """One row of an overrides file: the frame numbers it sets (REIMPUTE for the apex)."""

    source_row: int
    subject: str
    clip: str
    values: Mapping[str, int | str]


@dataclass
class Overrides:
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
    for _, table in _tables(path):
        for index, row in enumerate(table[:HEADER_SEARCH_ROWS]):
            columns = _header_columns(row)
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
    seen: dict[tuple[str, str], int] = {}
    for number, cells in enumerate(table[index + 1 :], start=index + 2):
        if all(_blank(c) for c in cells):
            continue
        subject, clip = _row_identity(dataset, cells, columns)

        def problem(reason: str, detail: str, subject=subject, clip=clip, number=number) -> None:
            overrides.problems.append(Problem(None, subject, clip, reason, detail, overrides.where(number)))

        n_before = len(overrides.problems)
        if subject is None:
            problem("override", f"subject {_cell(cells, columns, 'subject')!r} is missing or not a subject id")
        if clip is None:
            problem("override", "clip is empty; write the clip folder name")
        values: dict[str, int | str] = {}
        for name in OVERRIDE_FIELDS:
            value = _cell(cells, columns, name)
            if _blank(value):
                continue
            number_value = _int_cell(value)
            if name == "apex" and (
                number_value == -1 or (number_value is None and str(value).strip().lower() in _MISSING_APEX)
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
            problem("override", "sets none of onset, apex, offset; fill one in or delete the row")
        if subject is not None and clip is not None:
            if (subject, clip) in seen:
                problem(
                    "override", f"the clip is also overridden on row {seen[(subject, clip)]}; keep one row per clip"
                )
            else:
                seen[(subject, clip)] = number
        if len(overrides.problems) == n_before:
            overrides.rows.append(Override(number, subject, clip, values))
    return overrides


def _apply_override(cells: Sequence[Any], columns: Mapping[str, int], override: Override) -> list[Any]:
    cells = list(cells) + [None] * max(0, max(columns.values()) + 1 - len(cells))
    for name, value in override.values.items():
        cells[columns[name]] = value
    return cells


def read_coding(path: str | Path, dataset: str, overrides: Overrides | None = None) -> CodingSheet:
    """Parse a coding sheet (.xlsx or .csv) into rows and per-row problems.

    Raises MerError when the file is missing, unreadable, has no header row within its first
    rows, or lacks a required column; row-level problems (text in a frame column, onset after
    offset, ...) are collected in `problems`, one per problem, with the spreadsheet row.
    Duplicates and folders are checked by `annotate_samples`. With `overrides`, their values
    replace the sheet's cells before the rows are parsed, and an override naming a clip that
    no row codes is a problem reported with the overrides file's row.
    """
    if dataset not in DATASETS:
        raise MerError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    path = Path(path)
    if not path.is_file():
        raise MerError(f"coding spreadsheet not found: {path} (set the dataset's coding file in params.yaml)")
    best_partial: tuple[str | None, int, dict[str, int]] | None = None
    chosen = None
    for sheet_name, table in _tables(path):
        found = _find_header(table)
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
        missing = [_titles(dataset)[f] for f in REQUIRED_FIELDS if f not in columns]
        present = ", ".join(str(v) for v in table[index] if not _blank(v))
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
        if all(_blank(v) for v in key_cells):
            continue  # blank rows and notes below the table
        sheet.n_rows += 1
        override = by_clip.get(_row_identity(dataset, cells, columns)) if by_clip else None
        if override is not None:
            used.add((override.subject, override.clip))
            cells = _apply_override(cells, columns, override)
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


# --------------------------------------------------------------------------------------------
# Apex imputation
# --------------------------------------------------------------------------------------------


def impute_apex(folder: ClipFolder, onset: int, offset: int) -> int:
    """The apex frame number of a clip from its frames on disk (peak motion relative to onset)."""
    paths = [path for number, path in folder.frames if onset <= number <= offset]
    numbers = [number for number, _ in folder.frames if onset <= number <= offset]
    return numbers[estimate_apex(load_motion_frames(paths), 0)]


# --------------------------------------------------------------------------------------------
# Building the samples table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    dataset: str
    subject: str
    clip: str
    onset: int
    apex: int | None
    offset: int
    apex_source: str  # annotated | imputed | override ('missing' only when folders were not checked)
    emotion: str
    label: str
    action_units: str
    source_row: int

    @property
    def n_frames(self) -> int:
        return self.offset - self.onset + 1

    def as_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in SAMPLE_COLUMNS}
        if row["apex"] is None:
            row["apex"] = ""
        return row


@dataclass(frozen=True)
class DroppedRow:
    source_row: int
    subject: str | None
    clip: str | None
    emotion: str
    reason: str
    detail: str

    def as_row(self) -> dict[str, Any]:
        return {
            "source_row": self.source_row,
            "subject": self.subject or "",
            "clip": self.clip or "",
            "emotion": self.emotion,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class Annotation:
    """The result of annotate_samples: kept samples, dropped rows and what went wrong."""

    dataset: str
    coding: Path
    scheme: ClassScheme
    header_row: int
    n_rows: int
    samples: list[Sample]
    dropped: list[DroppedRow]
    problems: list[Problem]
    folders_checked: bool
    overrides: Path | None = None  # the overrides file applied, if any
    n_overridden: int = 0  # kept samples with values from the overrides file

    @property
    def n_imputed(self) -> int:
        return sum(s.apex_source == "imputed" for s in self.samples)


def _ranges(numbers: Iterable[int]) -> str:
    """[1,2,3,7,9,10] -> '1-3, 7, 9-10'."""
    numbers = sorted(numbers)
    parts: list[str] = []
    start = prev = None
    for n in numbers + [None]:
        if start is not None and (n is None or n != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    return ", ".join(parts)


def _compact_ranges(numbers: Sequence[int], limit: int = 6) -> str:
    text = _ranges(numbers)
    parts = text.split(", ")
    return text if len(parts) <= limit else ", ".join(parts[:limit]) + f", ... ({len(numbers)} frames)"


def _duplicate_problems(keys: Sequence[RowKey]) -> list[Problem]:
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


def _folder_problem(
    row: CodingRow,
    clips: Mapping[tuple[str, str], ClipFolder],
    root: Path,
    dataset: str = "casme2",
    pattern: str | None = None,
) -> Problem | None:
    folder = clips.get((row.subject, row.clip))
    if folder is None:
        hints = [f"{s}/{c}" for (s, c) in clips if c.lower() == row.clip.lower()]
        hint = f" (found {', '.join(sorted(hints)[:3])}: is Subject or Filename wrong?)" if hints else ""
        name = f"{row.subject}/{row.clip}"
        if dataset == "generic":
            name = (pattern or DEFAULT_FOLDER_PATTERN).replace("{subject}", row.subject).replace("{clip}", row.clip)
        return Problem(
            row.source_row,
            row.subject,
            row.clip,
            "clip folder missing",
            f"no clip folder {name} under {root}{hint}; restore the folder or fix the row",
        )
    present = set(folder.frame_numbers)
    missing = [n for n in range(row.onset, row.offset + 1) if n not in present]
    if missing:
        held = _compact_ranges(folder.frame_numbers) if present else "no frames"
        span = "onset..offset" if dataset == "generic" else "OnsetFrame..OffsetFrame"
        advice = "correct the frame numbers or restore the frames"
        if dataset == "generic" and not present:
            inner = sorted(p.name for p in folder.path.iterdir() if p.is_dir())
            if inner:
                current = pattern or DEFAULT_FOLDER_PATTERN
                advice = (
                    f"it holds folder(s) {', '.join(inner[:3])}: if the frames are there, set the folder pattern "
                    f"(--folder-pattern / annotate.folder_pattern), e.g. {current}/{inner[0]}"
                )
        return Problem(
            row.source_row,
            row.subject,
            row.clip,
            "frames missing",
            f"folder {folder.path} lacks frame(s) {_compact_ranges(missing)} of {span} "
            f"{row.onset}..{row.offset} (it holds {held}); {advice}",
        )
    return None


def annotate_samples(
    dataset: str,
    coding: str | Path,
    root: str | Path | None,
    classes: str | Mapping[str, Any] | None = None,
    on_problem: str = "fail",
    overrides: str | Path | None = None,
    folder_pattern: str | None = None,
) -> Annotation:
    """Read a coding sheet, validate it against the clip folders and map emotions to classes.

    With `root=None` the folders are not checked and missing apexes stay missing
    (apex_source 'missing'); the stage always passes the root. Rows whose emotion the class
    scheme does not keep are dropped (reason 'not in class preset'), not validated against
    folders. `on_problem='fail'` raises InputProblems listing every problem (spreadsheet
    row, subject, clip, what to do); 'drop' drops the rows concerned and reports them in
    `dropped`. `overrides` is an overrides file (see `read_overrides`); its own problems (an
    unknown clip, text in a frame column) always stop the run, with its row numbers.
    `folder_pattern` locates generic clip folders (default `{subject}/{clip}`). Without
    `classes`, CASME II and SAMM use their 5-class presets and a generic sheet keeps every
    emotion as its own class.
    """
    if on_problem not in ("fail", "drop"):
        raise MerError(f"on_problem must be 'fail' or 'drop', got {on_problem!r}")
    if dataset not in DATASETS:
        raise MerError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    spec = classes if classes is not None else DEFAULT_PRESET.get(dataset)
    scheme = class_scheme(spec, dataset) if spec is not None else None
    patch = read_overrides(overrides, dataset) if overrides is not None else None
    sheet = read_coding(coding, dataset, patch)
    if scheme is None:
        scheme = emotions_scheme(k.emotion for k in sheet.keys)
    problems = list(sheet.problems)
    problems += _duplicate_problems(sheet.keys)
    bad_rows = {p.source_row for p in problems}
    if sheet.override_problems and on_problem == "drop":
        raise InputProblems(
            f"{patch.path}: {len({p.where for p in sheet.override_problems})} override rows have problems; nothing was "
            "written. Overrides are never dropped: fix or delete the rows below",
            [p.line() for p in sheet.override_problems],
        )

    clips = None
    if root is not None:
        clips = (
            find_clip_folders(dataset, root, folder_pattern)
            if dataset == "generic"
            else find_clip_folders(dataset, root)
        )
    excluded: list[DroppedRow] = []
    candidates: list[tuple[CodingRow, str]] = []
    for row in sheet.rows:
        if row.source_row in bad_rows:
            continue
        label = scheme.label_of(row.emotion)
        if label is None:
            excluded.append(
                DroppedRow(
                    row.source_row,
                    row.subject,
                    row.clip,
                    row.emotion,
                    "not in class preset",
                    f"emotion '{row.emotion}' is in no class of {scheme.name}",
                )
            )
            continue
        if clips is not None:
            problem = _folder_problem(row, clips, Path(root), dataset, folder_pattern)
            if problem is not None:
                problems.append(problem)
                continue
        candidates.append((row, label))

    samples: list[Sample] = []
    for row, label in candidates:
        apex, source = row.apex, "override" if "apex" in row.overridden else "annotated"
        if apex is None:
            if clips is None:
                source = "missing"
            else:
                try:
                    apex, source = impute_apex(clips[(row.subject, row.clip)], row.onset, row.offset), "imputed"
                except MerError as exc:
                    problems.append(
                        Problem(
                            row.source_row,
                            row.subject,
                            row.clip,
                            "unreadable frames",
                            f"the apex is missing and cannot be imputed: {exc}",
                        )
                    )
                    continue
        samples.append(
            Sample(
                dataset,
                row.subject,
                row.clip,
                row.onset,
                apex,
                row.offset,
                source,
                row.emotion,
                label,
                row.action_units,
                row.source_row,
            )
        )

    problems.sort(
        key=lambda p: p.source_row if p.source_row is not None else -1
    )  # stable: sheet, then duplicates, then folders
    # Say which values of a problem row came from the overrides file.
    problems = [
        replace(p, detail=f"{p.detail} [{sheet.overridden[p.source_row][1]}]")
        if p.source_row in sheet.overridden
        else p
        for p in problems
    ]
    if (problems or sheet.override_problems) and on_problem == "fail":
        parts = []
        if problems:
            parts.append(f"{sheet.path}: {len({p.source_row for p in problems})} of {sheet.n_rows} {dataset} rows")
        if sheet.override_problems:
            parts.append(f"{patch.path}: {len({p.where for p in sheet.override_problems})} override row(s)")
        raise InputProblems(
            f"{' and '.join(parts)} have problems; nothing was written. Fix the rows below"
            + (", or set annotate.on_problem: drop (--on-problem drop) to drop them" if problems else ""),
            [p.line() for p in problems + sheet.override_problems],
        )
    dropped = list(excluded)
    emotions = {key.source_row: key.emotion for key in sheet.keys}
    by_row: dict[int, list[Problem]] = defaultdict(list)
    for p in problems:
        by_row[p.source_row].append(p)
    for number, group in by_row.items():
        dropped.append(
            DroppedRow(
                number,
                group[0].subject,
                group[0].clip,
                emotions.get(number, ""),
                group[0].reason,
                "; ".join(p.detail for p in group),
            )
        )
    dropped.sort(key=lambda d: d.source_row)
    samples.sort(key=lambda s: (s.subject, s.clip))
    kept = {s.source_row for s in samples}
    return Annotation(
        dataset,
        sheet.path,
        scheme,
        sheet.header_row,
        sheet.n_rows,
        samples,
        dropped,
        problems,
        clips is not None,
        overrides=patch.path if patch is not None else None,
        n_overridden=sum(number in kept for number in sheet.overridden),
    )


def summary_lines(result: Annotation, out: str | Path | None = None) -> list[str]:
    """What the stage prints: rows read, kept per class, dropped per reason, imputed apexes."""
    kept = Counter(s.label for s in result.samples)
    subjects = len({s.subject for s in result.samples})
    lines = [
        f"{result.dataset}: read {result.n_rows} rows from {result.coding.name} (header on row {result.header_row})",
        f"  kept {len(result.samples)} clips of {subjects} subjects, classes {result.scheme.name}: "
        + ", ".join(f"{label} {kept[label]}" for label in result.scheme.labels),
    ]
    if result.dropped:
        reasons = Counter(d.reason for d in result.dropped)
        lines.append(
            f"  dropped {len(result.dropped)} rows: " + ", ".join(f"{r} {n}" for r, n in reasons.most_common())
        )
        excluded = Counter(d.emotion for d in result.dropped if d.reason == "not in class preset")
        if excluded:
            lines.append("    not in the classes: " + ", ".join(f"{e} {n}" for e, n in excluded.most_common()))
        for d in result.dropped:
            if d.reason != "not in class preset":
                lines.append(f"    row {d.source_row} ({d.subject or '?'}/{d.clip or '?'}): {d.detail}")
    else:
        lines.append("  dropped 0 rows")
    lines.append(f"  apex imputed for {result.n_imputed} clips (peak motion relative to the onset frame)")
    if result.overrides is not None:
        n_apex = sum(s.apex_source == "override" for s in result.samples)
        lines.append(f"  {result.n_overridden} clips corrected by {result.overrides.name} (apex set for {n_apex})")
    if out is not None:
        lines.append(f"  -> {out}")
    return lines
