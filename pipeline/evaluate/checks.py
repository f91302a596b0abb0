"""What `mer evaluate` and `mer report` both check before they compute anything from a run folder.

One function, `checked_predictions`, so that report refuses exactly what evaluate refuses:

- run.json: readable, with a label set (`read_run_info`);
- folds/ against run.json: no fold folder missing, none extra;
- every fold: its manifest names its held-out subject, it did not train on it, its predictions.csv
  holds rows of that subject only, and no clip is tested in two folds (`run_problems`);
- the pooled predictions.csv is the union of the fold files, row for row (same clips, same values);
- the pooled predictions: the number of rows per fold that run.json records, known labels, no
  clip twice (`load_predictions`).

A run folder without folds/ (predictions from another tool) can only be checked against run.json:
`warn` says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import InputProblems, MerError
from pipeline.evaluate.metrics import Predictions, load_predictions
from pipeline.io.runs import read_predictions, read_run_info


def _fold_directories(info: Mapping[str, Any]) -> dict[str, str] | None:
    """Fold key -> folder name under folds/, as run.json records them (None when it records none)."""
    folds = info.get("folds")
    if not isinstance(folds, dict):
        return None
    return {
        fold: Path(str(entry.get("directory") or f"folds/{fold}")).name if isinstance(entry, dict) else fold
        for fold, entry in folds.items()
    }


def _sample(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def run_problems(run_dir: str | Path, info: Mapping[str, Any]) -> list[str]:
    """Problems that make a run's LOSO results invalid, read from folds/ (see the module docstring)."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    present = {p.name: p for p in (run_dir / "folds").iterdir() if p.is_dir() and not p.name.startswith(".")}
    expected = _fold_directories(info)
    if expected is not None:
        for fold, name in sorted(expected.items()):
            if name not in present:
                problems.append(f"fold {fold}: listed in run.json but {run_dir / 'folds' / name} is missing")
        for name in sorted(set(present) - set(expected.values())):
            problems.append(f"fold folder {present[name]} is not listed in run.json (left from another run?)")
    seen: dict[str, str] = {}
    union: dict[str, dict[str, Any]] = {}
    for name, folder in sorted(present.items()):
        manifest_path = folder / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"fold {name}: unreadable manifest {manifest_path} ({exc})")
            continue
        held_out = manifest.get("held_out_subject")
        if held_out in set(manifest.get("trained_on_subjects", [])):
            problems.append(f"fold {name}: trained on its held-out subject {held_out} (test set leaked into training)")
        try:
            rows = read_predictions(folder / "predictions.csv")
        except MerError as exc:
            problems.append(f"fold {name}: unreadable predictions ({exc})")
            continue
        others = sorted({str(row["subject"]) for row in rows} - {held_out})
        if others:
            strays = [str(row["sample_id"]) for row in rows if row["subject"] != held_out]
            problems.append(
                f"fold {name}: {folder / 'predictions.csv'} holds {len(strays)} row(s) of subject(s) {', '.join(others)} "
                f"({_sample(strays)}), but the fold tests only its held-out subject {held_out}"
            )
        for row in rows:
            sample_id = str(row["sample_id"])
            if sample_id in seen:
                problems.append(f"clip {sample_id} is tested in two folds: {seen[sample_id]} and {name}")
            seen[sample_id] = name
            union[sample_id] = row
    pooled_path = run_dir / "predictions.csv"
    try:
        pooled = {str(row["sample_id"]): row for row in read_predictions(pooled_path)}
    except MerError as exc:
        return problems + [str(exc)]
    only_pooled = sorted(set(pooled) - set(union))
    only_folds = sorted(set(union) - set(pooled))
    differing = sorted(
        sample_id
        for sample_id in set(pooled) & set(union)
        if any(pooled[sample_id][k] != union[sample_id][k] for k in set(pooled[sample_id]) & set(union[sample_id]))
    )
    for ids, what in (
        (only_pooled, "in no fold's predictions.csv"),
        (only_folds, "in a fold's predictions.csv but missing"),
        (differing, "with values that differ from its fold's predictions.csv"),
    ):
        if ids:
            problems.append(
                f"{pooled_path}: {len(ids)} row(s) {what} ({_sample(ids)}): it is not the union of folds/*/predictions.csv"
            )
    return problems


def checked_predictions(
    run_dir: str | Path, warn: Callable[[str], Any] | None = None
) -> tuple[dict[str, Any], Predictions]:
    """run.json and the pooled predictions of a run folder, after every check of the module docstring;
    an InputProblems listing every problem otherwise. `warn` receives what could not be checked."""
    info = read_run_info(run_dir)
    if (Path(run_dir) / "folds").is_dir():
        problems = run_problems(run_dir, info)
        if problems:
            raise InputProblems(f"{run_dir} is not a valid leave-one-subject-out run; nothing was written", problems)
    elif warn is not None:
        warn(f"warning: {run_dir} has no folds/ folder: cannot check the folds for subject leakage")
    folds = info.get("folds")
    expected = (
        {fold: int(entry["n_test_samples"]) for fold, entry in folds.items()} if isinstance(folds, dict) else None
    )
    if expected is None and warn is not None:
        warn(f"warning: {Path(run_dir) / 'run.json'} lists no folds: cannot check the predictions per fold")
    return info, load_predictions(Path(run_dir) / "predictions.csv", info["label_names"], expected)
