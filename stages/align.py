"""Stage `align`: detect, align and crop every clip of a dataset copy into the aligned cache.

The work, the error policy, `--resume` and `--preview` are pipeline.align.dataset's; this
command reads the settings and reports.
"""

from __future__ import annotations

import click
from tqdm import tqdm

from pipeline.align.dataset import ON_ERROR, align_dataset, failures_path, preview_path
from pipeline.datasets.layouts import DATASETS
from stages.common import (
    folder_pattern_option,
    jobs_option,
    params_option,
    recorded_params,
    resolve_folder_pattern,
    stage_settings,
)


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
    params = stage_settings(params_file, "align", jobs=jobs, on_error=on_error, folder_pattern=folder_pattern)
    result = align_dataset(
        dataset,
        root,
        out,
        params.settings(),
        recorded_params(params),
        on_error=params.on_error,
        folder_pattern=resolve_folder_pattern(dataset, folder_pattern, params.folder_pattern),
        resume=resume,
        preview=preview,
        jobs=params.jobs,
        progress=lambda clips, total: tqdm(clips, total=total, desc=f"align {dataset}", unit="clip", disable=None),
        notify=lambda note: click.echo(note, err=True),
    )
    reused = f", {result.reused} reused from the previous output" if resume else ""
    click.echo(
        f"aligned {result.written} of {result.total} clips ({result.frames} frames{reused}) of {dataset} -> {out}"
    )
    if result.previews:
        click.echo(f"preview of {result.previews} clips -> {preview_path(out)}")
    failures = result.failures
    if failures:
        click.echo(
            f"warning: {len(failures)} of {result.total} clips could not be aligned and were skipped; see {failures_path(out)}",
            err=True,
        )
        more = [f"  ... and {len(failures) - 10} more"] if len(failures) > 10 else []
        click.echo("\n".join([f"  - {failure.line()}" for failure in failures[:10]] + more), err=True)
