"""Fair comparisons in training: no enlarged DIs, the equal-budget baseline, seeds, degenerate phases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import ReportSection
from pipeline.dynimg.dataset import DynamicImageSettings, degenerate_phase
from pipeline.errors import MerError
from pipeline.evaluate.report import build_report, experiment_runs
from pipeline.train.data import prepare_images
from pipeline.train.fold import planned_steps, steps_per_epoch, train_fold
from pipeline.train.run import train_cache
from pipeline.train.settings import TrainSettings
from tests.di_cache import write_dynamic_images
from tests.test_training_modes import settings_for, tiny_data

# --------------------------------------------------------------------------------------------
# Resolution


def _cache(path, size, n=4):
    subjects = ["sub01", "sub01", "sub02", "sub02"][:n]
    samples = {
        "sample_id": [f"casme2/{s}/EP{i}" for i, s in enumerate(subjects)],
        "dataset": ["casme2"] * n,
        "subject": subjects,
        "clip": [f"EP{i}" for i in range(n)],
        "label": [0, 1, 0, 1][:n],
        "onset": [1] * n,
        "apex": [3] * n,
        "offset": [6] * n,
        "apex_source": ["annotated"] * n,
    }
    images = {"full": np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)}
    write_dynamic_images(path, samples, images, ["a", "b"], {"size": size})
    return path


def test_training_at_224_from_a_112_cache_is_refused_naming_both_sizes(tmp_path):
    cache = _cache(tmp_path / "di.h5", 112)
    settings = TrainSettings.from_params({"model": "resnet18", "mode": "baseline", "input_size": 224, "device": "cpu"})
    with pytest.raises(MerError) as error:
        train_cache(cache, tmp_path / "run", settings, echo=lambda line: None)
    message = str(error.value)
    assert "112 px" in message and "224 px" in message and "dynimg.size" in message and "input_size: 112" in message
    assert not (tmp_path / "run").exists()


def test_a_larger_stored_di_is_reduced_by_area_averaging_at_load():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    out = prepare_images(stack, 4, mean=(0, 0, 0), std=(1, 1, 1))
    expected = stack.astype(np.float32).reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4)) / 255
    assert out.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-6)
    with pytest.raises(MerError, match="holds 8 px dynamic images but the model takes 16 px"):
        prepare_images(stack, 16, mean=(0, 0, 0), std=(1, 1, 1))


# --------------------------------------------------------------------------------------------
# The equal-budget baseline


@pytest.fixture
def step_counter():
    counts = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda *args: counts.append(1))
    yield counts
    handle.remove()


@pytest.mark.parametrize("dropped", [{}, {"apex_offset": np.array([0, 2, 3])}])
def test_baseline_steps_takes_as_many_optimizer_steps_as_dual_phase(step_counter, dropped):
    data = tiny_data(subjects=2, clips=7)
    data.dropped = dropped
    taken = {}
    for mode in ("baseline", "baseline_steps", "dual_phase"):
        step_counter.clear()
        result = train_fold(data, "sub01", settings_for(mode=mode, epochs=2, batch_size=4))
        taken[mode] = len(step_counter)
        assert result.manifest["optimizer_steps"] == taken[mode]
    n = 7 - sum(int(i >= 7) for i in dropped.get("apex_offset", []))  # training rows of sub02: 7..13
    assert taken["baseline"] == 2 * steps_per_epoch(7, 4) == 4
    assert taken["dual_phase"] == 2 * steps_per_epoch(7 + 7 + n, 4)
    assert taken["baseline_steps"] == taken["dual_phase"]
    # more epochs over the baseline's own samples, the last one partial
    train_idx = np.arange(7, 14)
    assert (
        planned_steps(data, settings_for(mode="baseline_steps", epochs=2, batch_size=4), train_idx)
        == taken["dual_phase"]
    )


def test_warmup_and_cosine_schedule_follow_the_steps():
    from pipeline.train.fold import lr_factor

    factors = [lr_factor(step, 10, 2, "cosine") for step in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0 and factors[-1] < 0.05
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert [lr_factor(s, 10, 0, "constant") for s in range(3)] == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# Seeds


def test_seeds_give_distinct_runs_and_the_report_aggregates_them(tmp_path):
    data = tiny_data(subjects=2, clips=6, size=16)
    runs = []
    for mode in ("baseline", "dual_phase"):
        for seed in (0, 1):
            settings = settings_for(mode=mode, seed=seed, epochs=1, input_size=16)
            folder = tmp_path / "runs" / f"toy-learnet-{mode}-s{seed}"
            from pipeline.train.run import train_run

            train_run(data, settings, folder, {"fingerprint": "toy"}, echo=lambda line: None)
            runs.append(folder)
    probs = [
        [
            line.split(",")[5:]
            for line in (tmp_path / "runs" / f"toy-learnet-baseline-s{s}" / "predictions.csv").read_text().splitlines()
        ]
        for s in (0, 1)
    ]
    assert probs[0] != probs[1]  # another seed trains another model
    assert [str(p) for p in runs] == list(
        experiment_runs(
            tmp_path / "runs",
            {"datasets": ["toy"], "models": ["learnet"], "modes": ["baseline", "dual_phase"], "seeds": [0, 1]},
        )
    )
    build_report(runs, tmp_path / "results", ReportSection(bootstrap=200))
    import csv

    with open(tmp_path / "results" / "results.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    seeds = []
    for s in (0, 1):
        info = json.loads((tmp_path / "runs" / f"toy-learnet-dual_phase-s{s}" / "run.json").read_text())
        assert info["params"]["seed"] == s
        lines = (tmp_path / "runs" / f"toy-learnet-dual_phase-s{s}" / "predictions.csv").read_text().splitlines()[1:]
        seeds.append(np.mean([line.split(",")[3] == line.split(",")[4] for line in lines]))
    assert row["dual_phase_seeds"] == "2"
    assert float(row["dual_phase_accuracy"]) == pytest.approx(np.mean(seeds), abs=1e-6)
    assert float(row["dual_phase_accuracy_sd"]) == pytest.approx(np.std(seeds, ddof=1), abs=1e-6)
    assert float(row["dual_phase_accuracy_low"]) <= min(seeds) <= max(seeds) <= float(row["dual_phase_accuracy_high"])
    assert "dual_phase_accuracy_gain" in row and "dual_phase_accuracy_gain_p" in row
    table = (tmp_path / "results" / "results.md").read_text()
    assert "mean over 2 training seed(s)" in table and "±" in table


def test_the_report_shows_gains_over_the_same_epochs_and_the_same_steps_baseline(tmp_path):
    from tests.test_report import _run

    runs = [
        _run(tmp_path / f"casme2-learnet-{mode}-s0", "learnet", mode, wrong)
        for mode, wrong in (("baseline", 2), ("baseline_steps", 1), ("dual_phase", 0))
    ]
    build_report(runs, tmp_path / "results", ReportSection(bootstrap=100))
    table = (tmp_path / "results" / "results.md").read_text()
    assert "vs baseline (same epochs): +66.7 pt" in table and "vs baseline_steps (same steps): +33.3 pt" in table


# --------------------------------------------------------------------------------------------
# Degenerate phases


@pytest.mark.parametrize("policy", ["widen", "drop", "keep"])
def test_degenerate_phases_are_named_whatever_the_policy(policy):
    from pipeline.config import DynimgSection

    settings = DynamicImageSettings.from_section(DynimgSection(min_phase_frames=3, degenerate=policy))
    # apex on the onset: onset_apex is one frame (short), apex_offset spans the whole clip (duplicate)
    assert degenerate_phase(settings, "onset_apex", 10, 10, 20) == "short"
    assert degenerate_phase(settings, "apex_offset", 10, 10, 20) == "duplicate"
    assert degenerate_phase(settings, "onset_apex", 10, 20, 20) == "duplicate"
    assert degenerate_phase(settings, "apex_offset", 10, 19, 20) == "short"
    assert degenerate_phase(settings, "onset_apex", 10, 15, 20) is None
    assert degenerate_phase(settings, "full", 10, 10, 20) is None
