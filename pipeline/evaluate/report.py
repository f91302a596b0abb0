"""The results table of an experiment: models x modes x datasets, with gains over the baselines.

A cell (dataset, model, mode) may hold several runs, one per training seed (`experiment.seeds`):
its figure is the mean over seeds of the pooled LOSO metric, with the seed-to-seed standard
deviation, and its interval and paired p-values come from a two-level bootstrap over subjects and
seeds (pipeline/evaluate/metrics.py). Every mode's gain is shown against the reference mode (same
epochs, `report.reference_mode`) and against the baseline that took the same optimizer steps
(`same_steps_reference`: baseline_steps for dual_phase and dual_phase_spatial, baseline for
spatial), when the experiment ran it. A mode that varies another (`Mode.variant_of`: the
beyond-the-paper variants of dual_phase) also shows its gain over that mode.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.atomic import atomic_output
from pipeline.config import MODES, PHASES_FULL, ReportSection
from pipeline.errors import MerError
from pipeline.evaluate.checks import checked_predictions
from pipeline.evaluate.metrics import (
    Predictions,
    dataset_name,
    paired_seed_comparison,
    present_labels,
    seed_bootstrap,
    seed_summary,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    seed: int | None = None


def step_budget(mode: str) -> int:
    """Samples per training clip that set a mode's optimizer steps over the same epochs."""
    spec = MODES[mode]
    return len(MODES[spec.steps_of].train_phases if spec.steps_of else spec.train_phases)


def same_steps_reference(mode: str, present: Sequence[str]) -> str | None:
    """The plain baseline (full DI, no augmentation) among `present` that takes as many optimizer
    steps as `mode`; None for a baseline itself or when the experiment has none."""
    if mode not in MODES or MODES[mode].train_phases == PHASES_FULL and not MODES[mode].spatial:
        return None
    for other in present:
        spec = MODES.get(other)
        if spec and spec.train_phases == PHASES_FULL and not spec.spatial and step_budget(other) == step_budget(mode):
            return other
    return None


def _gain_columns(row: dict[str, Any], prefix: str, gain: Mapping[str, float], n_resamples: int) -> None:
    row[prefix] = gain["difference"]
    row[f"{prefix}_rel"] = gain["difference"] / gain["reference"] if gain["reference"] else float("nan")
    if n_resamples:
        row[f"{prefix}_low"], row[f"{prefix}_high"] = gain["low"], gain["high"]
        row[f"{prefix}_p"] = gain["p_not_better"]


