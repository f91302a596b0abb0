"""`mer doctor`: check the installation and say what to fix."""

from __future__ import annotations

import click

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
@click.option("--params", "params_file", type=click.Path(dir_okay=False), default="params.yaml", show_default=True)
def doctor(cache_dir: str, params_file: str) -> None:
    """Check the installation (landmark model, torch device, DVC, cache folder) and say what to fix."""
    failed = 0
    for check, passed, message in run_checks(installation_checks(cache_dir, params_file)):
        if passed:
            click.echo(f"ok    {check.name}: {message}")
        else:
            failed += 1
            click.echo(f"FAIL  {check.name}: {message}\n      fix: {check.fix}")
    if failed:
        raise MerError(f"{failed} check(s) failed; see the fixes above")
    click.echo("everything needed is in place")
