"""Options and helpers shared by the stage commands."""

from __future__ import annotations

from typing import Any

import click

from pipeline.params import load_section

params_option = click.option(
    "--params",
    "params_file",
    type=click.Path(dir_okay=False),
    default="params.yaml",
    show_default=True,
    help="Params file whose stage section supplies every setting not given as an option.",
)
jobs_option = click.option("--jobs", type=int, default=None, help="Parallel worker processes (default: params, else 1).")


def stage_params(params_file: str, section: str, **overrides: Any) -> dict[str, Any]:
    """The stage's params section with every option the user actually gave laid over it."""
    params = dict(load_section(params_file, section))
    params.update({key: value for key, value in overrides.items() if value is not None})
    return params


def recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape a stage's output, as stored in it: `jobs` only changes the speed."""
    return {key: value for key, value in params.items() if key != "jobs"}
