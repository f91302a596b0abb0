"""annotate_samples: a coding sheet checked against the clip folders -> the samples table rows.

Rows are matched to clip folders by (subject, clip), never by position; a row coding a sample
twice, a missing folder or frames missing from onset..offset are problems of that row. A sample
is (subject, clip), or (subject, clip, onset) in a format whose folders hold several samples
(CAS(ME)^3). A missing apex is imputed from the frames on disk as the frame of peak motion
relative to the onset (`pipeline.motion.estimate_apex`) and flagged `imputed`; it is never
silently the midpoint. An apex outside onset..offset is a missing apex (`apex_outside:
estimate`, the default but for casme3): imputed the same way and flagged `imputed_outside`.

Rows kept with something to check are listed as warnings, by spreadsheet row: an apex estimated
because the sheet's lay outside the clip; frames in the folder beyond the offset or before the
onset where the layout stores only onset..offset (CASME II, SAMM: the sheet's offset may be
short); an annotated apex on the onset or offset frame (a degenerate phase).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_output
from pipeline.datasets.coding import FRAME_ORDER, CodingRow, duplicate_problems, read_coding
from pipeline.datasets.layouts import (
    DEFAULT_FOLDER_PATTERN,
    ClipFolder,
    DatasetFormat,
    dataset_format,
    find_clip_folders,
)
from pipeline.datasets.overrides import read_overrides
from pipeline.datasets.presets import EXCLUSIONS, PRESETS, ClassScheme, class_scheme, emotion_key, emotions_scheme
from pipeline.datasets.sheets import Problem
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import (
    IMPUTED_APEX_SOURCES,
    SAMPLE_COLUMNS,
    dropped_path,
    warnings_path,
    write_dropped,
    write_samples,
    write_warnings,
)
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
    apex_source: str  # annotated | imputed | imputed_outside | override ('missing' only when folders were not checked)
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

    @classmethod
    def of(cls, row: CodingRow, reason: str, detail: str) -> DroppedRow:
        """The sheet row `row`, left out for `reason`."""
        return cls(row.source_row, row.subject, row.clip, row.emotion, reason, detail)

    def as_row(self) -> dict[str, Any]:
        return {
            "source_row": self.source_row,
            "subject": self.subject or "",
            "clip": self.clip or "",
            "emotion": self.emotion,
            "reason": self.reason,
            "detail": self.detail,
        }


MAX_WARNING_LINES = 20  # the summary lists at most this many warnings; NAME.warnings.csv lists them all


@dataclass(frozen=True)
class RowWarning:
    """A kept sample with something to check (or a repair made), by spreadsheet row."""

    source_row: int
    subject: str
    clip: str
    onset: int
    kind: str  # apex outside clip | frames after offset | frames before onset | apex on onset | apex on offset
    detail: str

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("source_row", "subject", "clip", "onset", "kind", "detail")}

    def line(self) -> str:
        return f"row {self.source_row} ({self.subject}/{self.clip}): {self.detail}"


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
    warnings: list[RowWarning] = field(default_factory=list)
    sheet_name: str | None = None  # the workbook sheet read
    apex_column: bool = True  # False: the sheet has no apex column (every apex imputed)

    @property
    def n_imputed(self) -> int:
        return sum(s.apex_source in IMPUTED_APEX_SOURCES for s in self.samples)


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


def _frame_warnings(row: CodingRow, folder: ClipFolder, fmt: DatasetFormat, apex: int, source: str) -> list[RowWarning]:
    """Warnings of a kept row: frames beyond its span (layouts storing only onset..offset) and an
    annotated apex on the onset or offset frame."""
    found: list[RowWarning] = []

    def warn(kind: str, detail: str) -> None:
        found.append(RowWarning(row.source_row, row.subject, row.clip, row.onset, kind, detail))

    span = fmt.frame_span.split("..")
    if fmt.clip_only_frames:
        after = [n for n in folder.frame_numbers if n > row.offset]
        before = [n for n in folder.frame_numbers if n < row.onset]
        if after:
            warn(
                "frames after offset",
                f"the folder holds {len(after)} frame(s) after {span[1]} {row.offset} ({_compact_ranges(after)}): "
                "the sheet's offset may be short; check it (an overrides file can correct it)",
            )
        if before:
            warn(
                "frames before onset",
                f"the folder holds {len(before)} frame(s) before {span[0]} {row.onset} ({_compact_ranges(before)}): "
                "the sheet's onset may be late; check it (an overrides file can correct it)",
            )
    if source in ("annotated", "override") and row.onset < row.offset:
        for kind, anchor, phase in (
            ("apex on onset", row.onset, "onset-apex"),
            ("apex on offset", row.offset, "apex-offset"),
        ):
            if apex == anchor:
                warn(
                    kind,
                    f"the apex {apex} is the {kind.split()[-1]} frame: the {phase} phase is one frame (degenerate; "
                    "dynimg widens it to min_phase_frames)",
                )
    return found


def annotate_samples(
    dataset: str,
    coding: str | Path,
    root: str | Path | None,
    classes: str | Mapping[str, Any] | None = None,
    on_problem: str = "fail",
    overrides: str | Path | None = None,
    folder_pattern: str | None = None,
    sheet: str | None = None,
    apex_outside: str | None = None,
    frame_order: str | None = None,
) -> Annotation:
    """Read a coding sheet, validate it against the clip folders and map emotions to classes.

    With `root=None` the folders are not checked and missing apexes stay missing
    (apex_source 'missing'); the stage always passes the root. Rows whose emotion the class
    scheme does not keep are dropped (reason 'not in class preset'), not validated against
    folders. `on_problem='fail'` raises InputProblems listing every problem (spreadsheet
    row, subject, clip, what to do); 'drop' drops the rows concerned and reports them in
    `dropped`. `overrides` is an overrides file (see `read_overrides`); its own problems (an
    unknown clip, text in a frame column) always stop the run, with its row numbers.
    `folder_pattern` locates the clip folders of a layout found by pattern (default: the
    format's). Without `classes`, CASME II and SAMM use their 5-class presets and other sheets
    keep every emotion as its own class. `sheet` names the workbook sheet when several hold a
    coding table. `apex_outside` ('estimate' | 'error') and `frame_order` ('fail' | 'drop': rows
    with frames out of order are problems, or dropped and listed whatever `on_problem`) default
    to the format's rule (estimate and fail; error and drop for casme3).
    """
    if on_problem not in ("fail", "drop"):
        raise MerError(f"on_problem must be 'fail' or 'drop', got {on_problem!r}")
    fmt = dataset_format(dataset)
    frame_order = fmt.bad_frame_rows if frame_order is None else frame_order
    if frame_order not in FRAME_ORDER:
        raise MerError(f"annotate.frame_order must be one of {', '.join(FRAME_ORDER)}, got {frame_order!r}")
    spec = classes if classes is not None else fmt.default_classes
    scheme = class_scheme(spec, dataset) if spec is not None else None
    patch = read_overrides(overrides, dataset) if overrides is not None else None
    sheet_read = read_coding(coding, dataset, patch, sheet, apex_outside)
    if scheme is None:
        scheme = emotions_scheme(k.emotion for k in sheet_read.keys)
    elif not (isinstance(spec, str) and spec in PRESETS):
        _check_mapping_emotions(scheme, coding, {k.emotion for k in sheet_read.keys})
    problems = list(sheet_read.problems)
    problems += duplicate_problems(sheet_read.keys, fmt.several_per_folder)
    bad_rows = {p.source_row for p in problems}
    if sheet_read.override_problems and on_problem == "drop":
        raise InputProblems(
            f"{patch.path}: {len({p.where for p in sheet_read.override_problems})} override rows have problems; nothing "
            "was written. Overrides are never dropped: fix or delete the rows below",
            [p.line() for p in sheet_read.override_problems],
        )

    pattern = None if fmt.fixed_layout else folder_pattern
    clips = find_clip_folders(dataset, root, pattern) if root is not None else None
    excluded: list[DroppedRow] = []
    candidates: list[tuple[CodingRow, str]] = []
    for row in sheet_read.rows:
        if row.source_row in bad_rows:
            continue
        label = scheme.label_of(row.emotion)
        if label is None:
            excluded.append(
                DroppedRow.of(row, "not in class preset", f"emotion '{row.emotion}' is in no class of {scheme.name}")
            )
            continue
        rule = next(
            (
                r
                for r in scheme.excludes
                if (r == "apex not coded" and row.apex_note == "not coded")
                or (r == "apex on onset" and row.apex is not None and row.apex == row.onset)
            ),
            None,
        )
        if rule is not None:
            excluded.append(DroppedRow.of(row, rule, f"{scheme.name} leaves it out: {EXCLUSIONS[rule]}"))
            continue
        if clips is not None:
            problem = _folder_problem(row, clips, Path(root), fmt, pattern)
            if problem is not None:
                problems.append(problem)
                continue
        candidates.append((row, label))

    samples: list[Sample] = []
    warnings: list[RowWarning] = []
    for row, label in candidates:
        apex, source = row.apex, "override" if "apex" in row.overridden else "annotated"
        if apex is None:
            if clips is None:
                source = "missing"
            else:
                try:
                    apex = impute_apex(clips[(row.subject, row.clip)], row.onset, row.offset)
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
                source = "imputed_outside" if row.apex_note == "outside" else "imputed"
        if row.apex_note == "outside":
            warnings.append(
                RowWarning(
                    row.source_row,
                    row.subject,
                    row.clip,
                    row.onset,
                    "apex outside clip",
                    f"the sheet's apex {row.sheet_apex} is outside the clip {row.onset}..{row.offset}: treated as missing, "
                    + (f"estimated from the frames as {apex}" if apex is not None else "to be estimated")
                    + " (apex_source imputed_outside); set annotate.apex_outside: error to refuse it",
                )
            )
        if clips is not None:
            warnings += _frame_warnings(row, clips[(row.subject, row.clip)], fmt, apex, source)
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
        replace(p, detail=f"{p.detail} [{sheet_read.overridden[p.source_row][1]}]")
        if p.source_row in sheet_read.overridden
        else p
        for p in problems
    ]
    # frame_order 'drop' (casme3's rule): rows with frames out of order are dropped and listed, not refused.
    order_rows = {p.source_row for p in problems if p.reason == "frame order"} if frame_order == "drop" else set()
    blocking = [p for p in problems if p.source_row not in order_rows]
    if (blocking or sheet_read.override_problems) and on_problem == "fail":
        parts = []
        if blocking:
            parts.append(
                f"{sheet_read.path}: {len({p.source_row for p in blocking})} of {sheet_read.n_rows} {dataset} rows"
            )
        if sheet_read.override_problems:
            parts.append(f"{patch.path}: {len({p.where for p in sheet_read.override_problems})} override row(s)")
        raise InputProblems(
            f"{' and '.join(parts)} have problems; nothing was written. Fix the rows below"
            + (", or set annotate.on_problem: drop (--on-problem drop) to drop them" if blocking else ""),
            [p.line() for p in blocking + sheet_read.override_problems],
        )
    dropped = list(excluded)
    emotions = {key.source_row: key.emotion for key in sheet_read.keys}
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
    samples.sort(key=lambda s: (s.subject, s.clip, s.onset))
    warnings.sort(key=lambda w: w.source_row)
    kept = {s.source_row for s in samples}
    return Annotation(
        dataset,
        sheet_read.path,
        scheme,
        sheet_read.header_row,
        sheet_read.n_rows,
        samples,
        dropped,
        problems,
        clips is not None,
        overrides=patch.path if patch is not None else None,
        n_overridden=sum(number in kept for number in sheet_read.overridden),
        warnings=warnings,
        sheet_name=sheet_read.sheet_name,
        apex_column=fmt.apex_column,
    )


def _check_mapping_emotions(scheme: ClassScheme, coding: str | Path, emotions: set[str]) -> None:
    """A user's class mapping naming an emotion the sheet never codes is a typo, not a choice: its
    clips would be dropped without a word. (Presets may name emotions a dataset lacks.)"""
    present = {emotion_key(e): e for e in emotions}
    absent = sorted(e for e in scheme.mapping if e not in present)
    if absent:
        hints = [
            f"{e!r} (did you mean {m[0]!r}?)" if (m := get_close_matches(e, present, 1)) else repr(e) for e in absent
        ]
        raise MerError(
            f"the class mapping {scheme.name!r} names emotion(s) {', '.join(hints)} that no row of {coding} codes; "
            f"the sheet's emotions are {', '.join(sorted(present))}: fix the mapping"
        )


def summary_lines(result: Annotation, out: str | Path | None = None) -> list[str]:
    """What the stage prints: rows read, kept per class, dropped per reason, imputed apexes, warnings."""
    kept = Counter(s.label for s in result.samples)
    subjects = len({s.subject for s in result.samples})
    where = f"sheet '{result.sheet_name}' of " if result.sheet_name else ""
    lines = [
        f"{result.dataset}: read {result.n_rows} rows from {where}{result.coding.name} (header on row {result.header_row})",
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
    n_outside = sum(s.apex_source == "imputed_outside" for s in result.samples)
    why = " (the sheet has no apex column)" if not result.apex_column else ""
    outside = f", {n_outside} of them because the sheet's apex lies outside the clip" if n_outside else ""
    lines.append(f"  apex imputed for {result.n_imputed} clips{why} (peak motion relative to the onset frame){outside}")
    if result.overrides is not None:
        n_apex = sum(s.apex_source == "override" for s in result.samples)
        lines.append(f"  {result.n_overridden} clips corrected by {result.overrides.name} (apex set for {n_apex})")
    if result.warnings:
        kinds = Counter(w.kind for w in result.warnings)
        lines.append(
            f"  warnings on {len({w.source_row for w in result.warnings})} kept rows: "
            + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
        )
        shown = (
            result.warnings if len(result.warnings) <= MAX_WARNING_LINES else result.warnings[: MAX_WARNING_LINES - 1]
        )
        lines += [f"    {w.line()}" for w in shown]
        if len(shown) < len(result.warnings):
            lines.append(f"    ... and {len(result.warnings) - len(shown)} more, all listed in the warnings file")
    if out is not None:
        lines.append(f"  -> {out}")
    return lines


def annotate_to_file(out: str | Path, dataset: str, coding: str | Path, root: str | Path, **options: Any) -> Annotation:
    """`annotate_samples` (`options` are its keyword arguments), then the samples table `out`, its
    dropped-rows report and its warnings (NAME.dropped.csv, NAME.warnings.csv), all atomically.

    Raises MerError, and writes nothing, when the class scheme keeps no clip.
    """
    result = annotate_samples(dataset, coding, root, **options)
    if not result.samples:
        raise MerError(
            f"no clip of {coding} is kept with classes {result.scheme.name}: " + "; ".join(summary_lines(result)[1:3])
        )
    with (
        atomic_output(out) as tmp_out,
        atomic_output(dropped_path(out)) as tmp_report,
        atomic_output(warnings_path(out)) as tmp_warnings,
    ):
        write_samples(tmp_out, (s.as_row() for s in result.samples))
        write_dropped(tmp_report, (d.as_row() for d in result.dropped))
        write_warnings(tmp_warnings, (w.as_row() for w in result.warnings))
    return result
