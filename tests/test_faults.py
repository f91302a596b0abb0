"""Fault tolerance: killed stages leave nothing at the output path, shared caches stay untouched."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.atomic import atomic_output
from pipeline.io.aligned_cache import AlignedCacheWriter, AlignedClip
from stages.cli import cli
from tests.conftest import write_params
from tests.test_dynimg_stage import SAMPLE_COLUMNS


@pytest.fixture
def big_inputs(tmp_path):
    """An aligned cache large enough that dynimg takes a few seconds, and its samples table."""
    rng = np.random.default_rng(0)
    aligned, samples = tmp_path / "aligned.h5", tmp_path / "samples.csv"
    rows = [",".join(SAMPLE_COLUMNS)]
    with AlignedCacheWriter(aligned, "casme2", {}) as writer:
        for i in range(60):
            frames = rng.integers(0, 255, (40, 224, 224, 3), dtype=np.uint8)
            writer.add(AlignedClip("sub01", f"EP{i:02d}", frames, np.arange(100, 140), np.zeros((68, 2)), np.eye(2, 3)))
            rows.append(f"casme2,sub01,EP{i:02d},100,120,139,annotated,40,happiness,happiness,12,{i + 2}")
    samples.write_text("\n".join(rows) + "\n")
    return aligned, samples


@pytest.mark.slow
def test_a_killed_stage_leaves_no_output_and_a_rerun_completes(tmp_path, big_inputs, project_params):
    aligned, samples = big_inputs
    out = tmp_path / "di.h5"
    params = write_params(tmp_path, project_params)
    command = [
        sys.executable,
        "-m",
        "stages",
        "dynimg",
        "--aligned",
        str(aligned),
        "--samples",
        str(samples),
        "--classes",
        "casme2-5",
        "--out",
        str(out),
        "--params",
        str(params),
        "--jobs",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".di.h5.tmp-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "a killed stage left a file at the output path"
    rerun = CliRunner().invoke(cli, command[3:])
    assert rerun.exit_code == 0, rerun.output
    assert out.is_file()
    assert not list(tmp_path.glob(".di.h5.tmp-*")), "the killed writer's temporary was not cleaned up"


def test_a_live_writers_temporary_is_not_removed(tmp_path):
    target = tmp_path / "out.h5"
    with atomic_output(target) as first:
        first.write_bytes(b"in progress")
        with atomic_output(target) as second:  # same process: its writer is alive
            second.write_bytes(b"other")
        assert first.read_bytes() == b"in progress"
    assert target.read_bytes() == b"in progress"


def test_a_read_only_shared_cache_is_used_without_modification(tmp_path, big_inputs, project_params):
    aligned, samples = big_inputs
    params = write_params(tmp_path, project_params)
    di = tmp_path / "shared.h5"
    made = CliRunner().invoke(
        cli,
        [
            "dynimg",
            "--aligned",
            str(aligned),
            "--samples",
            str(samples),
            "--classes",
            "casme2-5",
            "--out",
            str(di),
            "--params",
            str(params),
            "--jobs",
            "1",
        ],
    )
    assert made.exit_code == 0, made.output
    os.chmod(di, 0o444)
    before = (hashlib.sha256(di.read_bytes()).hexdigest(), di.stat().st_mtime_ns)
    for args in (
        ["cache", "info", str(di)],
        ["cache", "verify", str(di)],
        ["cache", "preview", str(di), "--out", str(tmp_path / "p.png")],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert (hashlib.sha256(di.read_bytes()).hexdigest(), di.stat().st_mtime_ns) == before
