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
        help="generic, casme3, smic: clip folders relative to --root, e.g. 's{subject}/{clip}' or "
        f"'{{subject}}/{{clip}}/color' (default: params {section}.folder_pattern, else the format's layout: "
        f"{DEFAULT_FOLDER_PATTERN} for generic, {{subject}}/{{clip}}/color for casme3, {{subject}}/micro/*/{{clip}} for smic).",
    )


def resolve_folder_pattern(dataset: str, option: str | None, params: dict[str, Any]) -> str | None:
    """The clip-folder pattern of a layout found by pattern (generic, casme3, smic): the option, else
    params `folder_pattern`, else the format's own; CASME II and SAMM have fixed layouts and take none."""
    fmt = dataset_format(dataset)
    if option is not None and fmt.fixed_layout:
        raise MerError(
            f"--folder-pattern applies to --dataset generic only (and casme3, smic); {dataset} folders have a fixed layout"
        )
    if fmt.fixed_layout:
        return None
    return option or params.get("folder_pattern") or fmt.folder_pattern


def stage_params(params_file: str, section: str, **overrides: Any) -> dict[str, Any]:
    """The stage's params section with every option the user actually gave laid over it."""
    params = dict(load_section(params_file, section))
    params.update({key: value for key, value in overrides.items() if value is not None})
    return params


def recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape a stage's output, as stored in it: `jobs` only changes the speed."""
    return {key: value for key, value in params.items() if key != "jobs"}
