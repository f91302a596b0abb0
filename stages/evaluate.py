"""Stage `evaluate`: pooled LOSO metrics, confusion matrix and result tables of one run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from pipeline.atomic import atomic_output
from pipeline.errors import InputProblems, MerError
from pipeline.evaluate.metrics import (
    bootstrap_intervals,
    compute_metrics,
    confusion,
    leakage_problems,
    load_predictions,
    write_confusion_csv,
    write_per_class_csv,
    write_per_subject_csv,
)
from pipeline.evaluate.plots import plot_confusion
from pipeline.io.runs import read_run_info
from stages.common import params_option, stage_params

_KNOWN = {"confusion_normalize", "bootstrap", "confidence"}


@click.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run folder from `mer train`.")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Reports folder to write (replaced as a whole)."
)
@click.option(
    "--metrics",
    "metrics_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Metrics JSON to write (default: OUT/metrics.json).",
)
@params_option
def evaluate(run_dir: str, out: str, metrics_file: str | None, params_file: str) -> None:
    """Accuracy, UF1 and UAR over the predictions pooled across all folds."""
    params = stage_params(params_file, "evaluate")
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise MerError(f"{params_file}: unknown evaluate keys {unknown}; known keys: {sorted(_KNOWN)}")
    info = read_run_info(run_dir)
    if not (Path(run_dir) / "folds").is_dir():
        click.echo(f"warning: {run_dir} has no folds/ folder: cannot check the folds for subject leakage", err=True)
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
    title = f"{info.get('model', '')} {info.get('mode', '')}: acc {metrics['accuracy']:.3f}, UF1 {metrics['uf1']:.3f}, UAR {metrics['uar']:.3f}"
    # `dvc metrics show` lists every number of the file: keep it to the headline figures and put the
    # per-class and per-subject tables in the reports folder.
    headline = {key: metrics[key] for key in ("accuracy", "uf1", "uar", "n_samples", "n_subjects", "model", "mode")}
    resamples = int(params.get("bootstrap", 1000))
    if resamples > 0:
        level = float(params.get("confidence", 0.95))
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
            bool(params.get("confusion_normalize", True)),
            title.strip(),
        )
        write_confusion_csv(tmp / "confusion_matrix.csv", counts, label_names)
        write_per_class_csv(tmp / "per_class.csv", metrics)
        write_per_subject_csv(tmp / "per_subject.csv", metrics)
        with open(tmp / "results.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["run", "model", "mode", "scope", "accuracy", "uf1", "uar", "n_samples"])
            scopes = [("all", metrics)] + list(metrics.get("per_dataset", {}).items())
            for scope, row in scopes:
                writer.writerow(
                    [
                        Path(run_dir).name,
                        info.get("model", ""),
                        info.get("mode", ""),
                        scope,
                        f"{row['accuracy']:.4f}",
                        f"{row['uf1']:.4f}",
                        f"{row['uar']:.4f}",
                        row["n_samples"],
                    ]
                )
        (tmp / "details.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if metrics_file is None:
            (tmp / "metrics.json").write_text(text)
    if metrics_file is not None:
        with atomic_output(metrics_file) as tmp_file:
            Path(tmp_file).write_text(text)
    click.echo(
        f"{Path(run_dir).name}: accuracy {metrics['accuracy']:.4f}, UF1 {metrics['uf1']:.4f}, UAR {metrics['uar']:.4f} "
        f"over {metrics['n_samples']} clips, {metrics['n_subjects']} subjects -> {metrics_file or Path(out) / 'metrics.json'}"
    )
