"""Metrics from confusion matrices, subject-bootstrap intervals, paired comparisons, leakage guard."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import balanced_accuracy_score, f1_score

from pipeline.evaluate.metrics import (
    Predictions,
    bootstrap_intervals,
    metrics_from_confusion,
    paired_comparison,
    summary,
)
from stages.cli import cli
from tests.conftest import write_params


def _predictions(y_true, y_pred, subjects, k=4):
    ids = np.array([f"d/{s}/{i}" for i, s in enumerate(subjects)])
    return Predictions(
        ids,
        np.asarray(subjects),
        np.array(["d"] * len(ids)),
        np.asarray(y_true),
        np.asarray(y_pred),
        [f"c{i}" for i in range(k)],
    )


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(6))
def test_confusion_metrics_match_scikit_learn_with_a_class_missing(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0, 1, 3], size=40)  # class 2 never occurs in the truth, but may be predicted
    y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, 4, 40))
    counts = np.zeros((4, 4), np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    got = metrics_from_confusion(counts)
    expected = summary(y_true, y_pred)
    assert got == pytest.approx({name: expected[name] for name in got})
    assert got["uf1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 3], average="macro", zero_division=0))
    assert got["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_bootstrap_interval_brackets_the_estimate_and_collapses_without_spread():
    subjects = np.repeat([f"s{i}" for i in range(8)], 5)
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 40)
    y_pred = np.where(rng.random(40) < 0.7, y_true, (y_true + 1) % 3)
    pred = _predictions(y_true, y_pred, subjects, k=3)
    intervals = bootstrap_intervals(pred, 500, 0.95, seed=1)
    observed = summary(y_true, y_pred)
    for name in ("accuracy", "uf1", "uar"):
        low, high = intervals[name]
        assert low <= observed[name] <= high and high - low > 0.05
    perfect = bootstrap_intervals(_predictions(y_true, y_true, subjects, k=3), 200)
    assert perfect["accuracy"] == [1.0, 1.0]


def test_paired_comparison_tells_a_consistent_gain_from_none():
    subjects = np.repeat([f"s{i}" for i in range(10)], 6)
    y_true = np.tile([0, 1, 2, 0, 1, 2], 10)
    worse = y_true.copy()
    worse[::3] = (worse[::3] + 1) % 3  # every subject loses two clips
    base, better = _predictions(y_true, worse, subjects, k=3), _predictions(y_true, y_true, subjects, k=3)
    gain = paired_comparison(base, better, 500)
    assert gain["accuracy"]["difference"] == pytest.approx(1 / 3)
    assert gain["accuracy"]["low"] > 0 and gain["accuracy"]["p_not_better"] == 0
    same = paired_comparison(base, base, 200)
    assert same["uf1"]["difference"] == 0 and same["uf1"]["p_not_better"] == 1


@pytest.fixture
def run_with_folds(tmp_path):
    """A minimal run folder with per-fold manifests and predictions, as `mer train` writes it."""
    run = tmp_path / "run"
    rows = {"S1": [("x/S1/0", "a", "a"), ("x/S1/1", "b", "a")], "S2": [("x/S2/2", "b", "b"), ("x/S2/3", "a", "a")]}
    for subject, fold_rows in rows.items():
        fold = run / "folds" / subject
        fold.mkdir(parents=True)
        others = [s for s in rows if s != subject]
        (fold / "manifest.json").write_text(json.dumps({"held_out_subject": subject, "trained_on_subjects": others}))
        (fold / "predictions.csv").write_text(
            "sample_id,subject,true_label,pred_label\n" + "".join(f"{i},{subject},{t},{p}\n" for i, t, p in fold_rows)
        )
    (run / "run.json").write_text(
        json.dumps(
            {
                "model": "toy",
                "mode": "baseline",
                "label_names": ["a", "b"],
                "folds": {s: {"n_test_samples": len(r)} for s, r in rows.items()},
            }
        )
    )
    (run / "predictions.csv").write_text(
        "sample_id,dataset,subject,true_label,pred_label\n"
        + "".join(f"{i},x,{s},{t},{p}\n" for s, fold_rows in rows.items() for i, t, p in fold_rows)
    )
    return run


def _evaluate(tmp_path, run, project_params):
    return CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--run",
            str(run),
            "--out",
            str(tmp_path / "reports"),
            "--params",
            str(write_params(tmp_path, project_params)),
        ],
    )


def test_evaluate_reports_intervals(tmp_path, run_with_folds, project_params):
    result = _evaluate(tmp_path, run_with_folds, project_params)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] == 0.75
    assert metrics["intervals"]["level"] == 0.95 and len(metrics["intervals"]["uar"]) == 2


def test_evaluate_refuses_a_fold_trained_on_its_test_subject(tmp_path, run_with_folds, project_params):
    manifest = run_with_folds / "folds" / "S2" / "manifest.json"
    manifest.write_text(json.dumps({"held_out_subject": "S2", "trained_on_subjects": ["S1", "S2"]}))
    result = _evaluate(tmp_path, run_with_folds, project_params)
    assert result.exit_code != 0
    assert "fold S2: trained on its held-out subject S2" in result.output
    assert not (tmp_path / "reports").exists()


def test_evaluate_refuses_a_clip_tested_in_two_folds(tmp_path, run_with_folds, project_params):
    shutil.copy(
        run_with_folds / "folds" / "S1" / "predictions.csv", run_with_folds / "folds" / "S2" / "predictions.csv"
    )
    result = _evaluate(tmp_path, run_with_folds, project_params)
    assert result.exit_code != 0 and "clip x/S1/0 is tested in two folds: S1 and S2" in result.output


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "other_subject",
            "fold S2: {run}/folds/S2/predictions.csv holds 1 row(s) of subject(s) S1 (x/S1/1), but the fold",
        ),
        (
            "pooled_differs",
            "{run}/predictions.csv: 1 row(s) with values that differ from its fold's predictions.csv (x/S1/1)",
        ),
        ("pooled_extra", "{run}/predictions.csv: 1 row(s) in no fold's predictions.csv (x/S2/9)"),
        ("missing_fold", "fold S2: listed in run.json but {run}/folds/S2 is missing"),
        ("extra_fold", "fold folder {run}/folds/S3 is not listed in run.json"),
    ],
)
def test_evaluate_refuses_folds_that_do_not_match_the_run(tmp_path, run_with_folds, project_params, damage, message):
    run = run_with_folds
    folds = run / "folds"
    if damage == "other_subject":  # S1's second clip predicted by fold S2
        s1, s2 = (folds / s / "predictions.csv" for s in ("S1", "S2"))
        lines = s1.read_text().splitlines(keepends=True)
        s1.write_text("".join(lines[:2]))
        s2.write_text(s2.read_text() + lines[2])
    elif damage == "pooled_differs":
        pooled = run / "predictions.csv"
        pooled.write_text(pooled.read_text().replace("x/S1/1,x,S1,b,a", "x/S1/1,x,S1,b,b"))
    elif damage == "pooled_extra":
        pooled = run / "predictions.csv"
        pooled.write_text(pooled.read_text() + "x/S2/9,x,S2,a,a\n")
    elif damage == "missing_fold":
        shutil.rmtree(folds / "S2")
    else:
        shutil.copytree(folds / "S2", folds / "S3")
    result = _evaluate(tmp_path, run, project_params)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message.format(run=run) in result.output, result.output
    assert not (tmp_path / "reports").exists()


def test_an_interval_without_spread_is_exactly_the_value():
    """A model predicting one class for every clip, every subject alike: the bootstrap cannot move
    the metrics, and the interval must not come out a rounding error above or below them."""
    subjects = np.repeat([f"s{i}" for i in range(6)], 5)
    y_true = np.tile(np.arange(5), 6)
    pred = _predictions(y_true, np.zeros(30, np.int64), subjects, k=5)
    observed = summary(pred.y_true, pred.y_pred)
    intervals = bootstrap_intervals(pred, 50)
    for name in ("accuracy", "uf1", "uar"):
        assert intervals[name] == [observed[name], observed[name]]


def test_the_confusion_matrix_title_names_the_dataset(tmp_path, run_with_folds, project_params, monkeypatch):
    import pipeline.evaluate.run as run_module

    titles, draw = [], run_module.plot_confusion

    def spy(counts, label_names, path, normalize=True, title=""):
        titles.append(title)
        draw(counts, label_names, path, normalize, title)

    monkeypatch.setattr(run_module, "plot_confusion", spy)
    result = _evaluate(tmp_path, run_with_folds, project_params)
    assert result.exit_code == 0, result.output
    assert titles == ["x - toy baseline: acc 0.750, UF1 0.733, UAR 0.750"]
    assert (tmp_path / "reports" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
