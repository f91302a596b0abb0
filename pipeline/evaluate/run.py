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
from pipeline.evaluate.checks import checked_predictions
from pipeline.evaluate.metrics import bootstrap_intervals, compute_metrics, confusion, dataset_name
from pipeline.evaluate.plots import plot_confusion

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
    validated evaluate section (confusion_normalize, bootstrap, confidence). The run is checked first
    (`pipeline.evaluate.checks.checked_predictions`, the checks `mer report` makes too); `warn`
    receives what could not be checked.
    """
    info, predictions = checked_predictions(run_dir, warn)
    label_names = info["label_names"]
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
