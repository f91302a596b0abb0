"""`train.cpu_kernels`: portable pins torch's CPU kernels in the training processes (the stage's and
its fold workers'), gives the same bytes run after run, and is recorded with the run's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import MerError
from pipeline.train.kernels import PORTABLE_ENV, apply_cpu_kernels
from pipeline.train.settings import TrainSettings
from tests.conftest import PROJECT
from tests.test_train_resume import assert_same_run, toy_cache, toy_params


def test_the_setting_is_validated_and_shapes_the_numbers():
    assert TrainSettings.from_params({}).cpu_kernels == "portable"
    assert TrainSettings.from_params({"cpu_kernels": "native"}).result_settings()["cpu_kernels"] == "native"
    with pytest.raises(ValueError, match="cpu_kernels = 'avx2': allowed: 'portable' or 'native'"):
        TrainSettings.from_params({"cpu_kernels": "avx2"})
    with pytest.raises(MerError, match="cpu_kernels must be one of"):
        apply_cpu_kernels("fast")


def test_portable_is_what_this_test_process_runs():
    # conftest.py pins the kernels before torch is imported, as `mer train` does before torch computes
    import torch

    assert apply_cpu_kernels("portable") == "DEFAULT"
    assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
    assert not torch.backends.mkldnn.enabled
    assert all(os.environ[name] == value for name, value in PORTABLE_ENV.items())


def test_portable_convolves_every_batch_as_a_processor_without_avx2_would():
    # NNPACK (AVX2 only) would take batches of 16 and more here, ATen's own code on an older processor
    import torch

    apply_cpu_kernels("portable")
    weight, bias = torch.randn(32, 16, 3, 3), torch.randn(32)
    backends = {
        str(
            torch._C._select_conv_backend(
                torch.randn(batch, 16, 28, 28), weight, bias, [2, 2], [0, 0], [1, 1], False, [0, 0], 1, None
            )
        )
        for batch in (1, 8, 16, 32)
    }
    assert backends == {"_ConvBackend.Slow2d"}


def mer_train(cache: Path, out: Path, params: Path, kernels: str) -> str:
    """`mer train` in a new process whose environment pins nothing, with MKL's and oneDNN's own
    logging on: its output (the fold workers' included) tells which kernels really ran."""
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    env.update(MKL_VERBOSE="1", ONEDNN_VERBOSE="1", PYTHONPATH=str(PROJECT))
    command = [str(Path(sys.executable).parent / "mer"), "train", "--dynamic-images", cache, "--out", out]
    command += ["--params", params, "--cpu-kernels", kernels]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_setting_reaches_the_fold_workers_and_portable_repeats_byte_for_byte(tmp_path):
    cache = toy_cache(tmp_path / "di.h5")
    params = toy_params(tmp_path, jobs=2, epochs=1, mode="baseline")  # 2 loky worker processes train the folds

    log = mer_train(cache, tmp_path / "portable", params, "portable")
    assert "CNR:COMPATIBLE" in log  # MKL's matrix products on the reproducible SSE2 path
    assert "CNR:OFF" not in log
    assert ",convolution," not in log  # no oneDNN convolution: ATen's own
    assert json.loads((tmp_path / "portable" / "run.json").read_text())["params"]["cpu_kernels"] == "portable"

    mer_train(cache, tmp_path / "again", params, "portable")
    assert_same_run(tmp_path / "again", tmp_path / "portable")

    log = mer_train(cache, tmp_path / "native", params, "native")
    assert "CNR:OFF" in log
    assert "CNR:COMPATIBLE" not in log
    assert json.loads((tmp_path / "native" / "run.json").read_text())["params"]["cpu_kernels"] == "native"
