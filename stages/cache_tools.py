"""`mer cache info`, `mer cache verify` and `mer cache preview`: inspect and check HDF5 caches."""

from __future__ import annotations

import click

from pipeline.errors import MerError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA
from pipeline.io.caches import cache_schema, describe, verify


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
@click.option(
    "--clips",
    multiple=True,
    metavar="SUBJECT/CLIP",
    help="Clips to draw, e.g. sub01/EP02_01f (repeat, or separate with commas or spaces).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Clips to draw without --clips (default: enough to show every class and subject, at most 12).",
)
def preview(file: str, out: str, clips: tuple[str, ...], count: int | None) -> None:
    """Draw a few clips of either cache into a PNG.

    DI cache: the full and phase DIs of each clip, one clip per class and subject unless --clips
    chooses. Aligned cache: the reference frame with its landmarks and the first, middle and last
    frames of each clip, one clip per subject unless --clips chooses.
    """
    wanted = [clip for value in clips for clip in value.replace(",", " ").split()]
    if cache_schema(file) == ALIGNED_SCHEMA:  # matplotlib / OpenCV only when drawing
        from pipeline.align.preview import write_aligned_preview as write
    else:
        from pipeline.dynimg.preview import write_preview as write
    shown = write(file, out, wanted, count)
    click.echo(f"preview of {shown} clips -> {out}")
