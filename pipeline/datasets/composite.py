"""Composite (MEGC-style) runs: the samples tables of several datasets -> one table.

`combine_samples` concatenates samples tables (`mer annotate` outputs), after checking that
they can be trained on together:

- every table is a samples table and holds at least one row;
- the datasets do not collide: each input table names its dataset(s) in the `dataset` column,
  and no dataset appears in two inputs (two `generic` tables must be told apart by naming
  them: `NAME=PATH` relabels the `dataset` column of that table, e.g. `mmew=mmew.csv`);
  dataset names hold no '/';
- (dataset, subject, clip, onset) is unique (one folder may hold several samples: CAS(ME)^3);
- the tables use the same label set: with a class spec (e.g. `megc-3`) every label must be
  one of its classes (a class that a dataset lacks is reported, not an error); without one,
  every table must hold exactly the same labels.

Subjects are only unique within a dataset. The combined table keeps each row's `subject` as
its dataset wrote it (so the clip is still found as `subject/clip` in that dataset's aligned
cache) and relies on the `dataset` column for identity: the DI stage builds `sample_id` as
`dataset/subject/clip` (`dataset/subject/clip/onset` where a folder holds several samples,
`pipeline.io.samples.sample_ids`), and training makes one LOSO fold per `dataset/subject` as soon
as a DI cache holds more than one dataset (`pipeline.train.data.fold_keys`). Row order: the inputs in
the order given, each table's rows in its own order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_output
from pipeline.datasets.presets import label_names_for
from pipeline.errors import InputProblems, MerError
from pipeline.io.samples import read_samples, write_samples


@dataclass(frozen=True)
class SamplesInput:
    """One input table; `name`, when given, replaces the table's `dataset` column."""

    path: Path
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> SamplesInput:
        """'PATH' or 'NAME=PATH'; an existing file whose name holds '=' is taken as a path."""
        name, sep, path = str(text).partition("=")
        if sep and name and "/" not in name and "\\" not in name and not Path(text).is_file():
            return cls(Path(path), name.strip())
        return cls(Path(text))


@dataclass
class Composite:
    rows: list[dict[str, Any]]
    datasets: list[str]  # in input order
    labels: list[str]  # label order: the class spec's, else first seen
    classes: str | None
    counts: dict[str, Counter] = field(default_factory=dict)  # dataset -> label -> clips
    subjects: dict[str, int] = field(default_factory=dict)  # dataset -> number of subjects
    sources: dict[str, Path] = field(default_factory=dict)  # dataset -> input table
    warnings: list[str] = field(default_factory=list)


def combine_samples(
    inputs: Sequence[SamplesInput | str | Path], classes: str | Mapping[str, Any] | None = None
) -> Composite:
    """Validate and concatenate samples tables; raises InputProblems listing every problem."""
    inputs = [i if isinstance(i, SamplesInput) else SamplesInput.parse(str(i)) for i in inputs]
    if len(inputs) < 2:
        raise MerError("a composite needs at least two samples tables (--samples A.csv --samples B.csv)")
    problems: list[str] = []
    tables: list[tuple[SamplesInput, list[dict[str, Any]]]] = []
    for item in inputs:
        try:
            rows = read_samples(item.path)
        except MerError as exc:
            problems.append(str(exc))
            continue
        if not rows:
            problems.append(f"{item.path}: holds no samples")
            continue
        if item.name is not None:
            rows = [{**r, "dataset": item.name} for r in rows]
        tables.append((item, rows))

    owner: dict[str, Path] = {}
    seen: dict[tuple[str, str, str], str] = {}
    for item, rows in tables:
        names = list(dict.fromkeys(r["dataset"].strip() for r in rows))
        for number, row in enumerate(rows, start=2):
            row["dataset"] = row["dataset"].strip()
            if not row["dataset"]:
                problems.append(f"{item.path} line {number}: empty dataset; name the table with NAME={item.path}")
            # A sample is (dataset, subject, clip), with the onset where a folder holds several (CAS(ME)^3).
            key = (row["dataset"], row["subject"], row["clip"], str(row["onset"]))
            where = f"{item.path} line {number}"
            if key in seen and row["dataset"] not in owner:
                problems.append(f"{where}: {'/'.join(key[:3])} (onset {key[3]}) is also on {seen[key]}")
            seen.setdefault(key, where)
        for name in filter(None, names):
            if "/" in name or "\\" in name:
                problems.append(f"{item.path}: dataset name {name!r} holds '/'; rename it with NAME={item.path}")
            if name in owner:
                problems.append(
                    f"dataset {name} is in both {owner[name]} and {item.path}: subjects of different datasets would be "
                    f"mixed; give each its own name, e.g. --samples {name}_a={owner[name]} --samples {name}_b={item.path}"
                )
        for name in filter(None, names):
            owner.setdefault(name, item.path)

    labels: list[str] = []
    warnings: list[str] = []
    per_table = [(item, sorted({r["label"] for r in rows})) for item, rows in tables]
    if classes is not None:
        labels = label_names_for(classes, "generic")
        for item, found in per_table:
            unknown = [label for label in found if label not in labels]
            if unknown:
                problems.append(
                    f"{item.path}: labels {', '.join(unknown)} are not classes of {classes} "
                    f"({', '.join(labels)}); re-run `mer annotate --classes {classes}` for it"
                )
            absent = [label for label in labels if label not in found]
            if absent and not unknown:
                warnings.append(f"{item.path} has no clip of class(es) {', '.join(absent)}")
    else:
        for _, rows in tables:
            labels += [label for label in dict.fromkeys(r["label"] for r in rows) if label not in labels]
        reference = per_table[0][1] if per_table else []
        if any(found != reference for _, found in per_table):
            listing = "; ".join(f"{item.path}: {', '.join(found)}" for item, found in per_table)
            problems.append(
                f"the tables use different label sets ({listing}); annotate every dataset with the same "
                "--classes (e.g. megc-3), or pass --classes to allow a dataset without some class"
            )
    if problems:
        raise InputProblems(f"cannot combine {len(inputs)} samples tables; nothing was written", problems)

    result = Composite([], list(owner), labels, None if classes is None else str(classes), warnings=warnings)
    for item, rows in tables:
        result.rows.extend(rows)
        for row in rows:
            result.counts.setdefault(row["dataset"], Counter())[row["label"]] += 1
            result.sources.setdefault(row["dataset"], item.path)
    for name in result.datasets:
        result.subjects[name] = len({r["subject"] for r in result.rows if r["dataset"] == name})
    return result


