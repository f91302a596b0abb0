"""`mer doctor`: check the installation and say what to fix."""

from __future__ import annotations

import click
from click.core import ParameterSource

from pipeline.config import DEFAULT_PARAMS_FILE
from pipeline.doctor import installation_checks, run_checks
from pipeline.errors import MerError


@click.command("doctor")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    default="cache",
    show_default=True,
    help="Cache folder to test.",
)
@click.option(
    "--params",
    "params_file",
    type=click.Path(dir_okay=False),
    default=DEFAULT_PARAMS_FILE,
    show_default=True,
    help="Params file to validate (every section, and the sections against each other).",
)
@click.pass_context
def doctor(ctx: click.Context, cache_dir: str, params_file: str) -> None:
    """Check the installation (landmark model, torch device, DVC, cache folder, params) and say what to fix."""
    explicit = ctx.get_parameter_source("params_file") is not ParameterSource.DEFAULT
    failed = 0
    for check, passed, message in run_checks(installation_checks(cache_dir, params_file, explicit)):
        if passed:
            click.echo(f"ok    {check.name}: {message}")
        else:
            failed += 1
            click.echo(f"FAIL  {check.name}: {message}\n      fix: {check.fix}")
    if failed:
        raise MerError(f"{failed} check(s) failed; see the fixes above")
    click.echo("everything needed is in place")
