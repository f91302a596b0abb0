"""The `mer` command: one subcommand per DVC stage plus cache tools."""

from __future__ import annotations

import click

from pipeline import __version__
from pipeline.errors import MerError


class _Group(click.Group):
    """Turns MerError into a clean one-message failure with a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MerError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mer")
def cli() -> None:
    """Micro-expression recognition with dual-phase dynamic images (arXiv 2510.15466)."""


def _register() -> None:
    from stages.align import align
    from stages.annotate import annotate
    from stages.cache_tools import cache
    from stages.demo_data import demo_data
    from stages.dynimg import dynimg
    from stages.evaluate import evaluate
    from stages.train import train

    for command in (demo_data, align, annotate, dynimg, train, evaluate, cache):
        cli.add_command(command)


_register()


def main() -> None:
    cli()