def aligned_caches(specs: Sequence[str], datasets: Sequence[str]) -> dict[str, Path]:
    """dataset -> aligned cache, for the DI stage of a composite (`--aligned` given once per dataset).

    `specs` are `NAME=FILE` (NAME as in the samples table's `dataset` column) or, for a table
    of one dataset, a single plain `FILE`. Every dataset of the table needs a cache; a cache
    named for no dataset of the table is an error too (a typo would otherwise go unnoticed).
    """
    datasets = list(dict.fromkeys(datasets))
    named: dict[str, Path] = {}
    plain: list[Path] = []
    problems: list[str] = []
    for text in specs:
        item = SamplesInput.parse(text)
        if item.name is None:
            plain.append(item.path)
        elif item.name in named:
            problems.append(f"--aligned names dataset {item.name} twice")
        else:
            named[item.name] = item.path
    if plain:
        if len(plain) == 1 and not named and len(datasets) == 1:
            return {datasets[0]: plain[0]}
        example = " ".join(f"--aligned {d}=cache/aligned/{d}.h5" for d in datasets)
        raise MerError(
            f"the samples table holds datasets {', '.join(datasets)}: give one aligned cache per dataset as "
            f"NAME=FILE, e.g. {example}"
        )
    problems += [
        f"no aligned cache for dataset {d}; add --aligned {d}=cache/aligned/{d}.h5" for d in datasets if d not in named
    ]
    problems += [
        f"--aligned {n}=...: the samples table has no dataset {n} (it has {', '.join(datasets)})"
        for n in named
        if n not in datasets
    ]
    if problems:
        raise InputProblems("the aligned caches do not match the samples table", problems)
    return {d: named[d] for d in datasets}


def composite_summary(result: Composite, out: str | Path | None = None) -> list[str]:
    """Per-dataset counts (clips, subjects, per class) and the totals, as the stage prints them."""
    total = Counter()
    lines = [
        f"composite of {len(result.datasets)} datasets, classes "
        f"{result.classes or 'as annotated'}: " + ", ".join(result.labels)
    ]
    width = max(len(d) for d in result.datasets)
    for name in result.datasets:
        counts = result.counts[name]
        total.update(counts)
        lines.append(
            f"  {name:<{width}}  {sum(counts.values()):>5} clips, {result.subjects[name]:>3} subjects: "
            + ", ".join(f"{label} {counts[label]}" for label in result.labels)
            + f"  ({result.sources[name]})"
        )
    n_subjects = sum(result.subjects.values())
    lines.append(
        f"  {'total':<{width}}  {sum(total.values()):>5} clips, {n_subjects:>3} subjects: "
        + ", ".join(f"{label} {total[label]}" for label in result.labels)
    )
    lines.append(f"  LOSO folds: {n_subjects} (one per dataset/subject)")
    lines += [f"  note: {w}" for w in result.warnings]
    if out is not None:
        lines.append(f"  -> {out}")
    return lines


def combine_to_file(
    inputs: Sequence[SamplesInput | str | Path], out: str | Path, classes: str | Mapping[str, Any] | None = None
) -> Composite:
    """`combine_samples`, then the combined samples table `out`, written atomically."""
    result = combine_samples(inputs, classes)
    with atomic_output(out) as tmp:
        write_samples(tmp, result.rows)
    return result
