"""The installation checks of `mer doctor`: each says what is in place, or fails with what is wrong."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import SECTIONS, read_params_file, validate_params

STAGE_SECTIONS = tuple(SECTIONS)


@dataclass(frozen=True)
class Check:
    """One check: its name, the test itself, and what to do when it fails."""

    name: str
    run: Callable[[], str]  # what is in place; raises with what is wrong
    fix: str


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


def _cpu_dispatch() -> str:
    from pipeline.cpu_dispatch import dispatch_state

    return dispatch_state()


def _dvc() -> str:
    version = importlib.metadata.version("dvc")
    if shutil.which("git") is None:
        raise RuntimeError(
            f"dvc {version} found but git is not on PATH: install git (dvc exp and metrics diff need it)"
        )
    return f"dvc {version}, git {shutil.which('git')}"


def _writable(folder: Path) -> Callable[[], str]:
    """The folder is writable, or could be created; the check itself creates nothing that stays."""

    def check() -> str:
        if folder.is_dir():
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
            return f"{folder} is writable"
        parent = folder.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if folder.exists() or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise RuntimeError(f"{folder} is not a folder and cannot be created in {parent}")
        return f"{folder} does not exist yet; it can be created in {parent}"

    return check


def _params(path: Path, explicit: bool) -> Callable[[], str]:
    def check() -> str:
        if not path.exists() and not explicit:
            return f"no {path} here: the stages use the built-in defaults (the project's params.yaml values)"
        if not path.is_file():
            raise RuntimeError(f"{path} not found: run from the project folder or pass --params")
        problems = validate_params(read_params_file(path), path)
        if problems:
            raise RuntimeError(
                f"{path} has {len(problems)} problem(s):\n" + "\n".join(f"        - {p}" for p in problems)
            )
        return f"{path} has every stage section, each valid"

    return check


def installation_checks(cache_dir: str | Path, params_file: str | Path, explicit_params: bool = True) -> list[Check]:
    """Landmark model, torch device, timm, pinned CPU dispatch, DVC with git, a writable cache folder,
    a valid params file.

    With `explicit_params` False a missing params file passes: the stages use their built-in defaults.
    """
    return [
        Check("landmark model", _landmark_model, "pip install --force-reinstall face-recognition-models dlib-bin"),
        Check("torch", _torch, "pip install -e . (installs torch with torchvision and timm)"),
        Check("timm", _timm, "pip install -e ."),
        Check(
            "CPU dispatch",
            _cpu_dispatch,
            "run through `mer` (it pins numpy, OpenCV and OpenBLAS before loading them); see pipeline/cpu_dispatch.py",
        ),
        Check("dvc", _dvc, "pip install -e . and install git"),
        Check("cache folder", _writable(Path(cache_dir)), f"make {cache_dir} writable or pass --cache DIR"),
        Check(
            "params",
            _params(Path(params_file), explicit_params),
            "correct each key named above (compare with the project's params.yaml)",
        ),
    ]


def run_checks(checks: Iterable[Check]) -> Iterator[tuple[Check, bool, str]]:
    """(check, passed, what is in place or what is wrong) for each check, as it runs."""
    for check in checks:
        try:
            passed, message = True, check.run()
        except Exception as exc:  # every failure is reported, none stops the others
            passed, message = False, str(exc)
        yield check, passed, message
