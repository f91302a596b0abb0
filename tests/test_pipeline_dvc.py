"""The whole DVC pipeline on the `tiny` demo preset: every stage runs, and params are granular."""

from __future__ import annotations

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
RUNS = [f"{ds}-learnet-{mode}" for ds in DATASETS for mode in ("baseline", "dual_phase")]
CELLS = {f"{stage}@{run}" for stage in ("train", "evaluate") for run in RUNS}


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
    params["align"]["jobs"] = params["dynimg"]["jobs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(root, "init", "--no-scm", "-q")
    _dvc(root, "config", "core.analytics", "false")
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
        for mode in ("baseline", "dual_phase"):
            run = cache / "runs" / f"{ds}-learnet-{mode}"
            folds = sorted(p.name for p in (run / "folds").iterdir())
            assert folds == sorted(subjects)
            for fold in folds:
                assert (run / "folds" / fold / "model.pt").is_file()
                assert (run / "folds" / fold / "predictions.csv").is_file()
            metrics = json.loads((cache / "metrics" / f"{ds}-learnet-{mode}.json").read_text())
            assert {"accuracy", "uf1", "uar", "intervals"} <= set(metrics)
            assert list((cache / "reports" / f"{ds}-learnet-{mode}").glob("confusion*.png"))
    table = (cache / "reports" / "results" / "results.md").read_text()
    assert "| casme2 | learnet |" in table and "| samm | learnet |" in table and "pt (" in table
    shown = _dvc(project, "metrics", "show")
    assert "cache/metrics/casme2-learnet-dual_phase.json" in shown and "uf1" in shown


def test_changing_a_dynimg_param_reruns_only_dynimg_train_and_evaluate(project):
    assert "up to date" in _dvc(project, "status")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dynimg"]["phases"]["onset_apex"] = ["onset", "apex+1"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_dvc(project, "status", "--json"))
    assert set(status) == {"dynimg@casme2", "dynimg@samm"}
    rerun = _dvc(project, "repro")
    assert _ran(rerun) == {f"dynimg@{ds}" for ds in DATASETS} | CELLS | {"report"}


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
    resnet = {
        f"{stage}@casme2-resnet18-{mode}" for stage in ("train", "evaluate") for mode in ("baseline", "dual_phase")
    }
    assert _ran(rerun) == resnet | {"report"}