def results_table(
    runs: list[RunResult], reference: str, n_resamples: int, level: float, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per (dataset, model): per mode the seed-mean metrics with their seed spread and
    intervals, the paired gain over the reference mode (same epochs) and over the same-steps
    baseline on the same clips (absolute, relative, interval, bootstrap p over subjects and seeds)."""
    cells: dict[tuple[str, str], dict[str, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        cells[(run.dataset, run.model)][run.mode].append(run)
    rows = []
    for (dataset, model), by_mode in sorted(cells.items()):
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "n_clips": len(next(iter(by_mode.values()))[0].predictions),
            # classes in the ground truth, those the metrics average over: chance is 1 / n_classes
            "n_classes": len(present_labels(next(iter(by_mode.values()))[0].predictions.y_true)),
        }
        present = sorted(by_mode, key=lambda mode: (mode != reference, mode))
        for mode in present:
            seeded = [r.predictions for r in sorted(by_mode[mode], key=lambda r: (r.seed is None, r.seed or 0))]
            spread = seed_summary(seeded)
            intervals = seed_bootstrap(seeded, n_resamples, level, seed) if n_resamples else {}
            row[f"{mode}_seeds"] = len(seeded)
            baselines = {"gain": reference if mode != reference else None}
            steps_reference = same_steps_reference(mode, present)
            baselines["gain_steps"] = steps_reference
            variant_of = MODES[mode].variant_of if mode in MODES else None
            baselines["gain_variant"] = variant_of if variant_of != reference else None
            if variant_of and variant_of in by_mode:
                row[f"{mode}_variant_of"] = variant_of
            if steps_reference:
                row[f"{mode}_steps_reference"] = steps_reference
            gains = {
                column: paired_seed_comparison(
                    [r.predictions for r in by_mode[base]], seeded, n_resamples or 1, level, seed
                )
                for column, base in baselines.items()
                if base and base in by_mode
            }
            for metric in METRIC_NAMES:
                row[f"{mode}_{metric}"] = spread[metric]["mean"]
                if len(seeded) > 1:
                    row[f"{mode}_{metric}_sd"] = spread[metric]["sd"]
                    row[f"{mode}_{metric}_min"] = spread[metric]["min"]
                    row[f"{mode}_{metric}_max"] = spread[metric]["max"]
                if intervals:
                    row[f"{mode}_{metric}_low"], row[f"{mode}_{metric}_high"] = intervals[metric]
                for column, gain in gains.items():
                    _gain_columns(row, f"{mode}_{metric}_{column}", gain[metric], n_resamples)
        rows.append(row)
    return rows


def _gain_text(row: dict[str, Any], key: str, against: str) -> str:
    text = f"{100 * row[key]:+.1f} pt ({100 * row[f'{key}_rel']:+.1f} %)"
    if f"{key}_low" in row:
        text += f" [{100 * row[f'{key}_low']:+.1f}, {100 * row[f'{key}_high']:+.1f}]"
    if f"{key}_p" in row:
        text += f", p={row[f'{key}_p']:.3f}"
    return f"<br>vs {against}: {text}"


def modes_in(rows: list[dict[str, Any]], reference: str) -> list[str]:
    modes = {key[: -len("_accuracy")] for row in rows for key in row if key.endswith("_accuracy")}
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
                if f"{key}_sd" in row:
                    text += f" ±{100 * row[f'{key}_sd']:.1f}"
                if f"{key}_low" in row:
                    text += f" [{100 * row[f'{key}_low']:.1f}, {100 * row[f'{key}_high']:.1f}]"
                if f"{key}_gain" in row:
                    text += _gain_text(row, f"{key}_gain", f"{reference} (same epochs)")
                if f"{key}_gain_variant" in row:
                    text += _gain_text(row, f"{key}_gain_variant", f"{row[f'{mode}_variant_of']} (same epochs)")
                if f"{key}_gain_steps" in row:
                    text += _gain_text(row, f"{key}_gain_steps", f"{row[f'{mode}_steps_reference']} (same steps)")
                cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({row[f"{mode}_seeds"] for row in rows for mode in modes if f"{mode}_seeds" in row})
    seeds_text = "/".join(map(str, seeds))
    notes = [
        "",
        f"Values in percent, pooled over all LOSO folds, mean over {seeds_text} training seed(s) per cell; ±: the",
        f"seed-to-seed standard deviation; brackets: {int(level * 100)} % bootstrap interval over subjects and seeds",
        "(each resample draws subjects, and seeds, with replacement). Below a value: the gain on the same clips in",
        f"points and relative, with its interval, over `{reference}` trained for the same epochs and over the baseline",
        "trained for the same optimizer steps (baseline_steps: as many steps as dual_phase), and p, the share of",
        "resamples in which the mode is not better (small means the gain is unlikely to be subject or seed noise).",
        "UF1 and UAR average over the run's classes in the headline and in every resample alike.",
    ]
    variants = sorted({mode for row in rows for mode in modes if f"{mode}_variant_of" in row})
    if variants:  # only then, so that the paper's comparison keeps its bytes
        notes.append(f"{', '.join(variants)}: also the gain over the mode each varies, trained for the same epochs.")
    return "\n".join(lines + notes) + "\n"


def _wrap(name: str, width: int = 12) -> str:
    """`name` on lines of about `width` characters, broken after `_` or `-` (model names have no spaces)."""
    lines, line = [], ""
    for piece in re.findall(r"[^_\-]+[_\-]?|[_\-]", name):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join(lines + [line]) if line else "\n".join(lines)


def results_figure(rows: list[dict[str, Any]], reference: str, level: float | None = None) -> Figure:
    """Grouped bars, one panel per metric stacked vertically: a group per (dataset, model), a bar per
    mode, error bars = intervals (clipped at the bar: a degenerate interval draws none), a dashed
    chance line at 1 / number of classes, the legend right of the panels.

    The figure grows with the number of bars; model names are wrapped and the labels rotated when
    they would not fit under their group. The caller closes the figure (`bar_chart` does).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = modes_in(rows, reference) or [reference]
    n_groups, n_modes = max(1, len(rows)), len(modes)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    labels = [_wrap(row["model"]) + (f"\n{row['dataset']}" if len(datasets) > 1 else "") for row in rows]
    group_inches = 0.28 * n_modes + 0.4
    label_inches = max((len(line) for text in labels for line in text.split("\n")), default=1) * 0.075
    rotation = 30 if label_inches > 0.9 * group_inches else 0
    lines = max((text.count("\n") + 1 for text in labels), default=1)
    legend_inches = 0.2 + 0.075 * max(len(m) for m in [*modes, "chance (1/classes)"]) + 0.5
    width = max(6.0, 1.0 + n_groups * group_inches + legend_inches)
    bottom = 0.2 * lines + (0.6 * label_inches if rotation else 0.2)
    figure, axes = plt.subplots(3, 1, figsize=(width, 3 * 2.2 + bottom + 0.6), sharex=True, squeeze=False)
    bar = 0.8 / n_modes
    x = np.arange(len(rows))
    chances = np.array([100 / row["n_classes"] if row.get("n_classes") else np.nan for row in rows])
    same = bool(len(rows)) and bool(np.allclose(chances, chances[0]))
    chance = f"chance (1/{rows[0]['n_classes']})" if same else "chance (1/classes)"
    for axis, metric in zip(axes[:, 0], METRIC_NAMES):
        for i, mode in enumerate(modes):
            values = np.array([row.get(f"{mode}_{metric}", np.nan) for row in rows], float) * 100
            low = np.array([row.get(f"{mode}_{metric}_low", np.nan) for row in rows], float) * 100
            high = np.array([row.get(f"{mode}_{metric}_high", np.nan) for row in rows], float) * 100
            errors = None
            if not np.isnan(low).all():
                # a percentile interval need not hold the value (and one without spread can miss it by
                # a rounding error): the bar shows the part of the interval on each side, at least 0
                errors = np.clip(np.vstack([values - low, high - values]), 0, None)
            axis.bar(x + (i - (n_modes - 1) / 2) * bar, values, bar, yerr=errors, capsize=2, label=mode)
        if len(rows) and not np.isnan(chances).all():
            if same:
                axis.axhline(chances[0], color="0.3", linestyle="--", linewidth=1, label=chance)
            else:
                axis.hlines(chances, x - 0.45, x + 0.45, colors="0.3", linestyles="--", linewidth=1, label=chance)
        axis.set_ylim(0, 100)
        axis.set_ylabel(_LABELS[metric] + " (%)")
        axis.grid(axis="y", alpha=0.3)
        axis.set_xlim(-0.6, len(rows) - 0.4)
    axes[-1, 0].set_xticks(x, labels, fontsize=8, rotation=rotation, ha="right" if rotation else "center")
    interval = (
        f", bars: {int(round(level * 100))} % interval over subjects"
        if level and any(key.endswith("_low") for row in rows for key in row)
        else ""
    )
    axes[0, 0].set_title(f"{', '.join(datasets) or 'no runs'}: models x modes{interval}", fontsize=10)
    handles, names = axes[0, 0].get_legend_handles_labels()
    right = 1 - legend_inches / width
    figure.legend(handles, names, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0, right, 1))
    return figure


