"""LOSO training and evaluation end to end on a small learnable DI cache, and the metrics by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from joblib.externals.loky import get_reusable_executor
from sklearn.metrics import balanced_accuracy_score, f1_score

from pipeline.errors import MerError
from pipeline.evaluate.metrics import Predictions, compute_metrics, uar, uf1
from pipeline.io.dynamic_image_cache import read_dynamic_images
from pipeline.train.augment import AugmentSettings, augment_batch
from pipeline.train.data import fold_dir_name, fold_keys, load_loso_data, prepare_images
from pipeline.train.fold import resolve_device, train_fold
from pipeline.train.settings import TrainSettings
from stages.cli import cli
from tests.conftest import PROJECT, write_params
from tests.di_cache import write_dynamic_images

CLASSES = ["negative", "positive", "surprise"]
PHASES = ("full", "onset_apex", "apex_offset")
SUBJECTS = ["sub01", "sub02", "sub03"]
CLIPS_PER_SUBJECT = 6


def make_cache(path, size=32, seed=0, phases=PHASES):
    """3 subjects x 6 clips (2 per class); each class brightens its own horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    samples = {
        k: [] for k in ("sample_id", "dataset", "subject", "clip", "label", "onset", "apex", "offset", "apex_source")
    }
    images = {p: [] for p in phases}
    band = size // len(CLASSES)
    for subject in SUBJECTS:
        for i in range(CLIPS_PER_SUBJECT):
            label, clip = i % len(CLASSES), f"EP{i:02d}"
            row = {
                "sample_id": f"casme2/{subject}/{clip}",
                "dataset": "casme2",
                "subject": subject,
                "clip": clip,
                "label": label,
                "onset": 10,
                "apex": 15,
                "offset": 20,
                "apex_source": "annotated",
            }
            for key, value in row.items():
                samples[key].append(value)
            for phase in phases:
                image = rng.normal(110, 35, (size, size, 3))
                image[label * band : (label + 1) * band] += rng.uniform(50, 90)
                images[phase].append(np.clip(image, 0, 255).astype(np.uint8))
    write_dynamic_images(path, samples, {p: np.stack(v) for p, v in images.items()}, CLASSES, {"size": size})
    return path


def params_for(folder, **train):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(
        {"input_size": 32, "epochs": 8, "batch_size": 8, "lr": 0.001, "device": "cpu", "jobs": 1, **train}
    )
    params["models"] = {}  # the toy runs use the train section's settings for every model
    return write_params(folder, params)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def dual_run(tmp_path_factory):
    """One dual-phase run (2 parallel jobs) and its evaluation, shared by the checks below."""
    folder = tmp_path_factory.mktemp("dual")
    cache = make_cache(folder / "di.h5")
    params = params_for(folder, mode="dual_phase", jobs=2)
    # `mer train` starts its fold workers fresh in its own process. Workers left by earlier tests'
    # data stages would be measured small by loky after their first task and then restarted, with a
    # "worker stopped ... memory leak" warning, once torch had grown them past 300 MB.
    get_reusable_executor().shutdown(wait=True)
    run, reports, metrics = folder / "run", folder / "reports", folder / "metrics" / "toy.json"
    trained = invoke("train", "--dynamic-images", cache, "--out", run, "--params", params)
    assert trained.exit_code == 0, trained.output
    evaluated = invoke("evaluate", "--run", run, "--out", reports, "--metrics", metrics, "--params", params)
    assert evaluated.exit_code == 0, evaluated.output
    return {"folder": folder, "cache": cache, "params": params, "run": run, "reports": reports, "metrics": metrics}


