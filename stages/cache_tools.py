"""`mer cache info`, `mer cache verify` and `mer cache preview`: inspect and check HDF5 caches."""

from __future__ import annotations

import click

from pipeline.errors import MerError
from pipeline.io.caches import describe, verify


@click.group("cache")
def cache() -> None:
    """Inspect and verify aligned and dynamic-image caches."""


@cache.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
def info(file: str) -> None:
    """Print schema, params, provenance and contents of a cache."""
    for line in describe(file):
        click.echo(line)


@cache.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
def verify_command(file: str) -> None:
    """Check schema, shapes and stored checksums; exit non-zero when the file is damaged."""
    problems = verify(file)
    if problems:
        raise MerError(f"{file} failed verification:\n" + "\n".join(f"  - {p}" for p in problems))
    click.echo(f"{file}: OK")


@cache.command("preview")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG to write.")
@click.option("--count", type=int, default=6, show_default=True, help="Samples to show (spread over the classes).")
def preview(file: str, out: str, count: int) -> None:
    """Draw the full DI and the phase DIs of a few clips side by side (PNG)."""
    from pipeline.dynimg.preview import write_preview  # matplotlib only when drawing

    shown = write_preview(file, out, count)
    click.echo(f"preview of {shown} clips -> {out}")