def run_name(dataset: str, model: str, mode: str, seed: int) -> str:
    """The run folder name of one cell and seed (dvc.yaml's train matrix)."""
    return f"{dataset}-{model}-{mode}-s{seed}"


def bar_chart(rows: list[dict[str, Any]], reference: str, path: str | Path, level: float | None = None) -> None:
    """`results_figure` written as a PNG at `path`; the figure is closed whatever happens."""
    import matplotlib.pyplot as plt

    figure = results_figure(rows, reference, level)
    try:
        figure.savefig(path, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)


def experiment_runs(runs_dir: str | Path, experiment: Mapping[str, Any]) -> tuple[str, ...]:
    """The run folders DATASET-MODEL-MODE-sSEED under `runs_dir` of every cell and seed of an
    `experiment` section."""
    keys = ("datasets", "models", "modes", "seeds")
    cells = itertools.product(*(experiment.get(key) or ([0] if key == "seeds" else []) for key in keys))
    return tuple(str(Path(runs_dir) / run_name(*cell)) for cell in cells)


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
        params = info.get("params") if isinstance(info.get("params"), dict) else {}
        results.append(
            RunResult(
                Path(run_dir).name,
                dataset_name(predictions),
                str(info.get("model")),
                str(info.get("mode")),
                predictions,
                params.get("seed"),
            )
        )
    seen = {}
    for result in results:
        key = (result.dataset, result.model, result.mode, result.seed)
        if key in seen:
            raise MerError(
                f"runs {seen[key]} and {result.name} are both {key[:3]} with seed {result.seed}; give each cell of "
                "the experiment one run per training seed"
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
        bar_chart(rows, reference, tmp / "results.png", level)
    return len(results), len(rows)