def test_train_writes_every_fold_and_the_pooled_predictions(dual_run):
    run = dual_run["run"]
    info = json.loads((run / "run.json").read_text())
    assert info["label_names"] == CLASSES and info["model"] == "learnet" and info["mode"] == "dual_phase"
    assert info["parameter_count"] > 0 and info["params"]["train_phases"] == list(PHASES)
    assert sorted(info["folds"]) == SUBJECTS and "total_seconds" not in info
    timings = json.loads((run / "timings.json").read_text())  # the one file with times: the rest is reproducible
    assert sorted(timings["folds"]) == SUBJECTS and all(f["seconds"] > 0 for f in timings["folds"].values())
    for subject in SUBJECTS:
        fold = run / "folds" / subject
        assert (fold / "model.pt").is_file()
        manifest = json.loads((fold / "manifest.json").read_text())
        assert manifest["held_out_subject"] == subject
        assert manifest["trained_on_subjects"] == [s for s in SUBJECTS if s != subject]
        # dual phase: every training clip gives 3 samples; the held-out subject is tested on `full` only
        assert manifest["n_train_samples"] == 3 * (len(SUBJECTS) - 1) * CLIPS_PER_SUBJECT
        assert manifest["n_test_samples"] == CLIPS_PER_SUBJECT and manifest["epochs"] == 8
        log = read_csv(fold / "train_log.csv")
        assert [int(r["epoch"]) for r in log] == list(range(1, 9))
        rows = read_csv(fold / "predictions.csv")
        assert {r["subject"] for r in rows} == {subject}
    pooled = read_csv(run / "predictions.csv")
    assert list(pooled[0]) == [
        "sample_id",
        "dataset",
        "subject",
        "true_label",
        "pred_label",
        *[f"prob_{c}" for c in CLASSES],
    ]
    assert [r["sample_id"] for r in pooled] == sorted(r["sample_id"] for r in pooled)
    assert len(pooled) == len(SUBJECTS) * CLIPS_PER_SUBJECT
    for row in pooled:
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
    curve = read_csv(run / "training_curve.csv")  # mean over folds per epoch, for `dvc plots`
    assert [int(r["epoch"]) for r in curve] == list(range(1, 9)) and all(r["folds"] == "3" for r in curve)
    assert float(curve[-1]["loss"]) < float(curve[0]["loss"])
    assert not list(dual_run["folder"].glob(".run.tmp*"))  # atomic: no temporary left behind
    assert not (dual_run["folder"] / ".run.partial").exists()  # nor the work folder of finished folds


def test_evaluate_writes_metrics_and_reports(dual_run):
    metrics = json.loads(dual_run["metrics"].read_text())
    assert {"accuracy", "uf1", "uar", "n_samples", "n_subjects"} <= set(metrics)
    assert "per_subject" not in metrics  # `dvc metrics show` stays readable; details go to the reports
    assert metrics["n_samples"] == 18
    assert metrics["accuracy"] > 0.6, metrics  # chance is 1/3 on this learnable toy set
    reports = dual_run["reports"]
    details = json.loads((reports / "details.json").read_text())
    assert sorted(details["per_subject"]) == SUBJECTS and set(details["per_class"]) == set(CLASSES)
    assert (reports / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = read_csv(reports / "per_class.csv")
    assert [r["class"] for r in per_class] == CLASSES and all(int(r["support"]) == 6 for r in per_class)
    assert (reports / "results.csv").is_file() and (reports / "confusion_matrix.csv").is_file()


def test_a_fold_is_reproducible_on_its_own(dual_run):
    settings = TrainSettings.from_params(yaml.safe_load(dual_run["params"].read_text())["train"])
    di = read_dynamic_images(dual_run["cache"])
    data = load_loso_data(di, PHASES, 32, (0.5,) * 3, (0.5,) * 3)
    alone = train_fold(data, "sub02", settings, threads=1)  # the parallel run used 1 thread per job, too
    in_run = read_csv(dual_run["run"] / "folds" / "sub02" / "predictions.csv")
    assert [r["pred_label"] for r in alone.predictions] == [r["pred_label"] for r in in_run]
    for mine, theirs in zip(alone.predictions, in_run):
        assert mine["prob_negative"] == pytest.approx(float(theirs["prob_negative"]), abs=2e-6)


def test_per_model_settings_lie_between_the_train_section_and_the_options(tmp_path):
    cache = make_cache(tmp_path / "di.h5")
    params = yaml.safe_load(params_for(tmp_path, epochs=1).read_text())
    params["models"] = {"learnet": {"input_size": 24, "epochs": 2}}
    path = write_params(tmp_path, params)
    result = invoke("train", "--dynamic-images", cache, "--out", tmp_path / "run", "--params", path, "--epochs", 1)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "folds" / "sub01" / "manifest.json").read_text())
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["params"]
    assert settings["input_size"] == 24 and manifest["epochs"] == 1  # models.learnet beats train; --epochs beats both
    params["models"] = {"learnet": "fast"}
    result = invoke(
        "train", "--dynamic-images", cache, "--out", tmp_path / "bad", "--params", write_params(tmp_path, params)
    )
    assert result.exit_code != 0 and "models.learnet must be a mapping" in result.output


