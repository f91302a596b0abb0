"""Where and how many folds run at a time: joblib on this machine or on a Dask cluster, and the
torch threads each fold gets.

Folds are independent and run through joblib: `backend: loky` (processes on this machine) or
`backend: dask`, which runs the same function through joblib's dask backend on a Dask cluster
(`scheduler: tcp://host:8786`; the output folder must then be on a file system the workers share).
Predictions depend on the torch threads per fold (`threads`; `auto` = cores // jobs), not on `jobs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import MerError
from pipeline.train.data import LosoData
from pipeline.train.fold import EpochProgress, train_fold
from pipeline.train.run_files import FoldResult
from pipeline.train.settings import TrainSettings

# Wraps the fold results as they arrive (e.g. in a progress bar): (results, number of folds) -> results.
FoldProgress = Callable[[Iterator[FoldResult], int], Iterator[FoldResult]]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads() -> int:
    """Torch threads for a fold on a Dask worker: the worker's OMP_NUM_THREADS (Dask sets 1 by default,
    config `distributed.nanny.pre-spawn-environ`), else the machine's cores / the worker's threads."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
        if value >= 1:
            return value
    except ValueError:
        pass
    try:
        from distributed import get_worker

        nthreads = int(getattr(get_worker(), "nthreads", 1) or 1)
    except (ImportError, ValueError):  # not on a Dask worker
        nthreads = 1
    return max(1, available_cores() // nthreads)


def fold_threads(settings: TrainSettings, folds: int) -> int | None:
    """Torch threads per fold: `threads`, else (auto) cores // jobs with loky, and None with dask,
    whose workers decide (`worker_threads`)."""
    if settings.threads is not None:
        return settings.threads
    if settings.backend == "dask":
        return None
    return max(1, available_cores() // max(1, min(settings.jobs, folds)))


def _train_fold_on_worker(
    data: LosoData, fold: str, settings: TrainSettings, out_dir: str, timing_dir: str | None = None
) -> FoldResult:
    """`train_fold` on a Dask worker, with `threads` or else `worker_threads()` torch threads (set
    explicitly: torch may have been imported before Dask's environment applied)."""
    return train_fold(data, fold, settings, out_dir, settings.threads or worker_threads(), timing_dir)


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A `distributed.Client` for `scheduler`, or for a local cluster of `workers` processes on loopback."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise MerError("backend: dask needs the Dask distributed package: pip install 'dask[distributed]'") from exc
    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
            except OSError as exc:
                raise MerError(
                    f"cannot reach the Dask scheduler at {scheduler} (params train.scheduler): {exc}"
                ) from exc
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
                )
            )
            client = stack.enter_context(Client(cluster))
        yield client


def run_loso(
    data: LosoData,
    settings: TrainSettings,
    out_dir: str | Path,
    folds: Sequence[str] | None = None,
    progress: FoldProgress | None = None,
    threads: int | None = None,
    timing_dir: str | Path | None = None,
    epoch_progress: EpochProgress | None = None,
) -> list[FoldResult]:
    """Train every fold (or the given ones); results sorted by fold. `threads` overrides
    `fold_threads(settings, len(folds))`, e.g. to keep a resumed run's threads those of the whole run;
    `timing_dir` receives each fold's seconds (`train_fold`).

    `backend: loky` runs `settings.jobs` folds at a time on this machine, each worker with
    `threads` torch threads, by default (auto) cores // jobs so that jobs x threads never exceeds
    the cores. `backend: dask` hands the same fold function to joblib's dask backend: the cluster at
    `settings.scheduler` (or, without one, a local cluster of `jobs` worker processes on 127.0.0.1)
    runs one fold per worker thread; the training arrays are scattered to the workers once. A fold
    on a Dask worker uses `threads`, else (auto) `worker_threads()` torch threads: one by default
    (Dask starts worker processes with OMP_NUM_THREADS=1), as loky gives when jobs = cores, so both
    backends give the same predictions for the same seeds.
    """
    folds = list(folds) if folds is not None else data.folds
    jobs = max(1, min(settings.jobs, len(folds)))
    threads = threads or fold_threads(settings, len(folds))
    timing = None if timing_dir is None else str(timing_dir)
    with contextlib.ExitStack() as stack:
        if settings.backend == "dask":
            from joblib import Parallel, delayed, parallel_config

            stack.enter_context(dask_client(settings.scheduler, jobs))
            stack.enter_context(parallel_config(backend="dask", n_jobs=-1, scatter=[data]))
            runner = Parallel(return_as="generator_unordered", batch_size=1)
            on_worker = dataclasses.replace(settings, threads=threads)
            results: Iterator[FoldResult] = runner(
                delayed(_train_fold_on_worker)(data, fold, on_worker, str(out_dir), timing) for fold in folds
            )
        elif jobs == 1:
            results = (train_fold(data, fold, settings, out_dir, threads, timing, epoch_progress) for fold in folds)
        else:
            from joblib import delayed

            from pipeline.parallel import process_pool  # workers exit if this process is killed

            runner = process_pool(jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="n_jobs")
            results = runner(delayed(train_fold)(data, fold, settings, str(out_dir), threads, timing) for fold in folds)
        if progress is not None:
            results = progress(results, len(folds))
        return sorted(results, key=lambda r: r.fold)
