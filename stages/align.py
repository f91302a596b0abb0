"""Stage `align`: detect, align and crop every clip of a dataset copy into the aligned cache.

Error policy (`align.on_error`, `--on-error`): `fail` lists every clip that could not be aligned
(subject, clip, file, reason) and writes nothing; `skip` writes the other clips, a failures report
`<out>.failures.csv` and a warning. `--resume` reuses the clips of an existing output made with the
same settings from the same frames. `--preview N` draws N aligned reference frames with their
landmarks into `<out>.preview.png`. Every file is written under a temporary name and renamed
(pipeline.atomic also removes temporaries left by a killed run).

With `--jobs N > 1`, N pool workers align clips and this process alone writes the cache. Workers
warp each clip's frames straight into a file of a private shared-memory folder and hash them there;
the writer maps the file, writes it and unlinks it (pipeline.parallel): the frames are not pickled
through the pool's pipe, and the writer, which shares the cores with the workers, does little more
than the HDF5 write.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.align.clip import (
    AlignSettings,
    ClipFailure,
    align_clip,
    find_align_clips,
    input_fingerprint,
    reference_view,
)
from pipeline.align.montage import aligned_montage
from pipeline.atomic import atomic_output
from pipeline.datasets.layouts import DATASETS, ClipFolder
from pipeline.errors import InputProblems, MerError
from pipeline.imaging import FrameError
from pipeline.io.caches import (
    ALIGNED_SCHEMA,
    AlignedCacheWriter,
    AlignedClip,
    array_sha256,
    frames_sha256,
    open_cache,
    read_aligned_clip,
)
from pipeline.parallel import (
    SHARED_MEMORY_SUPPORTED,
    SharedAllocator,
    SharedArray,
    limit_native_threads,
    ordered_map,
    shared_folder,
)
from stages.common import (
    folder_pattern_option,
    jobs_option,
    params_option,
    recorded_params,
    resolve_folder_pattern,
    stage_params,
)

ON_ERROR = ("fail", "skip")
FAILURE_FIELDS = ("subject", "clip", "file", "reason")


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


def failures_path(out: str | Path) -> Path:
    return Path(f"{out}.failures.csv")


def preview_path(out: str | Path) -> Path:
    return Path(f"{out}.preview.png")


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
            if attrs.get("align_settings") == record and attrs.get("input_fingerprint") == input_fingerprint(folder):
                reusable.add((folder.subject, folder.clip))
    note = (
        "" if reusable else f"--resume: no clip of {out} matches the current settings and frames; aligning every clip"
    )
    return reusable, note


def _read_reused(handle, folder: ClipFolder) -> AlignedClip | None:
    """A clip copied from the previous output, or None when it is damaged (checksum or read error)."""
    try:
        clip = read_aligned_clip(handle, folder.subject, folder.clip)
    except (OSError, KeyError, MerError):
        return None
    group = handle[folder.subject][folder.clip]
    names = ("frames", "frame_numbers", "landmarks", "affine") + (
        ("frame_affines",) if "frame_affines" in group else ()
    )
    for name in names:
        if group[name].attrs.get("sha256") != array_sha256(getattr(clip, name)):
            return None
    return clip


def _preview_indices(count: int, wanted: int) -> set[int]:
    if wanted <= 0 or count == 0:
        return set()
    return {int(i) for i in np.linspace(0, count - 1, min(wanted, count)).round()}


@click.command("align")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Folder layout of the copy.")
@click.option("--root", type=click.Path(), required=True, help="Folder holding the subject folders.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Aligned cache to write (.h5).")
@click.option(
    "--on-error",
    type=click.Choice(ON_ERROR),
    default=None,
    help="fail: list the bad clips and write nothing; skip: write the rest and OUT.failures.csv (default: params, else fail).",
)
@folder_pattern_option("align")
@click.option(
    "--resume", is_flag=True, help="Reuse clips of an existing OUT aligned with the same settings from the same frames."
)
@click.option(
    "--preview",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Draw N aligned reference frames with landmarks into OUT.preview.png.",
)
@jobs_option
@params_option
def align(
    dataset: str,
    root: str,
    out: str,
    on_error: str | None,
    folder_pattern: str | None,
    resume: bool,
    preview: int,
    jobs: int | None,
    params_file: str,
) -> None:
    """Align and crop the faces of every clip into an HDF5 cache."""
    params = stage_params(params_file, "align", jobs=jobs, on_error=on_error, folder_pattern=folder_pattern)
    policy = params.get("on_error", "fail")
    if policy not in ON_ERROR:
        raise MerError(f"{params_file}: align.on_error must be one of {', '.join(ON_ERROR)}, got {policy!r}")
    try:
        settings = AlignSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise MerError(f"{params_file}: invalid align settings: {exc}") from exc
    out_path = Path(out)
    folders, failures = find_align_clips(dataset, root, resolve_folder_pattern(dataset, folder_pattern, params))
    total = len(folders) + len(failures)
    if not total:
        raise MerError(f"no clip folders found under {root}")

    reusable, note = _reusable_clips(out_path, folders, settings) if resume else (set(), "")
    if note:
        click.echo(note, err=True)
    chosen = _preview_indices(len(folders), preview)
    previews: list[tuple[np.ndarray, np.ndarray, str]] = []
    todo = [f for f in folders if (f.subject, f.clip) not in reusable]
    n_frames = n_written = n_reused = 0
    jobs = int(params.get("jobs", 1))
    old = open_cache(out_path, ALIGNED_SCHEMA) if reusable else contextlib.nullcontext()
    shm = shared_folder() if jobs > 1 and todo and SHARED_MEMORY_SUPPORTED else contextlib.nullcontext(None)
    with atomic_output(out_path) as tmp:  # the previous output (read by --resume) is closed before the rename
        with old as old_handle, AlignedCacheWriter(tmp, dataset, recorded_params(params)) as writer, shm as shared:
            results = ordered_map(_align_one, ((f, settings, shared and str(shared)) for f in todo), jobs)
            try:
                for position, folder in enumerate(tqdm(folders, desc=f"align {dataset}", unit="clip", disable=None)):
                    result = None
                    if (folder.subject, folder.clip) in reusable:
                        result = _read_reused(old_handle, folder)
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
                    if failures and policy == "fail":
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
        if failures and policy == "fail":
            raise InputProblems(
                f"{len(failures)} of {total} clips could not be aligned; nothing was written "
                f"(use --on-error skip to write the others)",
                [f.line() for f in failures],
            )
        if not n_written:
            raise InputProblems(
                f"none of the {total} clips could be aligned; nothing was written", [f.line() for f in failures]
            )
        report = failures_path(out_path)
        if failures:
            _write_failures(report, failures)
        else:
            with contextlib.suppress(FileNotFoundError):
                report.unlink()  # a report from an earlier run no longer applies
    if previews:
        sheet = aligned_montage([p[0] for p in previews], [p[1] for p in previews], [p[2] for p in previews])
        with atomic_output(preview_path(out_path)) as tmp_png:
            _ok, data = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
            Path(tmp_png).write_bytes(data.tobytes())
    reused = f", {n_reused} reused from the previous output" if resume else ""
    click.echo(f"aligned {n_written} of {total} clips ({n_frames} frames{reused}) of {dataset} -> {out}")
    if previews:
        click.echo(f"preview of {len(previews)} clips -> {preview_path(out_path)}")
    if failures:
        click.echo(
            f"warning: {len(failures)} of {total} clips could not be aligned and were skipped; see {failures_path(out_path)}",
            err=True,
        )
        for failure in failures[:10]:
            click.echo(f"  - {failure.line()}", err=True)
        if len(failures) > 10:
            click.echo(f"  ... and {len(failures) - 10} more", err=True)
