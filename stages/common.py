"""Options and helpers shared by the stage commands."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource
from pydantic import BaseModel

from pipeline.config import DEFAULT_PARAMS_FILE, Params, load_params
from pipeline.datasets.layouts import DEFAULT_FOLDER_PATTERN, dataset_format
from pipeline.errors import MerError

_SET_VALUES = "mer.set"


def _remember_assignments(ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> None:
    ctx.meta[_SET_VALUES] = list(values)


def params_option(command):
    """`--params FILE` and `--set SECTION.KEY=VALUE` (any params key, validated like the file)."""
    command = click.option(
        "--set",
        "assignments",
        multiple=True,
        expose_value=False,
        callback=_remember_assignments,
        metavar="SECTION.KEY=VALUE",
        help="Set any params key for this run, e.g. --set train.epochs=5 --set 'dynimg.phases.onset_apex=[onset, apex]' "
        "(VALUE is read as YAML and validated like the file; repeatable).",
    )(command)
    return click.option(
        "--params",
        "params_file",
        type=click.Path(dir_okay=False),
        default=DEFAULT_PARAMS_FILE,
        show_default=True,
        help="Params file whose stage section supplies every setting not given as an option "
        "(none at the default path: the built-in defaults, which equal the project's params.yaml).",
    )(command)


jobs_option = click.option(
    "--jobs", type=int, default=None, help="Processes working in parallel (default: params, else 1)."
)


def folder_pattern_option(section: str):
    return click.option(
        "--folder-pattern",
        default=None,
        help="generic, casme3, smic: clip folders relative to --root, e.g. 's{subject}/{clip}' or "
        f"'{{subject}}/{{clip}}/color' (default: params {section}.folder_pattern, else the format's layout: "
        f"{DEFAULT_FOLDER_PATTERN} for generic, {{subject}}/{{clip}}/color for casme3, {{subject}}/micro/*/{{clip}} for smic).",
    )


def resolve_folder_pattern(dataset: str, option: str | None, folder_pattern: str | None) -> str | None:
    """The clip-folder pattern of a layout found by pattern (generic, casme3, smic): the option, else
    the section's `folder_pattern`, else the format's own; CASME II and SAMM have fixed layouts and take none."""
    fmt = dataset_format(dataset)
    if option is not None and fmt.fixed_layout:
        raise MerError(
            f"--folder-pattern applies to --dataset generic only (and casme3, smic); {dataset} folders have a fixed layout"
        )
    if fmt.fixed_layout:
        return None
    return option or folder_pattern or fmt.folder_pattern


def stage_params(params_file: str) -> Params:
    """The params file the stage reads; where none exists at the default path (not given with
    --params), the built-in defaults, said in one line."""
    ctx = click.get_current_context(silent=True)
    explicit = ctx is None or ctx.get_parameter_source("params_file") is not ParameterSource.DEFAULT
    params = load_params(params_file, explicit=explicit)
    if params.builtin:
        click.echo(
            f"note: no {params_file} here: using the built-in defaults (pass --params FILE for others)", err=True
        )
    return params.with_assignments(ctx.meta.get(_SET_VALUES, []) if ctx is not None else [])


def stage_settings(params_file: str, section: str, **options: Any) -> Any:
    """The stage's validated params section with every option the user actually gave laid over it."""
    return stage_params(params_file).section(section, **options)


def recorded_params(settings: BaseModel) -> dict[str, Any]:
    """The settings that shape a stage's output, as stored in it: `jobs` only changes the speed."""
    return settings.model_dump(mode="json", exclude={"jobs"})
