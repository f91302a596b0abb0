"""The results table of an experiment: models x modes x datasets, with gains over the baseline."""

from __future__ import annotations

import csv
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_output
from pipeline.config import ReportSection
from pipeline.errors import MerError
from pipeline.evaluate.checks import checked_predictions
from pipeline.evaluate.metrics import Predictions, bootstrap_intervals, paired_comparison, summary

METRIC_NAMES = ("accuracy", "uf1", "uar")
_LABELS = {"accuracy": "Acc", "uf1": "UF1", "uar": "UAR"}


@dataclass
class RunResult:
    """One run of the experiment: its cell (dataset, model, mode) and its pooled predictions."""

    name: str
    dataset: str
    model: str
    mode: str
    predictions: Predictions


def dataset_of(predictions: Predictions) -> str:
    names = sorted(set(predictions.datasets.tolist()) - {""})
    return "+".join(names) if names else "unknown"


def results_table(
    runs: list[RunResult], reference: str, n_resamples: int, level: float, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per (dataset, model): per mode the metrics with intervals and the paired gain over
    the reference mode on the same clips (absolute, relative, interval, bootstrap p)."""
    cells: dict[tuple[str, str], dict[str, RunResult]] = defaultdict(dict)
    for run in runs:
        cells[(run.dataset, run.model)][run.mode] = run
    rows = []
    for (dataset, model), by_mode in sorted(cells.items()):
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "n_clips": len(next(iter(by_mode.values())).predictions),
        }
        base = by_mode.get(reference)
        for mode, run in sorted(by_mode.items(), key=lambda item: (item[0] != reference, item[0])):
            observed = summary(run.predictions.y_true, run.predictions.y_pred)
            intervals = bootstrap_intervals(run.predictions, n_resamples, level, seed) if n_resamples else {}
            gains = (
                paired_comparison(base.predictions, run.predictions, n_resamples or 1, level, seed)
                if base and mode != reference
                else {}
            )
            for metric in METRIC_NAMES:
                row[f"{mode}_{metric}"] = observed[metric]
                if intervals:
                    row[f"{mode}_{metric}_low"], row[f"{mode}_{metric}_high"] = intervals[metric]
                if gains:
                    gain = gains[metric]
                    row[f"{mode}_{metric}_gain"] = gain["difference"]
                    row[f"{mode}_{metric}_gain_rel"] = (
                        gain["difference"] / gain["reference"] if gain["reference"] else float("nan")
                    )
                    if n_resamples:
                        row[f"{mode}_{metric}_gain_low"], row[f"{mode}_{metric}_gain_high"] = gain["low"], gain["high"]
                        row[f"{mode}_{metric}_gain_p"] = gain["p_not_better"]
        rows.append(row)
    return rows


def modes_in(rows: list[dict[str, Any]], reference: str) -> list[str]:
    modes = {key.rsplit("_", 1)[0] for row in rows for key in row if key.endswith("_accuracy")}
    return sorted(modes, key=lambda mode: (mode != reference, mode))


def markdown_table(rows: list[dict[str, Any]], reference: str, level: float) -> str:
    """A GitHub-flavoured markdown table: value [interval] per mode, gains in points and percent."""
    modes = modes_in(rows, reference)
    header = ["dataset", "model"]
    for mode in modes:
        header += [f"{mode} {_LABELS[m]}" for m in METRIC_NAMES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["dataset"], row["model"]]
        for mode in modes:
            for metric in METRIC_NAMES:
                key = f"{mode}_{metric}"
                if key not in row:
                    cells.append("")
                    continue
                text = f"{100 * row[key]:.1f}"
                if f"{key}_low" in row:
                    text += f" [{100 * row[f'{key}_low']:.1f}, {100 * row[f'{key}_high']:.1f}]"
                if f"{key}_gain" in row:
                    text += f"<br>{100 * row[f'{key}_gain']:+.1f} pt ({100 * row[f'{key}_gain_rel']:+.1f} %)"
                    if f"{key}_gain_p" in row:
                        text += f", p={row[f'{key}_gain_p']:.3f}"
                cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Values in percent, pooled over all LOSO folds; brackets: {int(level * 100)} % bootstrap interval over subjects.",
        f"Below a value: gain over `{reference}` on the same clips in points and relative, with the share of subject",
        "resamples in which the mode is not better (p; small means the gain is unlikely to be noise).",
    ]
    return "\n".join(lines + notes) + "\n"


def bar_chart(rows: list[dict[str, Any]], reference: str):
    """Grouped bars: one group per (dataset, model), one bar per mode, error bars = intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = modes_in(rows, reference)
    groups = [f"{row['dataset']}\n{row['model']}" for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(4 + 1.6 * len(rows) * max(1, len(modes)) * 0.6, 4), squeeze=False)
    width = 0.8 / max(1, len(modes))
    for axis, metric in zip(axes[0], METRIC_NAMES):
        for i, mode in enumerate(modes):
            values = np.array([row.get(f"{mode}_{metric}", np.nan) for row in rows]) * 100
            low = np.array([row.get(f"{mode}_{metric}_low", np.nan) for row in rows]) * 100
            high = np.array([row.get(f"{mode}_{metric}_high", np.nan) for row in rows]) * 100
            errors = np.vstack([values - low, high - values]) if not np.isnan(low).all() else None
            axis.bar(
                np.arange(len(rows)) + (i - (len(modes) - 1) / 2) * width,
                values,
                width,
                yerr=errors,
                capsize=3,
                label=mode,
            )
        axis.set_xticks(np.arange(len(rows)), groups, fontsize=8)
        axis.set_ylim(0, 100)
        axis.set_title(_LABELS[metric] + " (%)")
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=len(modes), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    return figure


def experiment_runs(runs_dir: str | Path, experiment: Mapping[str, Any]) -> tuple[str, ...]:
    """The run folders DATASET-MODEL-MODE under `runs_dir` of every cell of an `experiment` section."""
    cells = itertools.product(*(experiment.get(key) or [] for key in ("datasets", "models", "modes")))
    return tuple(str(Path(runs_dir) / f"{d}-{m}-{mode}") for d, m, mode in cells)


def build_report(
    runs: Sequence[str | Path],
    out: str | Path,
    settings: ReportSection,
    warn: Callable[[str], Any] | None = None,
) -> tuple[int, int]:
    """Write results.md, results.csv and results.png of `runs` into `out` (replaced as a whole).

    `settings` is the validated report section (reference_mode, bootstrap, confidence). Each cell of
    the experiment must have one run, and every run passes the checks of `mer evaluate`
    (`checked_predictions`; `warn` receives what could not be checked). Returns (number of runs,
    number of dataset x model rows).
    """
    if not runs:
        raise MerError(
            "no runs to report: give --run folders, or --runs-dir with an `experiment` section in the params"
        )
    reference, resamples, level = settings.reference_mode, settings.bootstrap, settings.confidence
    results = []
    for run_dir in runs:
        info, predictions = checked_predictions(run_dir, warn)  # what evaluate refuses, report refuses
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
    return len(results), len(rows)
