"""Process pools for per-clip work: `jobs` processes compute, and the calling process, one of them,
also writes (`ordered_map`: `jobs - 1` workers, and the caller runs an item itself whenever the
next result is not ready).

Large results (a clip's aligned frames, ~10 MB) do not travel pickled through the pool's pipe: a
worker allocates them as files of a private folder in shared memory (/dev/shm) and fills them in
place, the writer maps the file it is handed and unlinks it at once. That saves the pickling, the
two copies through the pipe and the unpickling (about 15 ms of CPU per 10 MB clip, which on two
cores competes with the workers themselves).

Pool workers exit when the process that started them dies (`exit_with_parent`: a SIGKILLed stage
would otherwise leave loky workers idle for their 300 s timeout, holding shared memory and the
caller's pipes), and every pool start first deletes what killed runs left in shared memory: this
module's `mer-shared-<pid>-...` folders and joblib's `joblib_memmapping_folder_<pid>_...` ones.
A stage that succeeded stops its idle workers instead of waiting for each one's own exit
(`stop_idle_workers`, called by the `mer` command as it exits).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel

from pipeline.atomic import remove_orphans

# tmpfs on Linux; where it is missing or not writable, the system temporary folder is used instead.
SHARED_MEMORY_ROOT = Path("/dev/shm")
SHARED_PREFIX = "mer-shared-"
SHARED_MEMORY_SUPPORTED = os.name == "posix"  # mmap with MAP_SHARED; elsewhere results go pickled
JOBLIB_PREFIX = "joblib_memmapping_folder_"  # joblib's memmapping folders: <prefix><pid>_<id>_<context>
PARENT_POLL_SECONDS = 0.25
_watchdog_lock = threading.Lock()
_watched_parent: int | None = None
_pool_started = False  # this process started loky workers (`stop_idle_workers` has something to stop)


def exit_with_parent(parent: int | None = None) -> None:
    """In a pool worker: exit at once when the process `parent` (default: the current parent) is
    no longer its parent (a daemon thread polls the parent id, which becomes another process's
    when the parent dies, even by SIGKILL). A worker whose parent died before it got here exits
    right away.

    Idempotent. The initializer of `process_pool`'s workers; not for the main process: a stage
    whose own parent (a shell, dvc) dies keeps going.
    """
    global _watched_parent
    with _watchdog_lock:
        if _watched_parent is not None:
            return
        _watched_parent = parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="mer-exit-with-parent", daemon=True).start()


def process_pool(jobs: int, **options: Any) -> Parallel:
    """A joblib Parallel of `jobs` loky worker processes, each of which exits when this process
    dies (`exit_with_parent`, run as the worker initializer: also by workers that never got a
    task). What killed runs left in shared memory is deleted first (`remove_stale_pool_files`)."""
    from joblib.parallel import LokyBackend

    _starting_pool()
    backend = LokyBackend(initializer=exit_with_parent, initargs=(os.getpid(),))
    return Parallel(n_jobs=jobs, backend=backend, **options)


def _starting_pool() -> None:
    """What every pool start does first: delete what killed runs left (`remove_stale_pool_files`)
    and note that this process has workers to stop (`stop_idle_workers`)."""
    global _pool_started
    remove_stale_pool_files()
    _pool_started = True


def remove_stale_pool_files() -> list[Path]:
    """Delete the shared-memory folders of pools whose process was killed: ours and joblib's
    memmapping folders (in /dev/shm, or the temporary folder joblib falls back to)."""
    roots = {SHARED_MEMORY_ROOT, Path(tempfile.gettempdir())}
    if os.environ.get("JOBLIB_TEMP_FOLDER"):
        roots.add(Path(os.environ["JOBLIB_TEMP_FOLDER"]))
    removed = []
    for root in roots:
        with contextlib.suppress(OSError):
            removed += remove_orphans(root, JOBLIB_PREFIX, separator="_")
    return removed + remove_stale_shared_folders()


def limit_native_threads() -> None:
    """One native thread per process, so `jobs` processes use `jobs` cores and not jobs x cores.

    loky workers also get OMP_NUM_THREADS / OPENBLAS_NUM_THREADS in their environment (joblib's
    cores // jobs, `worker_pool`'s 1); the OpenCV pool is set here (called by every task: it is a
    cheap no-op after the first).
    """
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def worker_pool(workers: int) -> Any:
    """loky's reusable executor with `workers` processes, one native thread each, every one of which
    exits when this process dies (`exit_with_parent`, run as the worker initializer). What killed
    runs left in shared memory is deleted first (`remove_stale_pool_files`)."""
    from joblib.externals.loky import get_reusable_executor

    _starting_pool()
    one_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return get_reusable_executor(
        max_workers=workers,
        timeout=300,  # as joblib's: workers stay up between the stage's passes over the clips
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
        env=one_thread,
    )


def stop_idle_workers() -> None:
    """Terminate this process's pool workers now, without letting each one tear its interpreter
    down: for a process about to exit whose every task is done. Left alone, the exit waits for the
    workers' own exit (about 1 s for training workers, which hold torch: once per `mer train`).
    Both `worker_pool` and `process_pool` run on loky's one reusable executor; a process that started
    neither has nothing to stop. Not while tasks are queued: loky's kill then races with its own
    manager thread over them."""
    global _pool_started
    if not _pool_started:
        return
    from joblib.externals.loky import get_reusable_executor

    _pool_started = False
    get_reusable_executor(reuse=True).shutdown(wait=True, kill_workers=True)


def _run_batch(function: Callable[..., Any], batch: list[tuple]) -> list[Any]:
    return [function(*item) for item in batch]


def ordered_map(
    function: Callable[..., Any],
    items: Iterable[tuple],
    jobs: int,
    batch: int = 1,
    here: Callable[..., Any] | None = None,
) -> Iterator[Any]:
    """Apply `function(*item)` to each item on `jobs` processes, yielding results in input order.

    This process is one of the `jobs`: `jobs - 1` workers take `batch` items per task (for short
    items, a few ms each, that spreads the pool's ~2 ms of dispatch, pickling and wake-up per task
    over several), two tasks each ahead; whenever the next result in order is not ready yet, this
    process runs the next item itself (`here(*item)`, default `function`: `here` is for work that
    runs differently in the caller, such as results left in shared memory only by workers). So the
    caller's time between writes goes into items, which need no pickling, instead of into waiting,
    and two jobs on two cores do not run three busy processes.

    Order is kept so that outputs are identical whatever the number of jobs. With jobs == 1 every
    item runs in this process (no pool, easy debugging). Closing the iterator early (or letting it
    be collected unfinished) submits nothing more; the tasks already handed to the pool (two per
    worker at most: loky queues them to the workers at once) still run, their results unread.
    """
    limit_native_threads()
    here = here or function
    if jobs <= 1:
        for item in items:
            yield here(*item)
        return
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    workers, items, taken = jobs - 1, list(items), 0
    # items held at most (in tasks and in results made here), so memory stays flat however long the
    # next result takes; room for what this process computes while a worker runs two tasks
    held = 4 * batch * jobs
    executor = worker_pool(workers)
    slots: collections.deque[tuple[Future | list, int]] = collections.deque()  # input order: (task or results, items)

    def holding() -> int:
        return sum(size for _, size in slots)

    def running() -> int:
        return sum(1 for slot, _ in slots if isinstance(slot, Future) and not slot.done())

    try:
        while True:
            while taken < len(items) and holding() < held and running() < 2 * workers:
                # smaller tasks towards the end, so that no process waits long for another's last one
                size = min(batch, max(1, (len(items) - taken) // (4 * jobs)))
                slots.append((executor.submit(_run_batch, function, items[taken : taken + size]), size))
                taken += size
            if not slots:
                return
            head = slots[0][0]
            if isinstance(head, list) or head.done():
                slots.popleft()
                yield from head if isinstance(head, list) else head.result()
            elif taken < len(items) and holding() < held:  # the next result is not ready: run an item here
                slots.append(([here(*items[taken])], 1))
                taken += 1
            else:  # nothing to run here, or enough held: wait for the workers
                wait([head], return_when=FIRST_COMPLETED)
    finally:  # closed early, or an item failed: drop the tasks loky has not queued to a worker yet
        # (the queued ones run, and the workers stay in the pool: loky's shutdown with
        # kill_workers=True races with its own manager thread over queued tasks)
        for slot, _ in slots:
            if isinstance(slot, Future):
                slot.cancel()


# ---------------------------------------------------------------------------------------------
# Handing large arrays from workers to the writer through shared memory


def _shared_root() -> Path:
    root = SHARED_MEMORY_ROOT
    if root.is_dir() and os.access(root, os.W_OK | os.X_OK):
        return root
    return Path(tempfile.gettempdir())


def remove_stale_shared_folders(root: Path | None = None) -> list[Path]:
    """Delete shared folders left by runs that were killed (their process no longer exists)."""
    try:
        return remove_orphans(_shared_root() if root is None else root, SHARED_PREFIX)
    except OSError:  # an unreadable shared-memory root: nothing to clean there
        return []


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A private folder in shared memory for arrays handed from workers to this process.

    Named after this process's id, so a later run removes it if this one is killed (SIGKILL
    allows no clean-up); removed with everything in it when the block ends, however it ends.
    Stop the workers that write into it (finish or close the `ordered_map` iterator) before.
    """
    root = _shared_root()
    remove_stale_shared_folders(root)
    path = Path(tempfile.mkdtemp(prefix=f"{SHARED_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class SharedArray:
    """Picklable handle of a C-contiguous uint8 array held in a file of a shared folder."""

    path: str
    shape: tuple[int, ...]

    def receive(self) -> np.ndarray:
        """Map the array read-only and unlink its file: the pages live until the array is dropped,
        and nothing is left in the folder even if this process dies later."""
        size = int(np.prod(self.shape))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buffer = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
            os.unlink(self.path)
        return np.frombuffer(buffer, np.uint8).reshape(self.shape)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class SharedAllocator:
    """Allocates uint8 arrays as files of a shared folder, in a worker; `ship()` gives their handles.

    Space is reserved up front (posix_fallocate), so a full tmpfs (a container's 64 MB /dev/shm)
    makes the array fall back to ordinary memory, sent pickled, instead of a SIGBUS on write.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._owned: list[tuple[np.ndarray, SharedArray]] = []

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        shape = tuple(int(v) for v in shape)
        size = int(np.prod(shape))
        if size == 0:
            return np.empty(shape, np.uint8)
        try:
            fd, path = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".u8", dir=self.folder)
        except OSError:
            return np.empty(shape, np.uint8)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:  # pragma: no cover - not Linux
                os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError:
            os.close(fd)
            os.unlink(path)
            return np.empty(shape, np.uint8)
        os.close(fd)
        array = np.frombuffer(buffer, np.uint8).reshape(shape)
        self._owned.append((array, SharedArray(path, shape)))
        return array

    def ship(self, array: np.ndarray) -> SharedArray | None:
        """The handle of `array` if this allocator made it (it is then no longer this one's to
        delete), else None: the array then travels by value."""
        for index, (owned, handle) in enumerate(self._owned):
            if owned is array:
                del self._owned[index]
                return handle
        return None

    def discard(self) -> None:
        """Delete the files of every array not shipped (a failed clip, an intermediate array)."""
        for _, handle in self._owned:
            handle.discard()
        self._owned.clear()


# ---------------------------------------------------------------------------------------------
# Progress of per-clip loops, reported by the caller (stages show a tqdm bar; the library prints nothing)

Progress = Callable[[Iterable[Any], int], Iterable[Any]]  # (items, total) -> the same items, in order


def no_progress(items: Iterable[Any], total: int) -> Iterable[Any]:
    return items
