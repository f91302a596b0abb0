"""Process pools for per-clip work: workers compute, the calling process writes."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

from joblib import Parallel, delayed


def limit_native_threads() -> None:
    """One native thread per worker, so `jobs` workers use `jobs` cores and not jobs x cores."""
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def ordered_map(function: Callable[..., Any], items: Iterable[tuple], jobs: int) -> Iterator[Any]:
    """Apply `function(*item)` to each item, yielding results in input order as they finish.

    Order is kept so that outputs are identical whatever the number of jobs. With jobs == 1 the
    work runs in this process (no pickling, easy debugging).
    """
    if jobs <= 1:
        limit_native_threads()
        for item in items:
            yield function(*item)
        return
    runner = Parallel(n_jobs=jobs, return_as="generator", batch_size=1, pre_dispatch="2*n_jobs")
    yield from runner(delayed(function)(*item) for item in items)
