"""annotate_samples: a coding sheet checked against the clip folders -> the samples table rows.

Rows are matched to clip folders by (subject, clip), never by position; a row coding a clip
twice, a missing folder or frames missing from onset..offset are problems of that row. A
missing apex is imputed from the frames on disk as the frame of peak motion relative to the
onset (`pipeline.motion.estimate_apex`) and flagged `imputed`; it is never silently the midpoint.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_output
from pipeline.datasets.coding import CodingRow, duplicate_problems, read_coding
from pipeline.datasets.layouts import (
    DEFAULT_FOLDER_PATTERN,
    ClipFolder,
    DatasetFormat,
    dataset_format,
    find_clip_folders,
)
from pipeline.datasets.overrides import read_overrides
from pipeline.datasets.presets import ClassScheme, class_scheme, emotions_scheme
from pipeline.datasets.sheets import Problem
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import SAMPLE_COLUMNS, dropped_path, write_dropped, write_samples
from pipeline.motion import estimate_apex, load_motion_frames


def impute_apex(folder: ClipFolder, onset: int, offset: int) -> int:
    """The apex frame number of a clip from its frames on disk (peak motion relative to onset)."""
    paths = [path for number, path in folder.frames if onset <= number <= offset]
    numbers = [number for number, _ in folder.frames if onset <= number <= offset]
    return numbers[estimate_apex(load_motion_frames(paths), 0)]


@dataclass(frozen=True)
class Sample:
    """One row of the samples table: a clip kept, with its label."""

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
    """A sheet row left out of the samples table, and why."""

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


def _folder_problem(
    row: CodingRow,
    clips: Mapping[tuple[str, str], ClipFolder],
    root: Path,
    fmt: DatasetFormat,
    pattern: str | None,
) -> Problem | None:
    folder = clips.get((row.subject, row.clip))
    if folder is None:
        hints = [f"{s}/{c}" for (s, c) in clips if c.lower() == row.clip.lower()]
        hint = f" (found {', '.join(sorted(hints)[:3])}: is Subject or Filename wrong?)" if hints else ""
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
        advice = "correct the frame numbers or restore the frames"
        if not fmt.fixed_layout and not present:
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
            f"folder {folder.path} lacks frame(s) {_compact_ranges(missing)} of {fmt.frame_span} "
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
    fmt = dataset_format(dataset)
    spec = classes if classes is not None else fmt.default_classes
    scheme = class_scheme(spec, dataset) if spec is not None else None
    patch = read_overrides(overrides, dataset) if overrides is not None else None
    sheet = read_coding(coding, dataset, patch)
    if scheme is None:
        scheme = emotions_scheme(k.emotion for k in sheet.keys)
    problems = list(sheet.problems)
    problems += duplicate_problems(sheet.keys)
    bad_rows = {p.source_row for p in problems}
    if sheet.override_problems and on_problem == "drop":
        raise InputProblems(
            f"{patch.path}: {len({p.where for p in sheet.override_problems})} override rows have problems; nothing was "
            "written. Overrides are never dropped: fix or delete the rows below",
            [p.line() for p in sheet.override_problems],
        )

    pattern = None if fmt.fixed_layout else folder_pattern
    clips = find_clip_folders(dataset, root, pattern) if root is not None else None
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
            problem = _folder_problem(row, clips, Path(root), fmt, pattern)
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

    # Stable: within a row, sheet problems come first, then duplicates, then folders.
    problems.sort(key=lambda p: p.source_row if p.source_row is not None else -1)
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


def annotate_to_file(
    out: str | Path,
    dataset: str,
    coding: str | Path,
    root: str | Path,
    classes: str | Mapping[str, Any] | None = None,
    on_problem: str = "fail",
    overrides: str | Path | None = None,
    folder_pattern: str | None = None,
) -> Annotation:
    """`annotate_samples`, then the samples table `out` and its dropped-rows report, both atomically.

    Raises MerError, and writes nothing, when the class scheme keeps no clip.
    """
    result = annotate_samples(dataset, coding, root, classes, on_problem, overrides, folder_pattern)
    if not result.samples:
        raise MerError(
            f"no clip of {coding} is kept with classes {result.scheme.name}: " + "; ".join(summary_lines(result)[1:3])
        )
    with atomic_output(out) as tmp_out, atomic_output(dropped_path(out)) as tmp_report:
        write_samples(tmp_out, (s.as_row() for s in result.samples))
        write_dropped(tmp_report, (d.as_row() for d in result.dropped))
    return result
