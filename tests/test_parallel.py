"""ordered_map: results in input order whatever the jobs, the calling process working as one of them;
stop_idle_workers: a finished stage's workers end without their own slow exit."""

import atexit
import os
import time

import psutil
import pytest

from pipeline.parallel import ordered_map, stop_idle_workers


def _where(index: int, pause: float = 0.01) -> tuple[int, int]:
    """The item and the process that ran it (a pause so that both processes get items)."""
    time.sleep(pause)
    return index, os.getpid()


def _here(index: int, pause: float = 0.01) -> tuple[int, str]:
    return index, "here"


def _fails_at(index: int, bad: int) -> int:
    if index == bad:
        raise ValueError(f"item {index} is bad")
    return index


def test_results_keep_input_order_and_the_caller_runs_items_beside_the_worker():
    results = list(ordered_map(_where, ((i,) for i in range(60)), jobs=2, batch=4))
    assert [index for index, _ in results] == list(range(60))
    processes = {pid for _, pid in results}
    assert os.getpid() in processes  # the caller ran items while it waited
    assert len(processes) == 2  # and one worker the others


def test_the_caller_runs_its_items_with_here_and_only_them():
    results = list(ordered_map(_where, ((i,) for i in range(40)), jobs=2, batch=2, here=_here))
    assert [index for index, _ in results] == list(range(40))
    ran = [where for _, where in results]
    assert "here" in ran and any(isinstance(where, int) and where != os.getpid() for where in ran)
    assert list(ordered_map(_where, ((i,) for i in range(5)), jobs=1, here=_here)) == [(i, "here") for i in range(5)]


def test_an_item_that_fails_in_a_worker_or_here_stops_the_map_with_its_error():
    with pytest.raises(ValueError, match="item 13 is bad"):
        list(ordered_map(_fails_at, ((i, 13) for i in range(40)), jobs=2, batch=4))


def _leave_mark(index: int, folder: str) -> int:
    """A file per item run, then a pause: the items a closed map still ran can be counted."""
    open(os.path.join(folder, f"{index}.ran"), "w").close()
    time.sleep(0.2)
    return os.getpid()


def test_closing_the_map_early_drops_the_items_not_started(tmp_path):
    results = ordered_map(_leave_mark, ((i, str(tmp_path)) for i in range(200)), jobs=2, batch=2)
    next(pid for pid in results if pid != os.getpid())  # up to the first result of the worker
    started = time.monotonic()
    results.close()  # an error path: nothing more is wanted
    assert time.monotonic() - started < 1
    time.sleep(1.0)  # a task the worker had started finishes meanwhile
    ran = len(list(tmp_path.glob("*.ran")))
    # the items returned and run here, the worker's task in hand: 200 x 0.2 s were not run
    assert ran <= 12, ran
    assert [i for i, _ in ordered_map(_where, ((i, 0) for i in range(4)), jobs=2)] == [0, 1, 2, 3]  # still works


def _slow_to_exit(index: int) -> int:
    """A worker whose interpreter takes 5 s to exit (as torch's teardown takes about 1 s)."""
    atexit.register(time.sleep, 5)
    return os.getpid()


def test_stop_idle_workers_ends_the_workers_without_waiting_for_their_exit():
    workers = {pid for pid in ordered_map(_slow_to_exit, ((i,) for i in range(6)), jobs=2) if pid != os.getpid()}
    assert workers and all(psutil.pid_exists(pid) for pid in workers)
    started = time.monotonic()
    stop_idle_workers()
    assert time.monotonic() - started < 3  # not the 5 s a worker's own exit takes
    assert not any(psutil.pid_exists(pid) for pid in workers)
    stop_idle_workers()  # nothing left to stop: a no-op
    assert [i for i, _ in ordered_map(_where, ((i, 0) for i in range(4)), jobs=2)] == [0, 1, 2, 3]  # a new pool
