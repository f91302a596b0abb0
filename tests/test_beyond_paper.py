"""Beyond the paper: adaptive phase anchors, phase jitter in the DI cache, phase weighting modes."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from benchmarks.bench_boundaries import boundary_errors
from pipeline.dynimg.dataset import jitter_windows
from pipeline.dynimg.phases import parse_phases, phase_frames
from pipeline.io.caches import describe, verify
from pipeline.io.dynamic_image_cache import read_dynamic_images
from pipeline.motion import motion_anchors
from pipeline.train.fold import train_fold
from tests.test_dynimg_stage import _dynimg, inputs  # noqa: F401  (the fixture)
from tests.test_training_modes import PHASES, settings_for, tiny_data


def test_motion_peak_apex_lands_near_the_demo_truth(tiny_demo):
    errors = boundary_errors(tiny_demo)
    for name, values in errors.items():
        values = np.array(values)
        print(
            f"{name}: {len(values)} clips, within 3 frames {np.mean(values <= 3):.0%}, "
            f"median {np.median(values):.1f}, mean {values.mean():.1f}, max {values.max()}"
        )
    assert np.mean(np.array(errors["peak"]) <= 3) >= 0.9


def test_adaptive_anchors_parse_and_place_phases():
    phases = parse_phases({"rise": ["onset", "peak"], "decay": ["m50+1", "offset"]})
    motion = {"peak": 14, "m50": 15}
    assert phase_frames(phases["rise"], 10, 20, 30, motion=motion) == (10, 14)
    assert phase_frames(phases["decay"], 10, 20, 30, motion=motion) == (16, 30)
    with pytest.raises(ValueError, match="motion anchor"):
        phase_frames(phases["rise"], 10, 20, 30)
    with pytest.raises(ValueError, match="onset, apex or offset"):
        parse_phases({"x": ["m100", "offset"]})
    ramp = np.zeros((21, 8, 8), np.uint8)
    ramp[:11] = np.linspace(0, 200, 11)[:, None, None]  # rises to frame 10, then falls back
    ramp[11:] = np.linspace(180, 0, 10)[:, None, None]
    found = motion_anchors(ramp, ["peak", "m50", "m33", "m67"])
    assert found == {"peak": 10, "m50": 10, "m33": 7, "m67": 14}


@pytest.mark.parametrize(
    "window, onset, offset", [((10, 15), 10, 30), ((15, 30), 10, 30), ((3, 4), 3, 5), ((7, 20), 0, 40)]
)
def test_jittered_windows_stay_inside_the_clip_and_differ(window, onset, offset):
    for seed in range(5):
        windows = jitter_windows(window, onset, offset, draws=4, frames=2, min_frames=2, seed=seed)
        assert len(windows) == 4
        for start, end in windows:
            assert onset <= start <= end <= offset and end - start + 1 >= min(2, offset - onset + 1)
            assert abs(start - window[0]) <= 2 and abs(end - window[1]) <= 2
        candidates = {
            (s, e)
            for s in range(max(onset, window[0] - 2), min(offset, window[0] + 2) + 1)
            for e in range(max(onset, window[1] - 2), min(offset, window[1] + 2) + 1)
            if e - s + 1 >= 2
        }
        assert len(set(windows)) == min(4, len(candidates))  # distinct draws while the range allows
    draws = [tuple(jitter_windows((10, 20), 0, 40, 4, 2, 2, seed)) for seed in range(6)]
    assert len(set(draws)) > 1  # the seed changes the draws
    assert jitter_windows((10, 20), 0, 40, 3, 0, 2, 1) == [(10, 20)] * 3  # zero range: the anchor window


def test_dynimg_jitter_and_adaptive_anchors_in_the_cache(tmp_path, inputs, project_params):  # noqa: F811
    dynimg = project_params["dynimg"]
    dynimg.update(jitter_draws=3, jitter_frames=1, jitter_seed=5, size=32)
    dynimg["phases"] = {**dynimg["phases"], "onset_peak": ["onset", "peak"], "peak_offset": ["peak", "offset"]}
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:  # plain h5py: the documented layout
        n = f["sample_id"].shape[0]
        onset, offset = f["onset"][()], f["offset"][()]
        assert f["jitter/onset_apex"].shape == (n, 3, 32, 32, 3) and f["jitter/onset_apex"].dtype == np.uint8
        assert "jitter/full" not in f  # the full DI (the test input) is never jittered
        windows = f["jitter/onset_apex_frames"][()]
        assert windows.shape == (n, 3, 2)
        assert np.all(windows[..., 0] >= onset[:, None]) and np.all(windows[..., 1] <= offset[:, None])
        peak = f["motion_anchors/peak"][()]
        assert np.all((onset <= peak) & (peak <= offset))
        assert f["phase_windows/onset_peak"][()][:, 1].tolist() == peak.tolist()
        assert json.loads(f.attrs["jitter"])["draws"] == 3
    di = read_dynamic_images(out)
    assert di.jitter("apex_offset").shape[:2] == (n, 3) and di.jitter("full") is None
    assert verify(out) == []
    info = "\n".join(describe(out))
    assert "jitter/onset_apex: (4, 3, 32, 32, 3) uint8" in info and "motion_anchors/peak" in info
    plain_params = {**project_params, "dynimg": {**project_params["dynimg"], "jitter_draws": 0}}
    plain_params["dynimg"]["phases"] = {k: v for k, v in dynimg["phases"].items() if "peak" not in k}
    result, plain = _dynimg(tmp_path, inputs, plain_params, "--jobs", "1")
    assert result.exit_code == 0, result.output
    with h5py.File(plain, "r") as f:
        assert not any(group in f for group in ("jitter", "motion_anchors", "phase_windows"))
        assert "jitter_draws" not in json.loads(f.attrs["params"])  # caches without jitter keep their bytes


def with_jitter(data, k: int = 3, same: bool = True):
    """`data` with K jittered DIs per clip of the two phases: copies of the phase DI (`same`, zero range) or noise."""
    rng = np.random.default_rng(1)
    for phase in PHASES[1:]:
        stack = np.repeat(data.images[phase][:, None], k, axis=1)
        data.jitter[phase] = stack if same else stack + rng.normal(0, 0.5, stack.shape).astype(np.float32)
    return data


def predictions(result):
    return [(r["sample_id"], r["pred_label"], r["prob_negative"], r["prob_positive"]) for r in result.predictions]


def test_zero_jitter_and_equal_weights_equal_dual_phase():
    reference = predictions(train_fold(tiny_data(), "sub01", settings_for(mode="dual_phase", epochs=2), threads=1))
    jitter = train_fold(with_jitter(tiny_data()), "sub01", settings_for(mode="dual_phase_jitter", epochs=2), threads=1)
    weighted = train_fold(
        tiny_data(), "sub01", settings_for(mode="dual_phase_weighted", phase_weight=1.0, epochs=2), threads=1
    )
    assert predictions(jitter) == reference and predictions(weighted) == reference
    noisy = train_fold(
        with_jitter(tiny_data(), same=False), "sub01", settings_for(mode="dual_phase_jitter", epochs=2), threads=1
    )
    assert predictions(noisy) != reference  # the draws reach the training tensors


def test_weighting_rule_weights_are_what_the_run_files_say(tmp_path):
    settings = settings_for(mode="dual_phase_decay", epochs=3, phase_weight_final=0.2)
    result = train_fold(tiny_data(), "sub02", settings, out_dir=tmp_path, threads=1)
    with open(tmp_path / result.directory / "train_log.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    assert [float(r["phase_weight"]) for r in log] == [1.0, 0.6, 0.2]
    assert [float(r["full_weight"]) for r in log] == [1.0] * 3
    assert [float(r["phase_weight"]) for r in log] == pytest.approx([settings.phase_weight_at(e, 3) for e in (1, 2, 3)])
    manifest = json.loads((tmp_path / result.directory / "manifest.json").read_text())
    assert manifest["phase_weights"] == [1.0, 0.6, 0.2]
    fixed = settings_for(mode="dual_phase_weighted", phase_weight=0.25)
    assert fixed.result_settings()["phase_weight"] == 0.25 and "phase_weight_final" not in fixed.result_settings()
    assert not {"phase_weight", "phase_weight_final"} & set(settings_for(mode="dual_phase").result_settings())
    plain = train_fold(tiny_data(), "sub02", settings_for(mode="dual_phase"), out_dir=tmp_path / "plain", threads=1)
    header = (tmp_path / "plain" / plain.directory / "train_log.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,train_accuracy"  # runs of the paper's modes keep their files