def test_baseline_trains_on_one_image_per_clip_and_phases_can_be_chosen(tmp_path):
    cache = make_cache(tmp_path / "di.h5")
    modes = (
        ("baseline", {}, 1),
        ("dual_phase_spatial", {"augment": {"flip": True, "rotation": 10, "scale": [0.9, 1.1], "jitter": 0.1}}, 3),
        ("dual_phase", {"train_phases": ["onset_apex", "apex_offset"]}, 2),
    )
    for mode, extra, n_per_clip in modes:
        params = params_for(tmp_path, mode=mode, epochs=1, **extra)
        result = invoke("train", "--dynamic-images", cache, "--out", tmp_path / mode, "--params", params)
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / mode / "folds" / "sub01" / "manifest.json").read_text())
        assert manifest["n_train_samples"] == n_per_clip * 2 * CLIPS_PER_SUBJECT
        assert manifest["test_phases"] == ["full"]
    # --mode on the command line overrides both the params mode and any phase lists there
    result = invoke(
        "train", "--dynamic-images", cache, "--out", tmp_path / "cli", "--params", params, "--mode", "baseline"
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["params"]["train_phases"] == ["full"]


def test_train_input_errors(tmp_path):
    cache = make_cache(tmp_path / "di.h5", phases=("full",))
    result = invoke(
        "train", "--dynamic-images", cache, "--out", tmp_path / "run", "--params", params_for(tmp_path, epochs=1)
    )
    assert result.exit_code != 0 and "onset_apex" in result.output and "dynimg.phases" in result.output
    result = invoke(
        "train", "--dynamic-images", cache, "--out", tmp_path / "run", "--params", params_for(tmp_path, epoch=3)
    )
    assert result.exit_code != 0 and "train.epoch = 3: unknown key; did you mean epochs?" in result.output
    result = invoke(
        "train", "--dynamic-images", tmp_path / "nope.h5", "--out", tmp_path / "run", "--params", params_for(tmp_path)
    )
    assert result.exit_code != 0 and "nope.h5" in result.output
    assert not (tmp_path / "run").exists()


def test_prepare_images_resizes_once_and_normalizes():
    stack = np.zeros((2, 40, 40, 3), np.uint8)
    stack[1] = 255
    out = prepare_images(stack, 16, (0.5,) * 3, (0.5,) * 3)
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.float32
    assert np.allclose(out[0], -1) and np.allclose(out[1], 1)


def test_augmentation_flips_or_keeps_each_sample_and_rotation_keeps_shape():
    x = torch.rand(16, 3, 8, 8)
    flipped = augment_batch(x, torch.Generator().manual_seed(0), AugmentSettings(flip=True, rotation=0))
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 16
    rotated = augment_batch(x, torch.Generator().manual_seed(0), AugmentSettings(flip=False, rotation=10))
    assert rotated.shape == x.shape and not torch.equal(rotated, x)
    with pytest.raises(
        ValueError, match=r"train.augment_flip = True: unknown key(.|\n)*train.augment_rotation = 10: unknown key"
    ):
        TrainSettings.from_params({"augment_flip": True, "augment_rotation": 10})  # the keys before `augment:`


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(MerError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_fold_keys_prefix_the_dataset_when_datasets_are_mixed():
    assert fold_keys(np.array(["casme2", "casme2"]), np.array(["sub01", "sub02"])).tolist() == ["sub01", "sub02"]
    mixed = fold_keys(np.array(["casme2", "samm"]), np.array(["006", "006"])).tolist()
    assert mixed == ["casme2/006", "samm/006"]
    assert fold_dir_name("samm/006") == "samm-006"


# --------------------------------------------------------------------------------------------
# Metrics

NAMES = ["a", "b", "c", "d"]
# fold S1 has no class c; class d never occurs in the ground truth but is predicted once
TRUE = ["a", "a", "b", "b", "b", "c", "c"]
PRED = ["a", "b", "b", "b", "d", "c", "a"]
SUBJ = ["S1", "S1", "S1", "S2", "S2", "S2", "S2"]


def _predictions():
    index = {n: i for i, n in enumerate(NAMES)}
    return Predictions(
        np.array([f"x/{s}/{i}" for i, s in enumerate(SUBJ)]),
        np.array(SUBJ),
        np.array(["x"] * 7),
        np.array([index[t] for t in TRUE]),
        np.array([index[p] for p in PRED]),
        NAMES,
    )


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_by_hand_and_against_scikit_learn():
    p = _predictions()
    m = compute_metrics(p)
    # per class (present in the truth): a P 1/2 R 1/2 F1 1/2; b P 2/3 R 2/3 F1 2/3; c P 1 R 1/2 F1 2/3
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["uf1"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)  # 11/18: d is not averaged in
    assert m["uar"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)  # 5/9
    assert m["uar"] == pytest.approx(balanced_accuracy_score(p.y_true, p.y_pred))
    assert m["uf1"] == pytest.approx(f1_score(p.y_true, p.y_pred, labels=[0, 1, 2], average="macro"))
    assert m["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_subject"]["S1"] == {"accuracy": pytest.approx(2 / 3), "n_samples": 3, "n_correct": 2}
    assert m["per_subject"]["S2"]["accuracy"] == pytest.approx(0.5)
    assert m["classes"] == ["a", "b", "c"]
    assert uf1([0, 0, 1], [0, 0, 1]) == 1.0 and uar([0, 1, 1, 1], [0, 0, 0, 0]) == 0.5


def _write_run(folder, rows, folds=None, names=NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    counts = {s: SUBJ.count(s) for s in sorted(set(SUBJ))}
    info = {
        "model": "toy",
        "mode": "baseline",
        "label_names": names,
        "folds": folds or {s: {"n_test_samples": n} for s, n in counts.items()},
    }
    (folder / "run.json").write_text(json.dumps(info))
    with open(folder / "predictions.csv", "w", newline="") as handle:
        handle.write("sample_id,dataset,subject,true_label,pred_label\n")
        handle.writelines(rows)
    return folder


def _rows():
    return [f"x/{s}/{i},x,{s},{t},{p}\n" for i, (s, t, p) in enumerate(zip(SUBJ, TRUE, PRED))]


def test_evaluate_stage_on_hand_made_predictions(tmp_path):
    run = _write_run(tmp_path / "run", _rows())
    params = params_for(tmp_path)
    result = invoke("evaluate", "--run", run, "--out", tmp_path / "reports", "--params", params)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["uf1"] == pytest.approx(11 / 18) and metrics["uar"] == pytest.approx(5 / 9)
    assert metrics["n_samples"] == 7


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "predictions.csv not found"),
        ("truncated", "line 5 (fold S2): 4 fields, expected 5"),
        ("short", "fold S2: 3 predictions, run.json expects 4"),
        ("label", "fold S2, sample x/S2/6): pred_label 'fear' is not one of the run's classes"),
    ],
)
def test_evaluate_names_the_damaged_file_and_fold(tmp_path, damage, message):
    rows = _rows()
    if damage == "truncated":
        rows[3] = rows[3][: rows[3].index(",b,b")] + ",b"
        rows = rows[:4]
    elif damage == "short":
        rows = rows[:-1]
    elif damage == "label":
        rows[-1] = rows[-1].replace(",c,a", ",c,fear")
    run = _write_run(tmp_path / "run", rows)
    if damage == "missing":
        (run / "predictions.csv").unlink()
    result = invoke("evaluate", "--run", run, "--out", tmp_path / "reports", "--params", params_for(tmp_path))
    assert result.exit_code != 0
    assert message in result.output and "predictions.csv" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "reports").exists()


