"""A whole LOSO run, from a DI cache to a finished run folder, resumable.

Finished or not, every fold is read back from its files, and run.json, predictions.csv,
training_curve.csv and timings.json are written from those, so a resumed run is byte-identical to
an uninterrupted one (pipeline/train/resume.py); the work folder is finally renamed to `out`,
replacing the previous run. Every file of a run but timings.json (seconds, cores, jobs, backend)
depends only on the inputs, the settings and the torch threads per fold (`threads`; `auto` =
cores // jobs): with a fixed `threads`, any `jobs` gives the same bytes. timings.json goes into the
run folder unless a path outside it is given (the DVC pipeline keeps it in cache/timings/, so a
retrain that gives the same files changes nothing downstream). A run folder trained under the same
run key is kept as it is (`reusable_run`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_output
from pipeline.config import MODES
from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import read_dynamic_images
from pipeline.train.data import LosoData, check_fold_classes, check_input_size, load_loso_data
from pipeline.train.execution import FoldProgress, available_cores, fold_threads, run_loso
from pipeline.train.fold import EpochProgress, resolve_device
from pipeline.train.kernels import apply_cpu_kernels
from pipeline.train.models import build_model, input_normalization, weights_report
from pipeline.train.resume import dynamic_images_digest, exclusive_run, open_work_folder, reusable_run, run_key
from pipeline.train.run_files import (
    FoldResult,
    read_fold_result,
    read_fold_timing,
    training_curve,
    write_run,
    write_timings,
    write_training_curve,
)
from pipeline.train.settings import TrainSettings

RunOutcome = tuple[dict[str, Any], list[FoldResult], dict[str, Any]]


def train_run(
    data: LosoData,
    settings: TrainSettings,
    out: str | Path,
    inputs: Mapping[str, Any],
    fresh: bool = False,
    progress: FoldProgress | None = None,
    echo: Callable[[str], Any] = print,
    extra: Mapping[str, Any] | None = None,
    started: float | None = None,
    warn: Callable[[str], Any] | None = None,
    epoch_progress: EpochProgress | None = None,
    timings: str | Path | None = None,
) -> RunOutcome:
    """A whole, resumable LOSO run into the folder `out`: (run.json, fold results, timings.json).

    A finished run in `out` with the same run key (settings, the DIs of the phases read, weights file,
    code) is kept and read back instead (unless `fresh`): nothing is trained or written. `timings`:
    where timings.json goes (default: inside `out`).

    Folds already finished in the work folder under the same run key are not trained again;
    `inputs` is `dynamic_images_digest` of the cache. Every fold result is read back from its
    files, finished earlier or just now, so resuming changes no byte of the run (timings.json
    aside). `out` is replaced only once the run is complete; on any failure the work folder stays
    for the next attempt. The classes of every fold are checked first (`check_fold_classes`; its
    warnings go to `warn`, by default `echo`). One process at a time writes a run (`exclusive_run`).
    """
    started = time.perf_counter() if started is None else started
    out = Path(out)
    for warning in check_fold_classes(data, settings.missing_class):
        (warn or echo)(f"warning: {warning}")
    with exclusive_run(out):
        folds = data.folds
        threads = fold_threads(settings, len(folds))
        key = run_key(settings, inputs, threads)
        if not fresh and reusable_run(out, key):
            kept = _kept_run(out, folds, started)
            if kept is not None:
                echo(
                    f"unchanged: {out} was trained with the same settings, DIs of phases "
                    f"{', '.join(dict.fromkeys([*settings.train_phases, *settings.test_phases]))} and code; "
                    "kept as it is (--fresh trains again)"
                )
                return kept
        work, finished, message = open_work_folder(out, key, folds, fresh)
        if message:
            echo(message)
        todo = [fold for fold in folds if fold not in finished]
        timing_dir = work / "timings"
        timing_dir.mkdir(exist_ok=True)
        if todo:
            run_loso(
                data,
                settings,
                work,
                todo,
                progress,
                threads=threads,
                timing_dir=timing_dir,
                epoch_progress=epoch_progress,
            )
        results = [read_fold_result(work, fold, read_fold_timing(timing_dir, fold)) for fold in folds]
        run = write_run(work, results, settings, data.label_names, {**(extra or {}), "run_key": key["key"]})
        execution = {
            "total_seconds": round(time.perf_counter() - started, 3),
            "cores": available_cores(),
            "jobs": settings.jobs,
            "backend": settings.backend,
            "scheduler": settings.scheduler,
            "threads_per_fold": "set by each Dask worker" if threads is None else threads,
        }
        shutil.rmtree(timing_dir)
        (work / "resume.json").unlink()
        if timings is None:
            timing = write_timings(work / "timings.json", results, execution, resumed=finished)
        # The finished run replaces `out` through the same helper as every atomic output: one exchange
        # of the two folders where the system allows it; the old run is deleted only after the swap.
        with atomic_output(out) as tmp:
            os.replace(work, tmp)
        if timings is not None:
            with atomic_output(timings) as tmp:
                timing = write_timings(tmp, results, execution, resumed=finished)
        return run, results, timing


def _kept_run(out: Path, folds: list[str], started: float) -> RunOutcome | None:
    """A finished run folder read back (run.json, every fold), None when some file cannot be read."""
    try:
        run = json.loads((out / "run.json").read_text())
        results = [read_fold_result(out, fold) for fold in folds]
    except (OSError, ValueError, MerError):
        return None
    return run, results, {"total_seconds": round(time.perf_counter() - started, 3), "kept": True}


def train_cache(
    dynamic_images: str | Path,
    out: str | Path,
    settings: TrainSettings,
    fresh: bool = False,
    curve: str | Path | None = None,
    echo: Callable[[str], Any] = print,
    warn: Callable[[str], Any] | None = None,
    progress: FoldProgress | None = None,
    epoch_progress: EpochProgress | None = None,
    timings: str | Path | None = None,
    weights_key: str = "train.weights",
) -> RunOutcome:
    """`train_run` on the DI cache file `dynamic_images` (what `mer train` does), announced on `echo`;
    with `curve`, the run's training curve is also written to that CSV; `timings`: where timings.json
    goes (default: inside `out`); `weights_key`: the params key of `settings.weights`, for messages.
    Pretrained weights are reported on `echo` and in run.json (`pretrained_weights`)."""
    apply_cpu_kernels(settings.cpu_kernels)  # before torch computes anything here (and in the fold workers)
    device = resolve_device(settings.device)
    di = read_dynamic_images(dynamic_images)
    if len(di) == 0:
        raise MerError(f"{dynamic_images} holds no samples")
    for stack in di.images.values():  # refused before any model is built: DIs are never enlarged
        check_input_size(int(stack.shape[1]), settings.input_size, str(dynamic_images), settings.model)
    # Built once here: an unknown model name or unavailable pretrained weights fail before any work.
    probe = build_model(
        settings.model,
        len(di.label_names),
        settings.pretrained,
        settings.weights,
        settings.input_size,
        weights_key=weights_key,
    )
    mean, std = input_normalization(probe)
    report = weights_report(probe)
    del probe
    if report is not None:
        echo(report.line())
    phases = list(dict.fromkeys([*settings.train_phases, *settings.test_phases]))
    jitter_phases = [p for p in settings.train_phases if p != "full"] if MODES[settings.mode].jitter else []
    data = load_loso_data(
        di, phases, settings.input_size, mean, std, source=str(dynamic_images), jitter_phases=jitter_phases
    )
    folds = data.folds
    augment = ", ".join(f"{k} {v}" for k, v in settings.augment.to_dict().items()) if settings.augment else "none"
    where = (
        f"dask {settings.scheduler or 'local cluster'}"
        if settings.backend == "dask"
        else f"jobs {min(settings.jobs, len(folds))}"
    )
    echo(
        f"{settings.model} {settings.mode}: {len(folds)} LOSO folds, {len(di)} clips, train on {', '.join(settings.train_phases)}, "
        f"test on {', '.join(settings.test_phases)}, augmentation {augment}, input {settings.input_size}, {settings.epochs} epochs, "
        f"device {device}{' (bf16 autocast)' if settings.amp else ''}, {where}"
    )
    started = time.perf_counter()
    inputs = dynamic_images_digest(di, phases, jitter_phases)
    # Rows whose phase DI is no training sample (dynimg.degenerate: drop) change the samples, and the
    # step budget of baseline_steps (counted on dual_phase's samples): part of the run key when any.
    steps_of = MODES[settings.mode].steps_of
    counted = set(phases) | set(MODES[steps_of].train_phases if steps_of else ())
    dropped = {p: rows.tolist() for p, rows in sorted(data.dropped.items()) if p in counted and len(rows)}
    if dropped:
        inputs["dropped_rows"] = dropped
    extra = {
        "dynamic_images": str(dynamic_images),
        "dynamic_images_sha256": inputs["images_sha256"],  # = the cache's images/PHASE sha256 attributes
        "device": str(device),
        "torch_version": torch.__version__,
        **({"pretrained_weights": report.to_dict()} if report is not None else {}),
    }
    outcome = train_run(
        data,
        settings,
        out,
        inputs,
        fresh=fresh,
        progress=progress,
        epoch_progress=epoch_progress,
        echo=echo,
        extra=extra,
        started=started,
        warn=warn,
        timings=timings,
    )
    if curve:
        with atomic_output(curve) as curve_tmp:
            write_training_curve(curve_tmp, training_curve(outcome[1]))
    return outcome
