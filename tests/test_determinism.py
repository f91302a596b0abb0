"""Byte-identical outputs: the same inputs and params give the same bytes on every run.

DVC decides what to rerun from file hashes, and shared caches are compared by checksum, so a stage
whose output changed without a cause would rerun everything downstream. The aligned cache, the DI
cache, the demo data and the run folders are checked in their stages' test files
(`test_align.py`, `test_dynimg_stage.py`, `test_demo_data.py`, `test_train_resume.py`); this file
covers annotate, evaluate and report.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from stages.cli import cli
from tests.conftest import write_params
from tests.test_train_evaluate import make_cache, params_for


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (or the file itself) by relative path, with its bytes."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def test_annotate_writes_the_same_tables_twice(tmp_path, tiny_demo, project_params):
    params = write_params(tmp_path, project_params)
    demo = {
        "casme2": ("CASME2_RAW_selected", "CASME2-coding-20140508.xlsx", "casme2-5"),
        "samm": ("SAMM", "SAMM_Micro_FACS_Codes_v2.xlsx", "samm-5"),
    }
    for dataset, (root, coding, classes) in demo.items():
        outputs = []
        for run in ("first", "second"):
            out = tmp_path / run / f"{dataset}.csv"
            invoke(
                "annotate",
                "--dataset",
                dataset,
                "--root",
                tiny_demo / dataset / root,
                "--coding",
                tiny_demo / dataset / coding,
                "--classes",
                classes,
                "--out",
                out,
                "--params",
                params,
            )
            outputs.append({**tree_bytes(out), **tree_bytes(out.with_suffix(".dropped.csv"))})
        assert len(outputs[0]) == 2 and outputs[0] == outputs[1], dataset
        # the tiny demo has imputed apexes (estimated from the frames) and dropped clips: both must repeat
        table = outputs[0][f"{dataset}.csv"].decode()
        assert "imputed" in table or "estimated" in table, table[:300]


def test_evaluate_and_report_write_the_same_bytes_twice(tmp_path):
    cache = make_cache(tmp_path / "di.h5")
    params = params_for(tmp_path, epochs=1, mode="baseline")
    runs = tmp_path / "runs"
    invoke("train", "--dynamic-images", cache, "--out", runs / "casme2-learnet-baseline", "--params", params)
    invoke(
        "train",
        "--dynamic-images",
        cache,
        "--out",
        runs / "casme2-learnet-dual_phase",
        "--params",
        params,
        "--mode",
        "dual_phase",
    )
    evaluated, reported = [], []
    for name in ("first", "second"):
        reports, metrics = tmp_path / name / "reports", tmp_path / name / "metrics.json"
        invoke(
            "evaluate",
            "--run",
            runs / "casme2-learnet-dual_phase",
            "--out",
            reports,
            "--metrics",
            metrics,
            "--params",
            params,
        )
        evaluated.append({**tree_bytes(reports), **tree_bytes(metrics)})
        invoke(
            "report",
            "--run",
            runs / "casme2-learnet-baseline",
            "--run",
            runs / "casme2-learnet-dual_phase",
            "--out",
            tmp_path / name / "results",
            "--params",
            params,
        )
        reported.append(tree_bytes(tmp_path / name / "results"))
    assert "confusion_matrix.png" in evaluated[0] and "metrics.json" in evaluated[0]  # bootstrap intervals included
    assert evaluated[0] == evaluated[1]
    assert {"results.md", "results.csv", "results.png"} <= set(reported[0])
    assert reported[0] == reported[1]
