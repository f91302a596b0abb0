"""Stage `evaluate`: pooled LOSO metrics, confusion matrix and result tables of one run."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.evaluate.run import evaluate_run
from stages.common import params_option, stage_settings


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
    params = stage_settings(params_file, "evaluate")
    metrics = evaluate_run(run_dir, out, metrics_file, params, warn=lambda message: click.echo(message, err=True))
    click.echo(
        f"{Path(run_dir).name}: accuracy {metrics['accuracy']:.4f}, UF1 {metrics['uf1']:.4f}, UAR {metrics['uar']:.4f} "
        f"over {metrics['n_samples']} clips, {metrics['n_subjects']} subjects -> {metrics_file or Path(out) / 'metrics.json'}"
    )
