"""`mer doctor`: check the installation and say what to fix."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import yaml

from pipeline.errors import MerError

STAGE_SECTIONS = (
    "demo",
    "datasets",
    "experiment",
    "models",
    "align",
    "annotate",
    "dynimg",
    "train",
    "evaluate",
    "report",
)


def _landmark_model() -> str:
    from pipeline.align.landmarks import load_models, model_folder

    load_models()
    return f"dlib 68-point model in {model_folder()}"


def _torch() -> str:
    import torch

    device = f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU only (no CUDA device)"
    return f"torch {torch.__version__}, {device}"


def _timm() -> str:
    import timm

    return f"timm {timm.__version__} (pretrained weights need the hub online or a local `train.weights` file)"


def _dvc() -> str:
    version = importlib.metadata.version("dvc")
    if shutil.which("git") is None:
        raise RuntimeError(
            f"dvc {version} found but git is not on PATH: install git (dvc exp and metrics diff need it)"
        )
    return f"dvc {version}, git {shutil.which('git')}"


def _writable(folder: Path) -> Callable[[], str]:
    def check() -> str:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return f"{folder} is writable"

    return check


def _params(path: Path) -> Callable[[], str]:
    def check() -> str:
        if not path.is_file():
            raise RuntimeError(f"{path} not found: run from the project folder or pass --params")
        data = yaml.safe_load(path.read_text()) or {}
        missing = [s for s in STAGE_SECTIONS if s not in data]
        if missing:
            raise RuntimeError(f"{path} lacks section(s) {', '.join(missing)}: compare with the project's params.yaml")
        return f"{path} has every stage section"

    return check


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
    checks = [
        ("landmark model", _landmark_model, "pip install --force-reinstall face-recognition-models dlib-bin"),
        ("torch", _torch, "pip install -e . (installs torch with torchvision and timm)"),
        ("timm", _timm, "pip install -e ."),
        ("dvc", _dvc, "pip install -e . and install git"),
        ("cache folder", _writable(Path(cache_dir)), f"make {cache_dir} writable or pass --cache DIR"),
        ("params", _params(Path(params_file)), "restore params.yaml from the project"),
    ]
    failed = 0
    for name, check, fix in checks:
        try:
            click.echo(f"ok    {name}: {check()}")
        except Exception as exc:  # every failure is reported, none stops the others
            failed += 1
            click.echo(f"FAIL  {name}: {exc}\n      fix: {fix}")
    if failed:
        raise MerError(f"{failed} check(s) failed; see the fixes above")
    click.echo("everything needed is in place")
