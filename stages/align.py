"""Stage `align`: detect, align and crop every clip of a dataset copy into the aligned cache."""

from __future__ import annotations

import click
from tqdm import tqdm

from pipeline.align import AlignmentFailure, AlignSettings, align_clip
from pipeline.atomic import atomic_output
from pipeline.cache import AlignedCacheWriter
from pipeline.errors import InputProblems, MerError
from pipeline.frames import DATASETS, ClipFolder, find_clip_folders
from pipeline.parallel import limit_native_threads, ordered_map
from stages.common import jobs_option, params_option, recorded_params, stage_params


def _align_one(folder: ClipFolder, settings: AlignSettings):
    limit_native_threads()
    try:
        return align_clip(folder, settings)
    except AlignmentFailure as exc:
        return f"{folder.subject}/{folder.clip}: {exc}"


@click.command("align")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Folder layout of the copy.")
@click.option("--root", type=click.Path(), required=True, help="Folder holding the subject folders.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Aligned cache to write (.h5).")
@jobs_option
@params_option
def align(dataset: str, root: str, out: str, jobs: int | None, params_file: str) -> None:
    """Align and crop the faces of every clip into an HDF5 cache."""
    params = stage_params(params_file, "align", jobs=jobs)
    try:
        settings = AlignSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise MerError(f"{params_file}: invalid align settings: {exc}") from exc
    folders = sorted(find_clip_folders(dataset, root).values(), key=lambda f: (f.subject, f.clip))
    if not folders:
        raise MerError(f"no clip folders found under {root}")
    failures: list[str] = []
    n_frames = 0
    with atomic_output(out) as tmp, AlignedCacheWriter(tmp, dataset, recorded_params(params)) as writer:
        results = ordered_map(_align_one, ((f, settings) for f in folders), int(params.get("jobs", 1)))
        for result in tqdm(results, total=len(folders), desc=f"align {dataset}", unit="clip", disable=None):
            if isinstance(result, str):
                failures.append(result)
            elif not failures:  # after a failure the output is discarded anyway
                writer.add(result)
                n_frames += len(result.frames)
        if failures:
            raise InputProblems(f"{len(failures)} of {len(folders)} clips could not be aligned; nothing was written", failures)
    click.echo(f"aligned {len(folders)} clips ({n_frames} frames) of {dataset} -> {out}")
