"""Stage `annotate`: a coding spreadsheet and the clip folders -> the normalized samples table.

Params (section `annotate`): `on_problem` (fail | drop), optional `classes`, `overrides` (a
per-clip corrections file, default null), `folder_pattern` (generic, casme3, smic; default the
format's layout), `sheet` (the workbook sheet when several hold a coding table), `apex_outside`
(estimate | error) and `frame_order` (fail | drop); null: the format's rule.
"""

from __future__ import annotations

import click

from pipeline.datasets.annotate import annotate_to_file, summary_lines
from pipeline.datasets.coding import APEX_OUTSIDE, FRAME_ORDER
from pipeline.datasets.layouts import DATASETS
from pipeline.io.samples import dropped_path, warnings_path
from stages.common import folder_pattern_option, params_option, resolve_folder_pattern, stage_settings


@click.command("annotate")
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    required=True,
    help="Coding-sheet and folder layout: casme2, samm, casme3 (CAS(ME)^3 part A), smic (SMIC-HS-E), "
    "or generic (CSV with subject, clip, onset, apex, offset, emotion).",
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
@click.option(
    "--sheet",
    default=None,
    help="Workbook sheet to read when several hold a coding table, e.g. HS or VIS for SMIC (default: params annotate.sheet).",
)
@click.option(
    "--apex-outside",
    type=click.Choice(APEX_OUTSIDE),
    default=None,
    help="An apex outside onset..offset: estimate it from the frames (flagged imputed_outside) or treat it as an "
    "error (default: params annotate.apex_outside, else estimate; error for casme3).",
)
@click.option(
    "--frame-order",
    type=click.Choice(FRAME_ORDER),
    default=None,
    help="Rows with frames out of order: fail (follow --on-problem) or drop and list them "
    "(default: params annotate.frame_order, else fail; drop for casme3).",
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
    sheet: str | None,
    apex_outside: str | None,
    frame_order: str | None,
    folder_pattern: str | None,
    params_file: str,
) -> None:
    """Parse a CASME II, SAMM, CAS(ME)^3, SMIC or generic coding sheet into one validated row per sample."""
    params = stage_settings(
        params_file,
        "annotate",
        on_problem=on_problem,
        classes=classes,
        overrides=overrides,
        folder_pattern=folder_pattern,
        sheet=sheet,
        apex_outside=apex_outside,
        frame_order=frame_order,
    )
    result = annotate_to_file(
        out,
        dataset,
        coding,
        root,
        classes=params.classes,  # None: the dataset's default classes
        on_problem=params.on_problem,
        overrides=params.overrides,
        folder_pattern=resolve_folder_pattern(dataset, folder_pattern, params.folder_pattern),
        sheet=params.sheet,
        apex_outside=params.apex_outside,  # None: the format's rule
        frame_order=params.frame_order,
    )
    for line in summary_lines(result, out):
        click.echo(line)
    if result.dropped:
        click.echo(f"  dropped rows listed in {dropped_path(out)}")
    if result.warnings:
        click.echo(f"  warnings listed in {warnings_path(out)}")
