"""Atomic outputs: write under a temporary name beside the target, rename only on success.

An interrupted or failed stage therefore never leaves a half-written file at the output path,
and an existing output is replaced only once its successor is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a writer that was killed leaves none)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_orphans(folder: Path, prefix: str) -> list[Path]:
    """Delete the entries of `folder` named `<prefix><pid>-...` whose writer process no longer
    exists (killed by SIGKILL, a power loss); a live writer's work in progress is never touched."""
    removed = []
    for candidate in folder.glob(f"{prefix}*"):
        pid = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove(candidate)
            removed.append(candidate)
    return removed


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporaries of `target` left by writers that were killed (see `remove_orphans`), so
    two concurrent writers never delete each other's work in progress."""
    return remove_orphans(target.parent, f".{target.name}.tmp-")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; move it to `path` when the block succeeds.

    With `directory=True` the temporary path is created as an empty directory. On any exception
    the temporary output is deleted and `path` is left exactly as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary_sibling(target)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if target.is_dir() and not target.is_symlink():
        # os.replace cannot replace a non-empty directory: move the old one aside first.
        old = _temporary_sibling(target)
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)