def test_epochs_of_folds_run_here_can_be_shown(tmp_path):
    """With jobs 1 every fold hands its epochs to `epoch_progress` (the stage's per-epoch bar)."""
    from pipeline.train.execution import run_loso

    di = read_dynamic_images(make_cache(tmp_path / "di.h5"))
    data = load_loso_data(di, PHASES, 32, (0.5,) * 3, (0.5,) * 3)
    settings = TrainSettings.from_params({"input_size": 32, "epochs": 3, "batch_size": 8, "device": "cpu", "jobs": 1})
    seen = []

    def record(epochs, fold):
        for epoch in epochs:
            seen.append((fold, epoch))
            yield epoch

    results = run_loso(data, settings, tmp_path / "run", epoch_progress=record)
    assert seen == [(s, e) for s in SUBJECTS for e in (1, 2, 3)]
    assert [len(r.log) for r in results] == [3, 3, 3]


# --------------------------------------------------------------------------------------------
# Every read is verified; training that cannot learn stops


def _damage_label(path, value_byte=1, byte=0):
    """Overwrite one byte of the first clip's label in the file (label 0 -> `value_byte` << 8*byte)."""
    import h5py

    with h5py.File(path) as handle:
        offset = handle["label"].id.get_offset()
        assert handle["label"][0] == 0
    data = bytearray(path.read_bytes())
    data[offset + byte] = value_byte
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("byte, where", [(0, ""), (7, "at row 0, clip sub01/EP00")])
def test_a_changed_label_byte_stops_train_and_preview(tmp_path, byte, where):
    cache = make_cache(tmp_path / "di.h5")
    _damage_label(cache, 1, byte)  # byte 0: a valid class (1), that would train under the wrong class
    result = invoke("train", "--dynamic-images", cache, "--out", tmp_path / "run", "--params", params_for(tmp_path))
    assert result.exit_code != 0 and not (tmp_path / "run").exists()
    assert f"{cache}: dataset(s) label do not match their stored sha256" in result.output
    assert where in result.output and "Traceback" not in result.output
    preview = invoke("cache", "preview", cache, "--out", tmp_path / "preview.png")
    assert preview.exit_code != 0 and not (tmp_path / "preview.png").exists()
    assert f"{cache}: dataset(s) label do not match their stored sha256" in preview.output


