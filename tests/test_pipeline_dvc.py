"""The whole DVC pipeline on the `tiny` demo preset: every stage runs, and params are granular."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from tests.conftest import PROJECT

pytestmark = pytest.mark.slow
DATASETS = ("casme2", "samm")
MODES = ("baseline", "baseline_steps", "dual_phase")
RUNS = [f"{ds}-learnet-{mode}" for ds in DATASETS for mode in MODES]  # seed 0: folders -s0, stages -0
CELLS = {f"{stage}@{run}-0" for stage in ("train", "evaluate") for run in RUNS}


def _dvc(project: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project (code, dvc.yaml, params) reproduced once on tiny data."""
    root = tmp_path_factory.mktemp("project")
    for name in ("pipeline", "stages"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT / name, root / name)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["demo"]["preset"] = "tiny"
    params["train"].update(epochs=2, jobs=1)
    params["models"]["learnet"]["epochs"] = 2
    params["experiment"]["seeds"] = [0]
    params["align"]["jobs"] = params["dynimg"]["jobs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(root, "init", "--no-scm", "-q")
    _dvc(root, "config", "core.analytics", "false")
    config = configparser.ConfigParser()
    config.read(PROJECT / ".dvc" / "config")
    _dvc(root, "config", "cache.type", config["cache"]["type"].strip('"'))  # the project's link types
    first = _dvc(root, "repro")
    assert _ran(first) == {f"{stage}@{ds}" for stage in ("align", "annotate", "dynimg") for ds in DATASETS} | CELLS | {
        "demo_data",
        "report",
    }
    return root


def test_repro_leaves_every_artifact(project):
    cache = project / "cache"
    for ds in DATASETS:
        with h5py.File(cache / "aligned" / f"{ds}.h5") as handle:
            assert handle.attrs["schema"] == "mer.aligned"
        assert (cache / "aligned" / f"{ds}.h5.preview.png").read_bytes()[:4] == b"\x89PNG"
        assert (cache / "samples" / f"{ds}.csv").is_file()
        with h5py.File(cache / "dynamic_images" / f"{ds}.h5") as handle:
            assert set(handle["images"]) == {"full", "onset_apex", "apex_offset"}
            subjects = set(handle["subject"].asstr()[()])
        for mode in MODES:
            run = cache / "runs" / f"{ds}-learnet-{mode}-s0"
            folds = sorted(p.name for p in (run / "folds").iterdir())
            assert folds == sorted(subjects)
            for fold in folds:
                assert (run / "folds" / fold / "model.pt").is_file()
                assert (run / "folds" / fold / "predictions.csv").is_file()
            metrics = json.loads((cache / "metrics" / f"{ds}-learnet-{mode}-s0.json").read_text())
            assert {"accuracy", "uf1", "uar", "intervals"} <= set(metrics)
            assert list((cache / "reports" / f"{ds}-learnet-{mode}-s0").glob("confusion*.png"))
    table = (cache / "reports" / "results" / "results.md").read_text()
    assert "| casme2 | learnet |" in table and "| samm | learnet |" in table and "pt (" in table
    assert "vs baseline (same epochs)" in table and "vs baseline_steps (same steps)" in table
    shown = _dvc(project, "metrics", "show")
    assert "cache/metrics/casme2-learnet-dual_phase-s0.json" in shown and "uf1" in shown


def _phase_lengths(project: Path) -> list[int]:
    """Frames spanned by every phase of every sample of both DI caches (before any widening)."""
    lengths = []
    for ds in DATASETS:
        with h5py.File(project / "cache" / "dynamic_images" / f"{ds}.h5") as handle:
            onset, apex, offset = (handle[name][()] for name in ("onset", "apex", "offset"))
        lengths += [*(offset - onset + 1), *(apex - onset + 1), *(offset - apex + 1)]
    return [int(n) for n in lengths]


def _stamps(project: Path, runs) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for run in runs
        for p in (project / "cache" / "runs" / run).rglob("*")
        if p.is_file()
    }


def _set_params(project: Path, change) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    change(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_dynimg_setting_that_changes_no_image_reruns_no_training(project):
    shortest = min(_phase_lengths(project))
    assert shortest >= 2, "the tiny demo has a one-frame phase: min_phase_frames 2 widens it"
    value = shortest if shortest > 2 else 1  # widens nothing, as 2 did not
    caches = {ds: (project / "cache" / "dynamic_images" / f"{ds}.h5").read_bytes() for ds in DATASETS}
    _set_params(project, lambda params: params["dynimg"].update(min_phase_frames=value))
    rerun = _dvc(project, "repro")
    assert _ran(rerun) == {f"dynimg@{ds}" for ds in DATASETS}
    assert all((project / "cache" / "dynamic_images" / f"{ds}.h5").read_bytes() == caches[ds] for ds in DATASETS)
    _set_params(project, lambda params: params["dynimg"].update(min_phase_frames=2))
    assert _ran(_dvc(project, "repro")) <= {f"dynimg@{ds}" for ds in DATASETS}  # or restored from the run cache
    assert "up to date" in _dvc(project, "status")


def test_changing_one_phase_retrains_only_the_cells_that_read_it(project):
    assert "up to date" in _dvc(project, "status")
    baseline = [f"{ds}-learnet-baseline" for ds in DATASETS]
    before = _stamps(project, baseline)
    _set_params(project, lambda params: params["dynimg"]["phases"].update(onset_apex=["onset", "apex+1"]))
    status = json.loads(_dvc(project, "status", "--json"))
    assert set(status) == {"dynimg@casme2", "dynimg@samm"}
    rerun = _dvc(project, "repro")
    dual = {f"{stage}@{ds}-learnet-dual_phase" for stage in ("train", "evaluate") for ds in DATASETS}
    # DVC starts every train cell (its dep is the whole DI cache); the baseline ones find their run
    # trained on the same full DIs and keep it, so their evaluate does not rerun
    assert _ran(rerun) == {f"dynimg@{ds}" for ds in DATASETS} | dual | {f"train@{run}" for run in baseline} | {"report"}
    for run in baseline:
        assert f"unchanged: cache/runs/{run} was trained with the same settings, DIs of phases full" in rerun
    assert _stamps(project, baseline) == before
    assert "unchanged: cache/runs/casme2-learnet-dual_phase" not in rerun
    assert "up to date" in _dvc(project, "status")
    assert not list((project / "cache" / "runs").glob("*/timings.json"))
    assert {p.name for p in (project / "cache" / "timings").iterdir()} == {f"{run}.json" for run in RUNS}


def test_changing_one_models_settings_reruns_only_its_cells(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["experiment"]["models"] = ["learnet", "resnet18"]
    params["experiment"]["datasets"] = ["casme2"]
    params["models"]["resnet18"] = {"input_size": 32}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(project, "repro")  # trains the new resnet18 cells
    params["models"]["resnet18"]["lr"] = 0.01
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = _dvc(project, "repro")
    resnet = {f"{stage}@casme2-resnet18-{mode}-0" for stage in ("train", "evaluate") for mode in MODES}
    assert _ran(rerun) == resnet | {"report"}
