"""The files of a run folder: one fold's folder written and read back, and the run's top-level files.

    folds/<fold>/           model.pt, predictions.csv, manifest.json, train_log.csv (`write_fold`)
    predictions.csv         every fold's predictions, sorted by sample_id  } `write_run`
    training_curve.csv      loss and training accuracy per epoch           }
    run.json                settings, label names, folds                   }
    timings.json            seconds and how the folds ran (`write_timings`)

Every file but timings.json depends only on the inputs, the settings and the torch threads per fold.
The file formats of predictions.csv and train_log.csv are those of pipeline/io/runs.py.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_output
from pipeline.errors import MerError
from pipeline.io.runs import read_predictions, read_train_log, write_predictions, write_train_log
from pipeline.train.data import fold_dir_name
from pipeline.train.models import build_model, count_parameters
from pipeline.train.settings import TrainSettings


@dataclass
class FoldResult:
    fold: str
    directory: str
    predictions: list[dict[str, Any]]
    manifest: dict[str, Any]
    seconds: float | None  # None when unknown (a fold read back without its timing)
    log: list[dict[str, float]] = field(default_factory=list)


def fold_directory(fold: str) -> str:
    """A fold's folder relative to the run folder."""
    return f"folds/{fold_dir_name(fold)}"


def write_fold(
    out_dir: str | Path,
    result: FoldResult,
    model: torch.nn.Module,
    label_names: Sequence[str],
    timing_dir: str | Path | None = None,
    started: float = 0.0,
) -> None:
    """The fold folder `out_dir/<result.directory>/`, written under a temporary name and renamed when
    complete. With `timing_dir`, the seconds since `started` go to `timing_dir/<fold>.json` before the
    fold folder appears, so a finished fold has one."""
    with atomic_output(Path(out_dir) / result.directory, directory=True) as folder:
        # torch.save is byte-identical for identical tensors under the same file name
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
        write_predictions(folder / "predictions.csv", result.predictions, label_names)
        (folder / "manifest.json").write_text(json.dumps(result.manifest, indent=2) + "\n")
        write_train_log(folder / "train_log.csv", result.log)
        if timing_dir is not None:
            write_fold_timing(timing_dir, result.fold, time.perf_counter() - started)


def write_fold_timing(timing_dir: str | Path, fold: str, seconds: float) -> None:
    with atomic_output(Path(timing_dir) / f"{fold_dir_name(fold)}.json") as tmp:
        tmp.write_text(json.dumps({"fold": fold, "seconds": seconds}) + "\n")


def read_fold_timing(timing_dir: str | Path, fold: str) -> float | None:
    """A fold's seconds from `write_fold_timing`, None when missing or unreadable."""
    try:
        return float(json.loads((Path(timing_dir) / f"{fold_dir_name(fold)}.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_fold_result(out_dir: str | Path, fold: str, seconds: float | None = None) -> FoldResult:
    """A finished fold read back from `out_dir/folds/<fold>/` (predictions, manifest, train log)."""
    directory = fold_directory(fold)
    folder = Path(out_dir) / directory
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        rows = read_predictions(folder / "predictions.csv")
        log = read_train_log(folder / "train_log.csv")
        if not (folder / "model.pt").is_file():
            raise FileNotFoundError(folder / "model.pt")
        if manifest.get("held_out_subject") != fold or len(rows) != manifest.get("n_test_samples"):
            raise ValueError("its manifest does not match its predictions")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MerError(f"finished fold {folder} cannot be read ({exc}); delete it or rerun with --fresh") from exc
    return FoldResult(fold=fold, directory=directory, predictions=rows, manifest=manifest, seconds=seconds, log=log)


def training_curve(results: Sequence[FoldResult]) -> list[dict[str, float]]:
    """Per epoch: loss and training accuracy averaged over the folds (every fold trains the same epochs)."""
    by_epoch: dict[int, list[dict[str, float]]] = {}
    for result in results:
        for entry in result.log:
            by_epoch.setdefault(int(entry["epoch"]), []).append(entry)
    return [
        {
            "epoch": epoch,
            "loss": float(np.mean([e["loss"] for e in entries])),
            "train_accuracy": float(np.mean([e["train_accuracy"] for e in entries])),
            "folds": len(entries),
        }
        for epoch, entries in sorted(by_epoch.items())
    ]


def write_training_curve(path: str | Path, curve: Sequence[Mapping[str, float]]) -> None:
    """CSV `epoch,loss,train_accuracy,folds` that `dvc plots show` draws."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", "loss", "train_accuracy", "folds"])
        for entry in curve:
            writer.writerow([entry["epoch"], f"{entry['loss']:.6f}", f"{entry['train_accuracy']:.6f}", entry["folds"]])


def write_run(
    out_dir: str | Path,
    results: Sequence[FoldResult],
    settings: TrainSettings,
    label_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Top-level predictions.csv (all folds, sorted by sample_id), training_curve.csv and run.json.

    Nothing here depends on timings or on how the folds ran (jobs, backend): see `write_timings`.
    """
    out_dir = Path(out_dir)
    rows = sorted((row for r in results for row in r.predictions), key=lambda row: row["sample_id"])
    write_predictions(out_dir / "predictions.csv", rows, label_names)
    write_training_curve(out_dir / "training_curve.csv", training_curve(results))
    probe = build_model(settings.model, len(label_names), False, None, settings.input_size)
    run = {
        "model": settings.model,
        "mode": settings.mode,
        "params": settings.result_settings(),
        "label_names": list(label_names),
        "parameter_count": count_parameters(probe),
        "n_samples": len(rows),
        "folds": {
            r.fold: {
                "directory": r.directory,
                "n_train_samples": r.manifest["n_train_samples"],
                "n_test_samples": r.manifest["n_test_samples"],
                "optimizer_steps": r.manifest.get("optimizer_steps"),
                "final_train_loss": r.manifest["final_train_loss"],
            }
            for r in results
        },
        **(extra or {}),
    }
    weights = [r.manifest["phase_weights"] for r in results if "phase_weights" in r.manifest]
    if weights:  # the weighting modes: the phase samples' loss weight per epoch (the full DI's is 1)
        run["phase_weights"] = weights[0]
    (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return run


def write_timings(
    path: str | Path, results: Sequence[FoldResult], execution: Mapping[str, Any], resumed: Sequence[str] = ()
) -> dict[str, Any]:
    """timings.json: the one file of a run that differs between identical runs (seconds per fold and
    in all, and how the folds ran: cores, jobs, backend)."""
    timings = {
        **execution,
        "folds": {
            r.fold: {"seconds": None if r.seconds is None else round(r.seconds, 3), "resumed": r.fold in resumed}
            for r in results
        },
    }
    Path(path).write_text(json.dumps(timings, indent=2) + "\n")
    return timings
