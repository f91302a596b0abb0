"""Evaluating one run folder: the leave-one-subject-out checks, the metrics, and the reports folder's files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_output
from pipeline.config import EvaluateSection
from pipeline.errors import InputProblems
from pipeline.evaluate.metrics import bootstrap_intervals, compute_metrics, confusion, dataset_name, load_predictions
from pipeline.evaluate.plots import plot_confusion
from pipeline.io.runs import read_run_info

HEADLINE_KEYS = ("accuracy", "uf1", "uar", "n_samples", "n_subjects", "model", "mode")


def evaluate_run(
    run_dir: str | Path,
    out: str | Path,
    metrics_file: str | Path | None,
    settings: EvaluateSection,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check a run, compute its pooled metrics and write the reports folder `out`; the metrics.

    `out` is replaced as a whole and gets confusion_matrix.png/.csv, per_class.csv,
    per_subject.csv, results.csv, details.json (every figure) and metrics.json (the headline
    figures), the latter written to `metrics_file` instead when one is given. `settings` is the
    validated evaluate section (confusion_normalize, bootstrap, confidence). `warn` receives what
    could not be checked.
    """
    info = read_run_info(run_dir)
    if not (Path(run_dir) / "folds").is_dir() and warn is not None:
        warn(f"warning: {run_dir} has no folds/ folder: cannot check the folds for subject leakage")
    leaks = leakage_problems(run_dir)
    if leaks:
        raise InputProblems(f"{run_dir} is not a valid leave-one-subject-out run; nothing was evaluated", leaks)
    label_names = info["label_names"]
    folds = info.get("folds")
    expected = (
        {fold: int(entry["n_test_samples"]) for fold, entry in folds.items()} if isinstance(folds, dict) else None
    )
    predictions = load_predictions(Path(run_dir) / "predictions.csv", label_names, expected)
    metrics = compute_metrics(predictions)
    metrics = {
        "accuracy": metrics.pop("accuracy"),
        "uf1": metrics.pop("uf1"),
        "uar": metrics.pop("uar"),
        "n_samples": metrics.pop("n_samples"),
        "model": info.get("model"),
        "mode": info.get("mode"),
        **metrics,
    }
    counts = confusion(predictions)
    title = f"{dataset_name(predictions)} - {info.get('model', '')} {info.get('mode', '')}: acc {metrics['accuracy']:.3f}, UF1 {metrics['uf1']:.3f}, UAR {metrics['uar']:.3f}"
    # `dvc metrics show` lists every number of the file: keep it to the headline figures and put the
    # per-class and per-subject tables in the reports folder.
    headline = {key: metrics[key] for key in HEADLINE_KEYS}
    resamples = settings.bootstrap
    if resamples > 0:
        level = settings.confidence
        intervals = bootstrap_intervals(predictions, resamples, level)
        metrics["intervals"] = headline["intervals"] = {"level": level, "resamples": resamples, **intervals}
    if "per_dataset" in metrics:
        headline["per_dataset"] = metrics["per_dataset"]
    text = json.dumps(headline, indent=2) + "\n"
    with atomic_output(out, directory=True) as tmp:
        plot_confusion(
            counts,
            label_names,
            tmp / "confusion_matrix.png",
            settings.confusion_normalize,
            title.strip(),
        )
        write_confusion_csv(tmp / "confusion_matrix.csv", counts, label_names)
        write_per_class_csv(tmp / "per_class.csv", metrics)
        write_per_subject_csv(tmp / "per_subject.csv", metrics)
        write_results_csv(tmp / "results.csv", Path(run_dir).name, info, metrics)
        (tmp / "details.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if metrics_file is None:
            (tmp / "metrics.json").write_text(text)
    if metrics_file is not None:
        with atomic_output(metrics_file) as tmp_file:
            Path(tmp_file).write_text(text)
    return metrics


def leakage_problems(run_dir: str | Path) -> list[str]:
    """Problems that would make LOSO results invalid: a fold trained on its held-out subject, or a
    clip tested in two folds. Read from each fold's manifest and predictions under folds/ (a run
    without fold folders, such as predictions from another tool, cannot be checked)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    folds = sorted(p for p in (Path(run_dir) / "folds").glob("*") if p.is_dir())
    for fold in folds:
        manifest_path = fold / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"fold {fold.name}: unreadable manifest {manifest_path} ({exc})")
            continue
        held_out = manifest.get("held_out_subject")
        if held_out in set(manifest.get("trained_on_subjects", [])):
            problems.append(
                f"fold {fold.name}: trained on its held-out subject {held_out} (test set leaked into training)"
            )
        try:
            with open(fold / "predictions.csv", newline="") as handle:
                ids = [row["sample_id"] for row in csv.DictReader(handle)]
        except (OSError, KeyError) as exc:
            problems.append(f"fold {fold.name}: unreadable predictions ({exc})")
            continue
        for sample_id in ids:
            if sample_id in seen:
                problems.append(f"clip {sample_id} is tested in two folds: {seen[sample_id]} and {fold.name}")
            seen[sample_id] = fold.name
    return problems


def write_per_class_csv(path: str | Path, metrics: dict[str, Any]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, row in metrics["per_class"].items():
            writer.writerow(
                [name, f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}", row["support"]]
            )


def write_per_subject_csv(path: str | Path, metrics: dict[str, Any]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["subject", "accuracy", "n_correct", "n_samples"])
        for name, row in metrics["per_subject"].items():
            writer.writerow([name, f"{row['accuracy']:.6f}", row["n_correct"], row["n_samples"]])


def write_confusion_csv(path: str | Path, counts: np.ndarray, label_names: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true \\ predicted", *label_names])
        for name, row in zip(label_names, counts):
            writer.writerow([name, *map(int, row)])


def write_results_csv(path: str | Path, run_name: str, info: Mapping[str, Any], metrics: dict[str, Any]) -> None:
    """One row for the whole run, then one per dataset when the run mixes datasets."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["run", "model", "mode", "scope", "accuracy", "uf1", "uar", "n_samples"])
        scopes = [("all", metrics)] + list(metrics.get("per_dataset", {}).items())
        for scope, row in scopes:
            writer.writerow(
                [
                    run_name,
                    info.get("model", ""),
                    info.get("mode", ""),
                    scope,
                    f"{row['accuracy']:.4f}",
                    f"{row['uf1']:.4f}",
                    f"{row['uar']:.4f}",
                    row["n_samples"],
                ]
            )
