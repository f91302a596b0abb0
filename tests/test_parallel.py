"""ordered_map: results in input order whatever the jobs, the calling process working as one of them."""

import os
import time

import pytest

from pipeline.parallel import ordered_map


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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_closing_the_map_early_stops_the_worker_and_its_pending_items():
    results = ordered_map(_where, ((i, 0.2) for i in range(200)), jobs=2, batch=1)
    worker = next(pid for _, pid in results if pid != os.getpid())
    started = time.monotonic()
    results.close()  # an error path: nothing more is wanted
    assert time.monotonic() - started < 5  # the 200 x 0.2 s of pending items are not run
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
