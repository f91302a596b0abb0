"""One label set in every resample, and the two-level (subjects x seeds) bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from pipeline.evaluate.metrics import (
    Predictions,
    _draws,
    _resampled,
    _seed_confusions,
    bootstrap_intervals,
    compute_metrics,
    label_set,
    metrics_batch,
    paired_seed_comparison,
    seed_bootstrap,
    seed_summary,
)


def _predictions(y_true, y_pred, subjects, k):
    ids = np.array([f"d/{s}/{i}" for i, s in enumerate(subjects)])
    return Predictions(
        ids, np.asarray(subjects), np.array(["d"] * len(ids)), np.asarray(y_true), np.asarray(y_pred), list("abcd")[:k]
    )


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_uf1_and_uar_use_the_fixed_label_set_in_every_resample():
    # Class 2 ("c") has clips of one subject only (s0): every resample without s0 lacks it. Class 3
    # ("d") is in the cache's label names but has no clip at all: it is outside the fixed set.
    subjects = np.repeat([f"s{i}" for i in range(6)], 4)
    y_true = np.array([0, 1, 2, 2] + [0, 1, 0, 1] * 5)
    y_pred = np.array([0, 1, 2, 0] + [0, 1, 1, 1] * 5)
    pred = _predictions(y_true, y_pred, subjects, k=4)
    assert label_set(pred).tolist() == [0, 1, 2]
    headline = compute_metrics(pred)
    assert headline["classes"] == ["a", "b", "c"]
    assert headline["uf1"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro"))

    confusions = _seed_confusions([pred])
    weights, seeds = _draws(confusions.shape[1], 1, 400, seed=3)
    lacking = weights[:, 0] == 0  # resamples without s0, hence without class c
    assert 0 < lacking.sum() < 400
    draws = _resampled(confusions, weights, seeds, label_set(pred))
    subject_index = np.unique(subjects, return_inverse=True)[1]
    for r in np.flatnonzero(lacking)[:20].tolist() + np.flatnonzero(~lacking)[:20].tolist():
        rows = np.concatenate(
            [np.flatnonzero(subject_index == s) for s in np.repeat(np.arange(6), weights[r].astype(int))]
        )
        t, p = y_true[rows], y_pred[rows]
        fixed = f1_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0)
        assert draws["uf1"][r] == pytest.approx(fixed)
        assert draws["uar"][r] == pytest.approx(recall_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0))
        if lacking[r]:  # c counts with F1 = 0: not the mean over the two classes the resample holds
            present = f1_score(t, p, labels=[0, 1], average="macro", zero_division=0)
            assert draws["uf1"][r] == pytest.approx(present * 2 / 3)
    low, high = bootstrap_intervals(pred, 400, 0.95, seed=3)["uf1"]
    assert low <= headline["uf1"] <= high


def test_metrics_batch_counts_an_absent_class_as_zero():
    counts = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    fixed = metrics_batch(counts[None], [0, 1, 2])
    present = metrics_batch(counts[None])
    assert present["uar"][0] == pytest.approx((0.75 + 1) / 2)
    assert fixed["uar"][0] == pytest.approx((0.75 + 1) / 3)


def _seeded_runs(n_seeds, noise, rng, subjects, y_true, k=3):
    runs = []
    for _ in range(n_seeds):
        y_pred = np.where(rng.random(len(y_true)) < noise, rng.integers(0, k, len(y_true)), y_true)
        runs.append(_predictions(y_true, y_pred, subjects, k))
    return runs


def test_seed_bootstrap_interval_covers_every_seed_and_widens_with_seed_noise():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i}" for i in range(10)], 6)
    y_true = np.tile([0, 1, 2], 20)
    runs = _seeded_runs(4, 0.5, rng, subjects, y_true)
    spread = seed_summary(runs)
    low, high = seed_bootstrap(runs, 500, 0.95)["accuracy"]
    assert spread["accuracy"]["seeds"] == 4 and spread["accuracy"]["sd"] > 0
    assert low <= spread["accuracy"]["min"] <= spread["accuracy"]["max"] <= high
    assert low <= spread["accuracy"]["mean"] <= high
    # Identical seeds: no seed spread, and the interval is the subject bootstrap's.
    assert seed_bootstrap([runs[0]] * 3, 500, 0.95) == bootstrap_intervals(runs[0], 500, 0.95)
    assert seed_summary([runs[0]] * 3)["uf1"]["sd"] == 0


def test_paired_seed_comparison_sees_a_consistent_gain_and_none_against_itself():
    rng = np.random.default_rng(1)
    subjects = np.repeat([f"s{i}" for i in range(10)], 6)
    y_true = np.tile([0, 1, 2], 20)
    weak, strong = _seeded_runs(2, 0.7, rng, subjects, y_true), _seeded_runs(2, 0.1, rng, subjects, y_true)
    gain = paired_seed_comparison(weak, strong, 500)
    assert gain["accuracy"]["low"] > 0 and gain["accuracy"]["p_not_better"] < 0.05
    assert gain["uf1"]["difference"] == pytest.approx(
        seed_summary(strong)["uf1"]["mean"] - seed_summary(weak)["uf1"]["mean"]
    )
    none = paired_seed_comparison(weak, weak, 500)
    assert none["accuracy"]["difference"] == 0 and none["accuracy"]["low"] < 0 < none["accuracy"]["high"]
