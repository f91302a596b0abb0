"""Stage `report`: the experiment's results table (markdown, CSV) and grouped bar chart."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import click

from pipeline.atomic import atomic_output
from pipeline.config import load_section
from pipeline.errors import MerError
from pipeline.evaluate.metrics import load_predictions
from pipeline.evaluate.report import RunResult, bar_chart, dataset_of, markdown_table, results_table
from pipeline.io.runs import read_run_info
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
    params = stage_params(params_file, "report")
    if runs_dir is not None:
        experiment = load_section(params_file, "experiment")
        cells = itertools.product(*(experiment.get(key) or [] for key in ("datasets", "models", "modes")))
        runs = runs + tuple(str(Path(runs_dir) / f"{d}-{m}-{mode}") for d, m, mode in cells)
    if not runs:
        raise MerError(
            "no runs to report: give --run folders, or --runs-dir with an `experiment` section in the params"
        )
    reference = str(params.get("reference_mode", "baseline"))
    resamples, level = int(params.get("bootstrap", 1000)), float(params.get("confidence", 0.95))
    results = []
    for run_dir in runs:
        info = read_run_info(run_dir)
        predictions = load_predictions(Path(run_dir) / "predictions.csv", info["label_names"])
        results.append(
            RunResult(
                Path(run_dir).name, dataset_of(predictions), str(info.get("model")), str(info.get("mode")), predictions
            )
        )
    seen = {}
    for result in results:
        key = (result.dataset, result.model, result.mode)
        if key in seen:
            raise MerError(
                f"runs {seen[key]} and {result.name} are both {key}; give each cell of the experiment one run"
            )
        seen[key] = result.name
    rows = results_table(results, reference, resamples, level)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_output(out, directory=True) as tmp:
        (tmp / "results.md").write_text(markdown_table(rows, reference, level))
        with open(tmp / "results.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()}
                )
        bar_chart(rows, reference).savefig(tmp / "results.png", dpi=100)
    click.echo(f"{len(results)} runs, {len(rows)} dataset x model rows -> {out}/results.md, results.csv, results.png")