def test_batches_of_one_sample_take_optimizer_steps():
    from pipeline.train.fold import batch_indices, train_epoch
    from pipeline.train.models import build_model

    order = torch.arange(64)
    assert [len(b) for b in batch_indices(33, 32, order)] == [33]  # a last sample joins the batch before it
    assert [len(b) for b in batch_indices(5, 2, order)] == [2, 3]
    assert [len(b) for b in batch_indices(3, 1, order)] == [1, 1, 1]  # batch_size 1: every sample a step
    assert [len(b) for b in batch_indices(64, 32, order)] == [32, 32]
    assert torch.cat(list(batch_indices(33, 32, order))).tolist() == list(range(33))

    torch.manual_seed(0)
    model = build_model("learnet", 3, False, None, 32)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    settings = TrainSettings.from_params({"input_size": 32, "batch_size": 1, "lr": 0.001, "device": "cpu"})
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, optimizer, x, y, settings, generator, torch.device("cpu"))[0] for _ in range(2)]
    assert losses[0] > 0 and losses[1] != losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.training  # batch norm back in training mode after the single-sample steps


def test_a_diverging_run_stops_naming_fold_and_epoch_and_writes_no_run(tmp_path):
    cache = make_cache(tmp_path / "di.h5")
    params = params_for(tmp_path, lr=1e12, epochs=3, mode="baseline")
    result = invoke("train", "--dynamic-images", cache, "--out", tmp_path / "run", "--params", params)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "fold sub01, epoch " in result.output and "diverged" in result.output and "train.lr" in result.output
    assert not (tmp_path / "run").exists()
