"""Tool `combine`: samples tables of several datasets -> one composite samples table (MEGC-style).

Validation, concatenation and writing live in `pipeline.datasets.composite`; this command prints
per-dataset counts. It reads no params section: its only setting, the class preset the tables
must share, is `--classes`.
"""

from __future__ import annotations

import click

from pipeline.datasets.composite import combine_to_file, composite_summary


@click.command("combine")
@click.option(
    "--samples",
    "inputs",
    multiple=True,
    required=True,
    help="A samples table from `mer annotate`, as PATH or NAME=PATH (NAME replaces its dataset column); "
    "give the option once per dataset.",
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Combined samples table to write (.csv).")
@click.option(
    "--classes",
    default=None,
    help="Class preset or mapping every table must use (e.g. megc-3): each label must be one of its classes. "
    "Without it, every table must hold exactly the same labels.",
)
def combine(inputs: tuple[str, ...], out: str, classes: str | None) -> None:
    """Concatenate the samples tables of several datasets for a composite (MEGC-style) run."""
    result = combine_to_file(inputs, out, classes)
    for line in composite_summary(result, out):
        click.echo(line)
