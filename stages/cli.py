"""The `mer` command: one subcommand per DVC stage plus cache tools."""

from __future__ import annotations

import atexit
import errno
import importlib
import os
import sys

import click

from pipeline import __version__
from pipeline.atomic import WriteError
from pipeline.cpu_dispatch import pin_cpu_dispatch
from pipeline.errors import MerError

# Commands are imported when used, so `mer align` does not pay for importing torch.
_COMMANDS = {
    "demo-data": "stages.demo_data:demo_data",
    "align": "stages.align:align",
    "annotate": "stages.annotate:annotate",
    "combine": "stages.combine:combine",
    "dynimg": "stages.dynimg:dynimg",
    "train": "stages.train:train",
    "evaluate": "stages.evaluate:evaluate",
    "report": "stages.report:report",
    "cache": "stages.cache_tools:cache",
    "doctor": "stages.doctor:doctor",
}


_exit_hard = False  # a write failed: HDF5 may crash closing its files at exit
_SETUP_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class _Group(click.Group):
    """Lazily loaded subcommands; MerError becomes one clean message and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attribute = _COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MerError as exc:
            if isinstance(exc, WriteError):
                global _exit_hard
                _exit_hard = True
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            # A failed write outside the atomic outputs (a lock file, a work folder): the path and
            # the system's reason in one line, not a traceback.
            if exc.errno not in _SETUP_ERRNOS or not exc.filename:
                raise
            verb = "access" if exc.errno in (errno.EACCES, errno.EPERM) else "write"
            raise click.ClickException(f"cannot {verb} {exc.filename}: {exc.strerror}") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mer")
def cli() -> None:
    """Micro-expression recognition with dual-phase dynamic images (arXiv 2510.15466)."""


def main() -> None:
    try:  # before any command imports numpy or cv2: outputs that do not depend on the processor
        pin_cpu_dispatch()
    except MerError as exc:
        raise SystemExit(f"Error: {exc}") from None
    try:
        cli()
    except SystemExit as exc:
        # A command that succeeded left its pool idle: its workers are stopped rather than waited
        # for. (pipeline.parallel is looked up, not imported: the commands that start pools have
        # imported it, and importing it here would load numpy for every command.)
        parallel = sys.modules.get("pipeline.parallel")
        if not exc.code and parallel is not None:
            parallel.stop_idle_workers()
        if _exit_hard:  # the message is out; skip the C exit handlers HDF5 can crash in after a full disk
            atexit._run_exitfuncs()  # Python's (joblib's clean-up) still run
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        raise
