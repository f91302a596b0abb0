"""The samples table (`mer annotate`, `mer combine` -> `mer dynimg`): one normalized row per clip.

One CSV format, one writer and one reader. `NAME.dropped.csv` beside it lists the sheet rows left
out and why; `NAME.warnings.csv` the rows kept with a warning or a repair (an apex outside the clip
estimated, frames in the folder beyond the offset, an apex on the onset or offset frame).

A sample is (dataset, subject, clip) where a folder holds one sample, (dataset, subject, clip,
onset) where it holds several (CAS(ME)^3: one video, several micro-expressions): `sample_ids`
gives `dataset/subject/clip` for the first kind, exactly as before, and `dataset/subject/clip/onset`
for the second.

`apex_source`: annotated | imputed (the sheet codes no apex: '/', -1, or no apex column) |
imputed_outside (the sheet's apex lies outside onset..offset: estimated instead) | override |
missing (folders not checked) | estimated (set by dynimg).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import MerError

SAMPLE_COLUMNS = (
    "dataset",
    "subject",
    "clip",
    "onset",
    "apex",
    "offset",
    "apex_source",
    "n_frames",
    "emotion",
    "label",
    "action_units",
    "source_row",
)
INT_COLUMNS = ("onset", "apex", "offset", "n_frames", "source_row")
DROPPED_COLUMNS = ("source_row", "subject", "clip", "emotion", "reason", "detail")
WARNING_COLUMNS = ("source_row", "subject", "clip", "onset", "kind", "detail")
# apex_source values whose apex the coding sheet did not give (estimated from the frames by annotate).
IMPUTED_APEX_SOURCES = ("imputed", "imputed_outside")


def sample_ids(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """One id per sample: `dataset/subject/clip`, plus `/onset` where that folder holds several samples."""
    rows = list(rows)
    folders = Counter((str(r["dataset"]), str(r["subject"]), str(r["clip"])) for r in rows)
    ids = []
    for r in rows:
        key = (str(r["dataset"]), str(r["subject"]), str(r["clip"]))
        ids.append("/".join(key) + (f"/{int(r['onset'])}" if folders[key] > 1 else ""))
    return ids


def write_samples(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """The samples CSV: SAMPLE_COLUMNS, one row per clip, in the order given (other keys ignored)."""
    _write_rows(path, SAMPLE_COLUMNS, rows)


def write_dropped(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """The rows left out of the samples table and why (DROPPED_COLUMNS)."""
    _write_rows(path, DROPPED_COLUMNS, rows)


def _write_rows(path: str | Path, columns: tuple[str, ...], rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_warnings(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """The rows kept with a warning or a repair (WARNING_COLUMNS)."""
    _write_rows(path, WARNING_COLUMNS, rows)


def warnings_path(out: str | Path) -> Path:
    """Where the warnings of a samples table go: NAME.csv -> NAME.warnings.csv."""
    out = Path(out)
    return out.with_name(f"{out.stem}.warnings.csv")


def dropped_path(out: str | Path) -> Path:
    """Where the dropped-rows report of a samples table goes: NAME.csv -> NAME.dropped.csv."""
    out = Path(out)
    return out.with_name(f"{out.stem}.dropped.csv")


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """The samples table as dicts with onset, apex, offset, n_frames and source_row as int."""
    path = Path(path)
    if not path.is_file():
        raise MerError(f"samples table not found: {path} (run `mer annotate` first)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SAMPLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MerError(
                f"{path} is not a samples table: columns {', '.join(missing)} are missing (re-run `mer annotate`)"
            )
        rows = []
        for number, row in enumerate(reader, start=2):
            try:
                for name in INT_COLUMNS:
                    row[name] = int(row[name])
            except ValueError as exc:
                raise MerError(f"{path} line {number}: {exc}; re-run `mer annotate`") from exc
            rows.append(dict(row))
    return rows
