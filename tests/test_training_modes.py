"""Training modes as presets, batched spatial augmentation, bf16 autocast, training curves, folds on Dask."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pipeline.train.augment import AugmentSettings, affine_matrices, augment_batch
from pipeline.train.data import LosoData
from pipeline.train.execution import run_loso
from pipeline.train.fold import fold_seed, train_fold
from pipeline.train.run_files import training_curve, write_run
from pipeline.train.settings import MODES, TrainSettings

PHASES = ("full", "onset_apex", "apex_offset")
CLASSES = ["negative", "positive", "surprise"]


def tiny_data(subjects: int = 2, clips: int = 6, size: int = 32, seed: int = 0) -> LosoData:
    """In-memory training arrays: each class brightens its own band; each phase a different noise draw."""
    rng = np.random.default_rng(seed)
    n = subjects * clips
    labels = np.arange(n) % len(CLASSES)
    band = size // len(CLASSES)
    images = {}
    for phase in PHASES:
        x = rng.normal(0, 0.5, (n, 3, size, size)).astype(np.float32)
        for i, label in enumerate(labels):
            x[i, :, label * band : (label + 1) * band] += 1.0
        images[phase] = x
    groups = np.repeat([f"sub{s + 1:02d}" for s in range(subjects)], clips)
    return LosoData(
        images=images,
        labels=labels.astype(np.int64),
        groups=groups,
        sample_ids=np.array([f"toy/{g}/EP{i:02d}" for i, g in enumerate(groups)]),
        datasets=np.array(["toy"] * n),
        label_names=list(CLASSES),
    )


def settings_for(**params) -> TrainSettings:
    base = {"model": "learnet", "input_size": 32, "epochs": 1, "batch_size": 4, "device": "cpu", "jobs": 1}
    return TrainSettings.from_params({**base, **params})


# --------------------------------------------------------------------------------------------
# Modes


@pytest.mark.parametrize(
    "mode, phases, spatial",
    [
        ("baseline", ("full",), False),
        ("spatial", ("full",), True),
        ("dual_phase", PHASES, False),
        ("dual_phase_spatial", PHASES, True),
    ],
)
def test_modes_are_presets_of_phases_and_augmentation(mode, phases, spatial):
    settings = TrainSettings.from_params({"mode": mode, "augment": {"flip": True, "rotation": 5, "jitter": 0.1}})
    assert settings.train_phases == phases and settings.test_phases == ("full",)
    if spatial:
        assert settings.augment == AugmentSettings(flip=True, rotation=5, jitter=0.1)
    else:
        assert settings.augment is None  # the augment section only configures the spatial modes
    assert list(MODES)[:5] == ["baseline", "baseline_steps", "spatial", "dual_phase", "dual_phase_spatial"]
    assert all(MODES[m].variant_of == "dual_phase" for m in list(MODES)[5:])  # beyond the paper


def test_spatial_mode_without_an_augment_section_uses_flip_and_rotation():
    assert TrainSettings.from_params({"mode": "spatial"}).augment == AugmentSettings(flip=True, rotation=10.0)


def test_phase_overrides_and_test_fusion():
    settings = TrainSettings.from_params({"mode": "baseline", "test_fusion": True})
    assert settings.train_phases == ("full",) and settings.test_phases == PHASES
    explicit = TrainSettings.from_params(
        {"mode": "dual_phase", "train_phases": ["onset_apex"], "test_phases": ["apex_offset"]}
    )
    assert explicit.train_phases == ("onset_apex",) and explicit.test_phases == ("apex_offset",)
    with pytest.raises(ValueError, match="test_fusion"):
        TrainSettings.from_params({"test_fusion": True, "test_phases": ["full"]})
    with pytest.raises(ValueError, match=r"train.mode = 'spatial_dual': allowed: 'baseline'"):
        TrainSettings.from_params({"mode": "spatial_dual"})
    with pytest.raises(ValueError, match=r"train.augment.blur = 1: unknown key"):
        TrainSettings.from_params({"mode": "spatial", "augment": {"blur": 1}})
    with pytest.raises(ValueError, match="augment.scale"):
        TrainSettings.from_params({"mode": "spatial", "augment": {"scale": [1.2, 0.8]}})
    with pytest.raises(ValueError, match="needs at least one augmentation"):
        TrainSettings.from_params({"mode": "dual_phase_spatial", "augment": {"flip": False, "rotation": 0}})
    assert TrainSettings.from_params({"mode": "baseline", "augment": {"flip": False, "rotation": 0}}).augment is None
    with pytest.raises(ValueError, match=r"train.augment_flip = True: unknown key"):  # the key before `augment:`
        TrainSettings.from_params({"augment_flip": True, "augment": {"flip": True}})


@pytest.mark.parametrize(
    "mode, per_clip", [("baseline", 1), ("spatial", 1), ("dual_phase", 3), ("dual_phase_spatial", 3)]
)
def test_modes_train_on_the_right_number_of_samples(mode, per_clip):
    data = tiny_data()
    result = train_fold(data, "sub01", settings_for(mode=mode), threads=1)
    assert result.manifest["n_train_clips"] == 6
    assert result.manifest["n_train_samples"] == per_clip * 6
    assert result.manifest["n_test_samples"] == 6 and result.manifest["test_phases"] == ["full"]
    assert (result.manifest["augment"] is not None) == mode.endswith("spatial")


def test_test_fusion_averages_the_three_phase_predictions(monkeypatch):
    data = tiny_data()
    fused = train_fold(data, "sub02", settings_for(mode="baseline", test_fusion=True), threads=1)
    assert fused.manifest["test_phases"] == list(PHASES)
    for row in fused.predictions:
        assert sum(row[f"prob_{c}"] for c in CLASSES) == pytest.approx(1, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Augmentation


FULL = AugmentSettings(flip=True, rotation=10, scale=(0.9, 1.1), translate=0.05, jitter=0.1)


def test_augmentation_changes_images_keeps_shape_and_is_reproducible():
    x = torch.randn(16, 3, 24, 24)
    labels = torch.arange(16) % 3
    a = augment_batch(x, torch.Generator().manual_seed(5), FULL)
    b = augment_batch(x, torch.Generator().manual_seed(5), FULL)
    c = augment_batch(x, torch.Generator().manual_seed(6), FULL)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)  # same seed, same augmentation
    assert not torch.equal(a, c)
    assert all(not torch.equal(a[i], x[i]) for i in range(16))  # every image is changed
    assert torch.equal(labels, torch.arange(16) % 3)  # labels are not touched (and not passed)


@pytest.mark.parametrize(
    "settings",
    [
        AugmentSettings(flip=False, rotation=15),
        AugmentSettings(flip=False, rotation=0, scale=(1.2, 1.2)),
        AugmentSettings(flip=False, rotation=0, translate=0.1),
        AugmentSettings(flip=False, rotation=0, jitter=0.2),
    ],
)
def test_each_augmentation_alone_changes_the_images(settings):
    x = torch.randn(8, 3, 16, 16)
    y = augment_batch(x, torch.Generator().manual_seed(0), settings)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_identity_settings_and_zoom_direction():
    x = torch.randn(4, 3, 16, 16)
    none = AugmentSettings(flip=False, rotation=0)
    assert not none.active and torch.equal(augment_batch(x, torch.Generator().manual_seed(0), none), x)
    theta = affine_matrices(3, AugmentSettings(rotation=0, scale=(2.0, 2.0)), torch.Generator().manual_seed(0))
    assert torch.allclose(theta[:, :, :2], torch.eye(2).expand(3, 2, 2) / 2)  # zoom 2 samples half the area
    # zoom in on a centred square: the output's centre stays the square's value, the border moves inwards
    img = torch.zeros(1, 1, 16, 16)
    img[..., 4:12, 4:12] = 1
    zoomed = augment_batch(
        img, torch.Generator().manual_seed(0), AugmentSettings(flip=False, rotation=0, scale=(2.0, 2.0))
    )
    assert zoomed[0, 0, 8, 8] == pytest.approx(1) and zoomed.mean() > img.mean()


def test_augmentation_is_deterministic_per_fold_seed():
    data = tiny_data()
    settings = settings_for(
        mode="dual_phase_spatial", augment={"flip": True, "rotation": 10, "scale": [0.9, 1.1], "jitter": 0.1}
    )
    first = train_fold(data, "sub01", settings, threads=1)
    again = train_fold(data, "sub01", settings, threads=1)
    assert [r["prob_negative"] for r in first.predictions] == [r["prob_negative"] for r in again.predictions]
    plain = train_fold(data, "sub01", settings_for(mode="dual_phase"), threads=1)
    assert [r["prob_negative"] for r in first.predictions] != [r["prob_negative"] for r in plain.predictions]
    assert fold_seed(0, "sub01") != fold_seed(0, "sub02")


# --------------------------------------------------------------------------------------------
# Mixed precision, training curve


def test_bf16_autocast_trains_and_predicts():
    result = train_fold(tiny_data(), "sub01", settings_for(mode="baseline", amp=True, epochs=2), threads=1)
    assert result.manifest["amp"] is True and np.isfinite(result.manifest["final_train_loss"])
    for row in result.predictions:
        assert sum(row[f"prob_{c}"] for c in CLASSES) == pytest.approx(1, abs=1e-5)


def test_run_writes_a_training_curve_averaged_over_folds(tmp_path):
    data = tiny_data()
    settings = settings_for(mode="baseline", epochs=3)
    results = run_loso(data, settings, tmp_path)
    write_run(tmp_path, results, settings, CLASSES)
    with open(tmp_path / "training_curve.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and all(r["folds"] == "2" for r in rows)
    for epoch, row in enumerate(rows, start=1):
        losses = [r.log[epoch - 1]["loss"] for r in results]
        assert float(row["loss"]) == pytest.approx(np.mean(losses), abs=1e-6)
    assert training_curve(results)[0]["train_accuracy"] == pytest.approx(
        np.mean([r.log[0]["train_accuracy"] for r in results])
    )
    for fold in ("sub01", "sub02"):
        assert (tmp_path / "folds" / fold / "train_log.csv").is_file()


# --------------------------------------------------------------------------------------------
# Folds on a Dask cluster (loopback only)


def test_folds_on_a_local_dask_cluster_match_loky(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    import pipeline.train.execution

    # loky: 2 jobs on "2 cores" = 1 torch thread per fold, as on a Dask worker (OMP_NUM_THREADS=1)
    monkeypatch.setattr(pipeline.train.execution, "available_cores", lambda: 2)
    data = tiny_data()
    common = {"mode": "dual_phase", "epochs": 2, "jobs": 2}
    loky = run_loso(data, settings_for(**common, backend="loky"), tmp_path / "loky")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        on_dask = run_loso(
            data, settings_for(**common, backend="dask", scheduler=cluster.scheduler_address), tmp_path / "dask"
        )
    assert [r.fold for r in on_dask] == ["sub01", "sub02"]
    for a, b in zip(loky, on_dask):
        assert [r["pred_label"] for r in a.predictions] == [r["pred_label"] for r in b.predictions]
        for ra, rb in zip(a.predictions, b.predictions):
            assert ra["prob_negative"] == pytest.approx(rb["prob_negative"], abs=2e-6)
        assert (tmp_path / "dask" / b.directory / "predictions.csv").is_file()  # the workers wrote the folds


def test_train_stage_on_a_local_dask_cluster(tmp_path):
    """`mer train --backend dask` without a scheduler starts a loopback cluster of `jobs` workers."""
    pytest.importorskip("distributed")
    import json

    from tests.test_train_evaluate import invoke, make_cache, params_for

    cache = make_cache(tmp_path / "di.h5")
    params = params_for(tmp_path, epochs=1, jobs=1)
    curve = tmp_path / "plots" / "curve.csv"
    result = invoke(
        "train",
        "--dynamic-images",
        cache,
        "--out",
        tmp_path / "run",
        "--params",
        params,
        "--backend",
        "dask",
        "--mode",
        "spatial",
        "--curve",
        curve,
    )
    assert result.exit_code == 0, result.output
    assert "dask local cluster" in result.output and "augmentation flip True" in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["params"]["augment"]["flip"] is True and len(run["folds"]) == 3
    assert json.loads((tmp_path / "run" / "timings.json").read_text())["backend"] == "dask"  # how it ran: timings.json
    assert (
        tmp_path / "run" / "training_curve.csv"
    ).read_text() == curve.read_text()  # --curve: a copy outside the run folder
    assert curve.read_text().startswith("epoch,loss,train_accuracy,folds\n1,")
