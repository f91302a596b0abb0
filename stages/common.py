"""Options and helpers shared by the stage commands."""

from __future__ import annotations

from typing import Any

import click

from pipeline.config import load_section
from pipeline.datasets.layouts import DEFAULT_FOLDER_PATTERN, dataset_format
from pipeline.errors import MerError

params_option = click.option(
    "--params",
    "params_file",
    type=click.Path(dir_okay=False),
    default="params.yaml",
    show_default=True,
    help="Params file whose stage section supplies every setting not given as an option.",
)
jobs_option = click.option(
    "--jobs", type=int, default=None, help="Parallel worker processes (default: params, else 1)."
)


def folder_pattern_option(section: str):
    return click.option(
        "--folder-pattern",
        default=None,
        help="generic only: clip folders relative to --root, e.g. 's{subject}/{clip}' or '{subject}/{clip}/color' "
        f"(default: params {section}.folder_pattern, else {DEFAULT_FOLDER_PATTERN}).",
    )


def resolve_folder_pattern(dataset: str, option: str | None, params: dict[str, Any]) -> str | None:
    """The clip-folder pattern of a generic copy; CASME II and SAMM have fixed layouts and take none."""
    fixed = dataset_format(dataset).fixed_layout
    if option is not None and fixed:
        raise MerError(f"--folder-pattern applies to --dataset generic only; {dataset} folders have a fixed layout")
    return None if fixed else (params.get("folder_pattern") or DEFAULT_FOLDER_PATTERN)


def stage_params(params_file: str, section: str, **overrides: Any) -> dict[str, Any]:
    """The stage's params section with every option the user actually gave laid over it."""
    params = dict(load_section(params_file, section))
    params.update({key: value for key, value in overrides.items() if value is not None})
    return params


def recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape a stage's output, as stored in it: `jobs` only changes the speed."""
    return {key: value for key, value in params.items() if key != "jobs"}
