"""Atomic outputs: write under a temporary name beside the target, rename only on success.

An interrupted or failed stage therefore never leaves a half-written file at the output path,
and an existing output is replaced only once its successor is complete. A directory output is
swapped with its successor in one step (Linux renameat2 RENAME_EXCHANGE); where that is missing,
the old one is moved aside under a name the next run restores it from if this one is killed
between the two renames.

A full disk, a read-only or unwritable folder become one-line MerErrors naming the output
(`write_error`); `ensure_free_space` refuses a large output before any of it is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import MerError

# errno of a failed write that is the setup's fault (disk full, read-only, no permission)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_FULL_SLACK = 64 * 2**20  # less than this free after a failed write: the disk was full


class WriteError(MerError):
    """An output could not be written (disk full, read-only folder, no permission).

    After a full disk, HDF5 may crash when it closes its files at exit: the `mer` command then ends
    with os._exit once the message is out (stages.cli.main)."""


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes available to this user on the filesystem holding `path` (its nearest existing folder)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # not POSIX, or unreadable: unknown
        return None
    return stats.f_bavail * stats.f_frsize


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def ensure_free_space(path: str | os.PathLike, needed: int, what: str = "") -> None:
    """MerError unless the filesystem of `path` has `needed` bytes free (plus a margin)."""
    available = free_bytes(path)
    margin = max(needed // 20, 2**20)
    if available is not None and available < needed + margin:
        raise MerError(
            f"not enough free space for {path}: {what or 'it'} needs about {_size(needed + margin)} "
            f"({needed + margin} bytes), {_size(available)} ({available} bytes) available; free some space "
            "or write it elsewhere"
        )


def write_error(target: str | os.PathLike, exc: BaseException, tmp: Path | None = None) -> WriteError | None:
    """The one-line MerError for a failed write of `target` (through its temporary `tmp`), or None
    when `exc` is no such failure.

    An OSError with a write errno (ENOSPC, EROFS, EACCES, ...) is one, unless it names a file other
    than the output (an input that cannot be read); so is any OSError or RuntimeError (h5py and
    torch wrap the system's error in their own) when the disk holding `target` is (nearly) full
    afterwards.
    """
    if isinstance(exc, MerError) or not isinstance(exc, OSError | RuntimeError):
        return None
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    name = getattr(exc, "filename", None)
    ours = (
        name is None
        or (tmp is not None and str(name).startswith(str(tmp)))
        or str(name) in {str(p) for p in (Path(target), *Path(target).parents)}
    )
    if code in WRITE_ERRNOS:
        if not ours:
            if code in (errno.EACCES, errno.EPERM):
                return None  # about another file (an input): its own message says which
            target = name
    else:
        available = free_bytes(Path(target).parent)
        if available is None or available >= _DISK_FULL_SLACK:
            return None
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"cannot write {target}: no space left on the device; free some space or write elsewhere")
    if code == errno.EROFS:
        return WriteError(f"cannot write {target}: its folder is on a read-only file system")
    if code == errno.EFBIG:
        return WriteError(f"cannot write {target}: the file is too large for its file system")
    return WriteError(f"cannot write {target}: permission denied; check the permissions of {Path(target).parent}")


def _hdf5_disk_full(value: object) -> bool:
    text = str(value)
    return "No space left on device" in text and "file write failed" in text


def _quiet_unraisable(unraisable) -> None:
    """sys.unraisablehook (and, below, excepthook, which h5py's Cython code prints through) that
    drops h5py's reports of objects it could not release after a full disk: the failure is
    reported once, as a WriteError. Anything else goes to the usual hook."""
    if not _hdf5_disk_full(unraisable.exc_value):
        sys.__unraisablehook__(unraisable)


def _quiet_excepthook(kind, value, traceback) -> None:
    if not _hdf5_disk_full(value):
        sys.__excepthook__(kind, value, traceback)


def _install_quiet_hooks() -> None:
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _quiet_unraisable
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _quiet_excepthook


def _raise_write_error(target: Path, exc: BaseException, tmp: Path | None = None) -> None:
    error = write_error(target, exc, tmp)
    if error is not None:
        raise error from exc


def _temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a writer that was killed leaves none)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_orphans(folder: Path, prefix: str, separator: str = "-") -> list[Path]:
    """Delete the entries of `folder` named `<prefix><pid><separator>...` whose writer process no
    longer exists (killed by SIGKILL, a power loss); a live writer's work in progress is never touched."""
    removed = []
    for candidate in folder.glob(f"{prefix}*"):
        pid = candidate.name[len(prefix) :].split(separator, 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove(candidate)
            removed.append(candidate)
    return removed


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporaries of `target` left by writers that were killed (see `remove_orphans`), so
    two concurrent writers never delete each other's work in progress.

    An old output moved aside (`.<name>.old-<pid>-...`, the two-rename fallback) by a writer killed
    before its successor was in place is moved back to `target` instead of being deleted.
    """
    if not target.exists() and not target.is_symlink():
        prefix = f".{target.name}.old-"
        for old in sorted(target.parent.glob(f"{prefix}*")):
            pid = old.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                os.replace(old, target)
                break
    return remove_orphans(target.parent, f".{target.name}.tmp-") + remove_orphans(target.parent, f".{target.name}.old-")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = None


def _exchange_function():
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                function = libc.renameat2
            except (OSError, AttributeError):  # glibc before 2.28, musl: no wrapper
                pass
            else:
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
                _renameat2 = function
    return _renameat2 or None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (renameat2 RENAME_EXCHANGE); False where the
    system or the filesystem cannot (then nothing was changed)."""
    function = _exchange_function()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not supported here
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace_directory(tmp: Path, target: Path) -> None:
    """Put the finished directory `tmp` at `target`, which holds the old output, and delete the old
    one. The old output is never missing from `target` unless this process is killed between the
    two renames of the fallback, and then the next run moves it back (`remove_stale_temporaries`)."""
    if exchange(tmp, target):
        _remove(tmp)  # now the old output
        return
    old = _temporary_sibling(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    _remove(old)


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

    A failed write (disk full, read-only folder, no permission) raises a one-line MerError
    naming `path` (`write_error`); the temporary is removed.
    """
    target = Path(path)
    tmp = _temporary_sibling(target)
    _install_quiet_hooks()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        if directory:
            tmp.mkdir()
    except OSError as exc:
        _remove(tmp)
        _raise_write_error(target, exc, tmp)
        raise
    try:
        yield tmp
    except BaseException as exc:
        _remove(tmp)
        _raise_write_error(target, exc, tmp)
        raise
    try:
        if target.is_dir() and not target.is_symlink():
            _replace_directory(tmp, target)  # os.replace cannot replace a non-empty directory
        else:
            os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        _raise_write_error(target, exc, tmp)
        raise
