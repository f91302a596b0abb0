"""Aligning a whole dataset copy into the aligned cache: workers, `--resume`, failures, preview.

Error policy (`on_error`): `fail` lists every clip that could not be aligned (subject, clip,
file, reason) and writes nothing; `skip` writes the other clips and a failures report
`<out>.failures.csv`. `resume` reuses the clips of an existing output made with the same settings
from the same frames (their checksums re-read: a damaged clip is aligned again). `preview` N
draws N aligned reference frames with their landmarks into `<out>.preview.png`. Every file is
written under a temporary name and renamed (pipeline.atomic also removes temporaries left by a
killed run).

With `jobs` > 1, `jobs - 1` pool workers align clips, and so does this process whenever the next
clip in order is not ready yet; this process alone writes the cache. Workers warp each clip's
frames straight into a file of a private shared-memory folder and hash them there; the writer maps
the file, writes it and unlinks it (pipeline.parallel): the frames are not pickled through the
pool's pipe. The clips this process aligns itself stay in its memory (`_align_here`).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.align.clip import AlignSettings, align_clip, reference_view
from pipeline.align.montage import save_montage
from pipeline.atomic import atomic_output, ensure_free_space
from pipeline.datasets.layouts import ClipFolder, scan_clip_folders
from pipeline.errors import InputProblems, MerError
from pipeline.imaging import FrameError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA, AlignedCacheWriter, AlignedClip, read_intact_clip
from pipeline.io.hdf5 import FAST_CHECKSUM, frames_sha256, frames_xxh3, open_cache
from pipeline.io.provenance import frame_files_fingerprint
from pipeline.parallel import (
    SHARED_MEMORY_SUPPORTED,
    Progress,
    SharedAllocator,
    SharedArray,
    limit_native_threads,
    no_progress,
    ordered_map,
    shared_folder,
)

ON_ERROR = ("fail", "skip")
FAILURE_FIELDS = ("subject", "clip", "file", "reason")


@dataclass(frozen=True)
class ClipFailure:
    """A clip that was not aligned, as reported to the user and in the failures CSV."""

    subject: str
    clip: str
    file: str
    reason: str

    def line(self) -> str:
        return f"{self.subject}/{self.clip}: {self.file}: {self.reason}"


@dataclass
class AlignResult:
    """What an align run did, for the stage to report."""

    total: int  # clip folders found, including those that could not be listed
    written: int
    frames: int
    reused: int
    previews: int
    failures: list[ClipFailure] = field(default_factory=list)  # sorted by (subject, clip)


def failures_path(out: str | Path) -> Path:
    return Path(f"{out}.failures.csv")


def preview_path(out: str | Path) -> Path:
    return Path(f"{out}.preview.png")


def find_align_clips(
    dataset: str, root: str | Path, pattern: str | None = None
) -> tuple[list[ClipFolder], list[ClipFailure]]:
    """Clip folders sorted by (subject, clip), and the folders that could not be listed (reported
    per clip rather than stopping the run)."""
    clips, unreadable = scan_clip_folders(dataset, root, pattern)
    failures = [ClipFailure(u.subject, u.clip, str(u.path), u.reason) for u in unreadable]
    return sorted(clips.values(), key=lambda f: (f.subject, f.clip)), failures


@dataclass
class _Shipped:
    """A clip aligned by a pool worker, its frames waiting in a shared-memory file."""

    clip: AlignedClip  # without frames
    frames: SharedArray

    def receive(self) -> AlignedClip:
        self.clip.frames = self.frames.receive()  # maps the file and unlinks it
        return self.clip


def _align_one(
    folder: ClipFolder, settings: AlignSettings, shared: str | None = None
) -> AlignedClip | _Shipped | ClipFailure:
    """Align one clip; with `shared` (a folder in shared memory) its frames are left there."""
    limit_native_threads()
    allocator = SharedAllocator(shared) if shared else None
    try:
        clip = align_clip(folder, settings, allocator)
        clip.checksums["frames"] = frames_sha256(clip.frames)  # here, in parallel, not in the single writer
        clip.checksums[f"frames_{FAST_CHECKSUM}"] = frames_xxh3(clip.frames)
        handle = allocator.ship(clip.frames) if allocator else None
        if handle is None:
            return clip
        clip.frames = np.empty((0,), np.uint8)
        return _Shipped(clip, handle)
    except FrameError as exc:
        return ClipFailure(folder.subject, folder.clip, exc.file or str(folder.path), exc.reason)
    finally:
        if allocator:
            allocator.discard()  # the files of a failed clip


def _align_here(folder: ClipFolder, settings: AlignSettings, _shared: str | None) -> AlignedClip | ClipFailure:
    """`_align_one` in the stage's own process (`ordered_map`'s `here`): the frames stay in its memory."""
    return _align_one(folder, settings)


def _write_failures(path: Path, failures: list[ClipFailure]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FAILURE_FIELDS)
        for failure in failures:
            writer.writerow([failure.subject, failure.clip, failure.file, failure.reason])


def _reusable_clips(out: Path, folders: list[ClipFolder], settings: AlignSettings) -> tuple[set, str]:
    """Clips of an existing output aligned with the same settings and tool from the same frames."""
    if not out.is_file():
        return set(), f"--resume: no previous output at {out}; aligning every clip"
    try:
        handle = open_cache(out, ALIGNED_SCHEMA)
    except MerError as exc:
        return set(), f"--resume: cannot reuse {out} ({exc}); aligning every clip"
    record = settings.record()
    reusable = set()
    with handle:
        if handle.attrs.get("tool_version") != __version__:
            return set(), f"--resume: {out} was made by version {handle.attrs.get('tool_version')}; aligning every clip"
        for folder in folders:
            if folder.subject not in handle or folder.clip not in handle[folder.subject]:
                continue
            attrs = handle[folder.subject][folder.clip].attrs
            if attrs.get("align_settings") == record and attrs.get("input_fingerprint") == frame_files_fingerprint(
                folder.frames
            ):
                reusable.add((folder.subject, folder.clip))
    note = (
        "" if reusable else f"--resume: no clip of {out} matches the current settings and frames; aligning every clip"
    )
    return reusable, note


def _preview_indices(count: int, wanted: int) -> set[int]:
    if wanted <= 0 or count == 0:
        return set()
    return {int(i) for i in np.linspace(0, count - 1, min(wanted, count)).round()}


def align_dataset(
    dataset: str,
    root: str | Path,
    out: str | Path,
    settings: AlignSettings,
    params: Mapping[str, Any],
    *,
    on_error: str = "fail",
    folder_pattern: str | None = None,
    resume: bool = False,
    preview: int = 0,
    jobs: int = 1,
    progress: Progress = no_progress,
    notify: Callable[[str], None] = lambda note: None,
) -> AlignResult:
    """Align every clip folder under `root` into the aligned cache `out` (params: recorded in it).

    `notify` receives notes about `resume` before the work starts; `progress` wraps the loop over
    the clips. Raises InputProblems, listing every failed clip, when `on_error` is fail and a clip
    failed or when no clip could be aligned.
    """
    out = Path(out)
    folders, failures = find_align_clips(dataset, root, folder_pattern)
    total = len(folders) + len(failures)
    if not total:
        raise MerError(f"no clip folders found under {root}")

    reusable, note = _reusable_clips(out, folders, settings) if resume else (set(), "")
    if note:
        notify(note)
    chosen = _preview_indices(len(folders), preview)
    previews: list[tuple[np.ndarray, np.ndarray, str]] = []
    todo = [f for f in folders if (f.subject, f.clip) not in reusable]
    frame_bytes = settings.size * settings.size * 3  # frames are stored uncompressed
    ensure_free_space(out, sum(len(f.frames) for f in folders) * frame_bytes, "the aligned cache")
    n_frames = n_written = n_reused = 0
    old = open_cache(out, ALIGNED_SCHEMA) if reusable else contextlib.nullcontext()
    shm = shared_folder() if jobs > 1 and todo and SHARED_MEMORY_SUPPORTED else contextlib.nullcontext(None)
    with atomic_output(out) as tmp:  # the previous output (read by resume) is closed before the rename
        with old as old_handle, AlignedCacheWriter(tmp, dataset, params) as writer, shm as shared:
            results = ordered_map(
                _align_one,
                ((f, settings, shared and str(shared)) for f in todo),
                jobs,
                here=_align_here,
            )
            try:
                for position, folder in enumerate(progress(folders, len(folders))):
                    if (folder.subject, folder.clip) in reusable:
                        result = read_intact_clip(old_handle, folder.subject, folder.clip)
                        if result is None:  # damaged in the old file: align it again, here
                            result = _align_one(folder, settings)
                        else:
                            n_reused += 1
                    else:
                        result = next(results)
                        if isinstance(result, _Shipped):
                            result = result.receive()
                    if isinstance(result, ClipFailure):
                        failures.append(result)
                        continue
                    if failures and on_error == "fail":
                        continue  # the output is discarded anyway; keep going to report every bad clip
                    result.attrs = dict(sorted(result.attrs.items()))  # the same bytes whether aligned or reused
                    writer.add(result)
                    n_written += 1
                    n_frames += len(result.frames)
                    if position in chosen:
                        image, points = reference_view(result)
                        previews.append((image.copy(), points, f"{result.subject}/{result.clip}"))
                for _ in results:  # run the pool's iterator to its end: its workers stay up for the next run
                    pass
            finally:
                results.close()  # after an error: cancel pending clips before the shared folder goes
        failures.sort(key=lambda f: (f.subject, f.clip))
        if failures and on_error == "fail":
            raise InputProblems(
                f"{len(failures)} of {total} clips could not be aligned; nothing was written "
                f"(use --on-error skip to write the others)",
                [f.line() for f in failures],
            )
        if not n_written:
            raise InputProblems(
                f"none of the {total} clips could be aligned; nothing was written", [f.line() for f in failures]
            )
        report = failures_path(out)
        if failures:
            _write_failures(report, failures)
        else:
            with contextlib.suppress(FileNotFoundError):
                report.unlink()  # a report from an earlier run no longer applies
    if previews:
        save_montage(preview_path(out), [p[0] for p in previews], [p[1] for p in previews], [p[2] for p in previews])
    return AlignResult(total, n_written, n_frames, n_reused, len(previews), failures)
