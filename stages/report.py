"""Stage `report`: the experiment's results table (markdown, CSV) and grouped bar chart."""

from __future__ import annotations

import click

from pipeline.evaluate.report import build_report, experiment_runs
from stages.common import params_option, stage_params


@click.command("report")
@click.option(
    "--run",
    "runs",
    type=click.Path(file_okay=False),
    multiple=True,
    help="Run folder from `mer train` (repeat for every cell of the experiment).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of runs named DATASET-MODEL-MODE: report every cell of params `experiment`.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Folder for results.md, results.csv, results.png."
)
@params_option
def report(runs: tuple[str, ...], runs_dir: str | None, out: str, params_file: str) -> None:
    """Tabulate models x modes x datasets with intervals and gains over the baseline."""
    params = stage_params(params_file)
    if runs_dir is not None:
        runs = runs + experiment_runs(runs_dir, params.section("experiment").model_dump())
    n_runs, n_rows = build_report(
        runs, out, params.section("report"), warn=lambda message: click.echo(message, err=True)
    )
    click.echo(f"{n_runs} runs, {n_rows} dataset x model rows -> {out}/results.md, results.csv, results.png")
