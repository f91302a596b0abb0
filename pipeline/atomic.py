"""Atomic outputs: write under a temporary name beside the target, rename only on success.

An interrupted or failed stage therefore never leaves a half-written file at the output path,
and an existing output is replaced only once its successor is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


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
