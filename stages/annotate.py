"""Stage `annotate`: a coding spreadsheet and the clip folders -> the normalized samples table.

Params (section `annotate`): `on_problem` (fail | drop), optional `classes`, `overrides` (a
per-clip corrections file, default null) and `folder_pattern` (generic layouts only, default
`{subject}/{clip}`).
"""

from __future__ import annotations

import click

from pipeline.datasets.annotate import annotate_to_file, summary_lines
from pipeline.datasets.layouts import DATASETS
from pipeline.io.samples import dropped_path
from stages.common import folder_pattern_option, params_option, resolve_folder_pattern, stage_settings


@click.command("annotate")
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    required=True,
    help="Coding-sheet and folder layout: casme2, samm, or generic (CSV with subject, clip, onset, apex, offset, emotion).",
)
@click.option("--root", type=click.Path(), required=True, help="Folder holding the subject folders.")
@click.option(
    "--coding", type=click.Path(dir_okay=False), required=True, help="Coding spreadsheet (.xlsx or .csv export)."
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Samples table to write (.csv).")
@click.option(
    "--classes",
    default=None,
    help="Class preset (casme2-5, samm-5, megc-3) or mapping 'emotion=class,...' "
    "(default: params annotate.classes, else the dataset's own 5-class preset).",
)
@click.option(
    "--on-problem",
    type=click.Choice(("fail", "drop")),
    default=None,
    help="fail: list every problem and write nothing; drop: drop those rows and report them (default: params).",
)
@click.option(
    "--overrides",
    type=click.Path(dir_okay=False),
    default=None,
    help="Per-clip corrections (.csv/.xlsx: subject, clip, onset, apex, offset; blank keeps the sheet's value) "
    "(default: params annotate.overrides).",
)
@folder_pattern_option("annotate")
@params_option
def annotate(
    dataset: str,
    root: str,
    coding: str,
    out: str,
    classes: str | None,
    on_problem: str | None,
    overrides: str | None,
    folder_pattern: str | None,
    params_file: str,
) -> None:
    """Parse a CASME II, SAMM or generic coding sheet into one validated row per clip."""
    params = stage_settings(
        params_file,
        "annotate",
        on_problem=on_problem,
        classes=classes,
        overrides=overrides,
        folder_pattern=folder_pattern,
    )
    result = annotate_to_file(
        out,
        dataset,
        coding,
        root,
        params.classes,  # None: the dataset's default classes
        params.on_problem,
        params.overrides,
        resolve_folder_pattern(dataset, folder_pattern, params.folder_pattern),
    )
    for line in summary_lines(result, out):
        click.echo(line)
    if result.dropped:
        click.echo(f"  dropped rows listed in {dropped_path(out)}")
