"""Folders that refuse writes, for fault tests: read-only and nearly full (small tmpfs) folders.

Root ignores permission bits, so as root a read-only folder is a read-only tmpfs mount; mounting
needs root and a system that allows it: the tests using these skip cleanly elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(folder: Path, options: str) -> None:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """`folder` (created, empty) made unwritable: chmod 555, or as root a read-only tmpfs."""
    if os.name == "posix" and os.geteuid() == 0:
        _mount(folder, "ro,size=1m")
        try:
            yield folder
        finally:
            _unmount(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "2m") -> Iterator[Path]:
    """`folder` on a tmpfs of `size` (needs root; skips the test elsewhere)."""
    _mount(folder, f"size={size}")
    try:
        yield folder
    finally:
        _unmount(folder)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the filesystem of `folder` until about `leave` bytes are free."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize - leave
    if free > 0:
        with open(folder / "filler", "wb") as handle, contextlib.suppress(OSError):
            handle.write(b"\0" * free)
