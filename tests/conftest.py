"""Shared fixtures: no test reaches the network, and params files are written per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never try to download weights in tests
os.environ.setdefault("MPLBACKEND", "Agg")
# Training refuses `cpu_kernels: portable` (the default) in a process where torch already chose other
# CPU kernels: pin them before any test imports torch (pipeline/train/kernels.py).
from pipeline.train.kernels import PORTABLE_ENV  # torch-free

os.environ.update(PORTABLE_ENV)

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_params() -> dict:
    """The project's params.yaml as a dict, to adjust and write into a test's folder."""
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def write_params(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The `tiny` demo copy (CASME II and SAMM layouts with ground truth), generated once per run."""
    from pipeline.demo.generate import generate

    out = tmp_path_factory.mktemp("tiny-demo") / "demo"
    generate(out, preset="tiny", fmt="both", seed=7)
    return out
