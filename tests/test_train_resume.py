"""`mer train` resumes an interrupted run, discards finished folds when anything that shapes the
numbers changed (or with --fresh), refuses folds that lack a class, and writes byte-identical runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import pipeline.train.execution
from pipeline.train.execution import fold_threads
from pipeline.train.run import train_run
from pipeline.train.settings import TrainSettings
from tests.conftest import PROJECT, write_params
from tests.di_cache import write_dynamic_images
from tests.test_train_evaluate import invoke

CLASSES = ["negative", "positive", "surprise"]
PHASES = ("full", "onset_apex", "apex_offset")
SUBJECTS = [f"sub{i:02d}" for i in range(1, 7)]


def toy_cache(path: Path, subjects=SUBJECTS, labels=(0, 1, 2, 0, 1, 2), label_names=CLASSES, size=32) -> Path:
    """`labels` per subject (a list of tuples, or one tuple for every subject); a band per class plus noise."""
    rng = np.random.default_rng(0)
    samples = {
        k: [] for k in ("sample_id", "dataset", "subject", "clip", "label", "onset", "apex", "offset", "apex_source")
    }
    images = {p: [] for p in PHASES}
    band = size // len(label_names)
    for s, subject in enumerate(subjects):
        for i, label in enumerate(labels[s] if isinstance(labels[0], tuple) else labels):
            row = {
                "sample_id": f"casme2/{subject}/EP{i:02d}",
                "dataset": "casme2",
                "subject": subject,
                "clip": f"EP{i:02d}",
                "label": label,
                "onset": 10,
                "apex": 15,
                "offset": 20,
                "apex_source": "annotated",
            }
            for key, value in row.items():
                samples[key].append(value)
            for phase in PHASES:
                image = rng.normal(110, 35, (size, size, 3))
                image[label * band : (label + 1) * band] += 70
                images[phase].append(np.clip(image, 0, 255).astype(np.uint8))
    write_dynamic_images(path, samples, {p: np.stack(v) for p, v in images.items()}, list(label_names), {"size": size})
    return path


def toy_params(folder: Path, **train) -> Path:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(
        {
            "input_size": 32,
            "epochs": 2,
            "batch_size": 8,
            "device": "cpu",
            "mode": "dual_phase",
            "jobs": 1,
            "threads": 1,
            **train,
        }
    )
    params["models"] = {}
    return write_params(folder, params)


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def assert_same_run(run: Path, reference: Path) -> None:
    """Every file but timings.json byte for byte; timings.json present in both."""
    mine, theirs = files(run), files(reference)
    assert "timings.json" in mine and "timings.json" in theirs
    mine.pop("timings.json"), theirs.pop("timings.json")
    assert sorted(mine) == sorted(theirs)
    assert "folds/sub01/model.pt" in mine and "run.json" in mine
    different = [name for name in mine if mine[name] != theirs[name]]
    assert not different, different


def finished_folds(work: Path) -> list[str]:
    folds = work / "folds"
    return (
        sorted(p.name for p in folds.iterdir() if p.is_dir() and not p.name.startswith(".")) if folds.is_dir() else []
    )


def stamps(folder: Path, folds) -> dict[str, tuple[int, int]]:
    return {f: ((s := (folder / "folds" / f / "model.pt").stat()).st_ino, s.st_mtime_ns) for f in folds}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 6-subject DI cache, its params (threads: 1) and one uninterrupted reference run."""
    folder = tmp_path_factory.mktemp("resume")
    cache, params = toy_cache(folder / "di.h5"), toy_params(folder)
    reference = folder / "reference"
    result = invoke("train", "--dynamic-images", cache, "--out", reference, "--params", params)
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.output and not (folder / ".reference.partial").exists()
    return {"folder": folder, "cache": cache, "params": params, "reference": reference}


@pytest.mark.slow
def test_a_killed_run_resumes_without_retraining_its_finished_folds(toy, tmp_path):
    out, work = tmp_path / "run", tmp_path / ".run.partial"
    command = [
        sys.executable,
        "-m",
        "stages",
        "train",
        "--dynamic-images",
        str(toy["cache"]),
        "--out",
        str(out),
        "--params",
        str(toy["params"]),
        "--jobs",
        "1",
    ]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while len(finished_folds(work)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()  # killed while training, not finished
    assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))
    done = finished_folds(work)
    assert 2 <= len(done) < len(SUBJECTS), done
    before = stamps(work, done)

    result = invoke("train", "--dynamic-images", toy["cache"], "--out", out, "--params", toy["params"], "--jobs", 1)
    assert result.exit_code == 0, result.output
    assert f"resuming: {len(done)} of {len(SUBJECTS)} folds already trained in {work}" in result.output
    assert stamps(out, done) == before  # the same files, not trained and written again
    assert not work.exists()
    assert_same_run(out, toy["reference"])
    timings = json.loads((out / "timings.json").read_text())
    assert [f for f, t in timings["folds"].items() if t["resumed"]] == done
    assert all(t["seconds"] > 0 for t in timings["folds"].values())


def test_changed_params_and_fresh_discard_finished_folds(toy, tmp_path, monkeypatch):
    """A run that fails on its last fold keeps the others; what happens to them on the next run."""
    out, work, last = tmp_path / "run", tmp_path / ".run.partial", SUBJECTS[-1]
    train_fold = pipeline.train.execution.train_fold

    def failing_on_last(data, fold, *args, **kwargs):
        if fold == last:
            raise RuntimeError("simulated crash")
        return train_fold(data, fold, *args, **kwargs)

    def train(params, *extra):
        return invoke("train", "--dynamic-images", toy["cache"], "--out", out, "--params", params, *extra)

    def epochs_trained():
        return {
            f: json.loads((work / "folds" / f / "manifest.json").read_text())["epochs"] for f in finished_folds(work)
        }

    monkeypatch.setattr(pipeline.train.execution, "train_fold", failing_on_last)
    assert train(toy["params"]).exit_code != 0
    assert not out.exists() and epochs_trained() == {f: 2 for f in SUBJECTS[:-1]}

    one_epoch = toy_params(tmp_path, epochs=1)
    result = train(one_epoch)
    assert result.exit_code != 0
    assert f"discarding {len(SUBJECTS) - 1} finished fold(s) in {work}: settings.epochs changed" in result.output
    assert "resuming" not in result.output
    assert epochs_trained() == {f: 1 for f in SUBJECTS[:-1]}  # every fold trained again with the new params

    before = stamps(work, SUBJECTS[:-1])
    result = train(one_epoch, "--fresh")
    assert result.exit_code != 0 and "--fresh" in result.output and "resuming" not in result.output
    after = stamps(work, SUBJECTS[:-1])
    assert all(after[f][1] > before[f][1] for f in before), (before, after)

    monkeypatch.setattr(pipeline.train.execution, "train_fold", train_fold)
    result = train(one_epoch)
    assert result.exit_code == 0, result.output
    assert f"resuming: {len(SUBJECTS) - 1} of {len(SUBJECTS)} folds" in result.output
    assert stamps(out, SUBJECTS[:-1]) == after and not work.exists()
    assert json.loads((out / "run.json").read_text())["params"]["epochs"] == 1


def test_a_class_without_training_samples_in_a_fold_stops_before_training(tmp_path):
    # `surprise` occurs only in sub02 (2 clips); `fear` is a label name without any clip
    labels = [(0, 1, 0, 1), (0, 1, 2, 2), (0, 1, 0, 1)]
    cache = toy_cache(tmp_path / "di.h5", subjects=SUBJECTS[:3], labels=labels, label_names=[*CLASSES, "fear"])
    out = tmp_path / "run"
    result = invoke(
        "train", "--dynamic-images", cache, "--out", out, "--params", toy_params(tmp_path, epochs=1, mode="baseline")
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "class 'surprise' (2 clips) has no training sample in fold sub02" in result.output
    assert "--classes" in result.output and "missing_class: warn" in result.output
    assert "class 'fear' has no clip in the cache" in result.output  # a warning, shown too
    assert not out.exists() and not (tmp_path / ".run.partial").exists()

    params = toy_params(tmp_path, epochs=1, mode="baseline", missing_class="warn")
    result = invoke("train", "--dynamic-images", cache, "--out", out, "--params", params)
    assert result.exit_code == 0, result.output
    assert "warning: class 'surprise' (2 clips) has no training sample in fold sub02" in result.output
    assert "warning: class 'fear' has no clip in the cache" in result.output
    assert json.loads((out / "run.json").read_text())["label_names"] == [*CLASSES, "fear"]


def test_a_cache_of_one_class_is_refused_before_training(tmp_path):
    cache = toy_cache(tmp_path / "di.h5", subjects=SUBJECTS[:3], labels=(1, 1, 1, 1))
    out = tmp_path / "run"
    result = invoke(
        "train", "--dynamic-images", cache, "--out", out, "--params", toy_params(tmp_path, epochs=1, mode="baseline")
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{cache}: every clip has class 'positive'" in result.output
    assert not out.exists() and not (tmp_path / ".run.partial").exists()


def test_runs_are_byte_identical_again_and_across_jobs_with_fixed_threads(toy, tmp_path):
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        result = invoke(
            "train", "--dynamic-images", toy["cache"], "--out", out, "--params", toy["params"], "--jobs", jobs
        )
        assert result.exit_code == 0, result.output
        assert_same_run(out, toy["reference"])
        timings = json.loads((out / "timings.json").read_text())
        assert timings["jobs"] == jobs and timings["threads_per_fold"] == 1 and timings["total_seconds"] > 0
        manifest = json.loads((out / "folds" / "sub01" / "manifest.json").read_text())
        assert manifest["threads"] == 1 and "seconds" not in manifest


def test_threads_setting():
    assert TrainSettings.from_params({}).threads == 1  # a number by default: bytes independent of the cores
    assert TrainSettings.from_params({"threads": "auto"}).to_dict()["threads"] == "auto"
    settings = TrainSettings.from_params({"threads": 3, "jobs": 2})
    assert settings.threads == 3 and fold_threads(settings, 10) == 3
    assert "jobs" not in settings.result_settings() and settings.result_settings()["threads"] == 3
    for bad in (0, "many", True, 1.5):
        with pytest.raises(ValueError, match="threads must be auto"):
            TrainSettings.from_params({"threads": bad})
    with pytest.raises(ValueError, match="missing_class"):
        TrainSettings.from_params({"missing_class": "ignore"})


def test_fold_results_are_read_back_from_the_files_written(tmp_path):
    """One code path, resumed or not: what run.json, predictions.csv and the curve are made of is
    what the fold files hold (6-decimal probabilities and losses), not the in-memory floats."""
    from tests.test_training_modes import settings_for, tiny_data

    run, results, timings = train_run(
        tiny_data(), settings_for(mode="baseline", threads=1), tmp_path / "run", {}, echo=lambda line: None
    )
    assert [r.fold for r in results] == ["sub01", "sub02"] and sorted(timings["folds"]) == ["sub01", "sub02"]
    for result in results:
        assert result.log and all(e["loss"] == round(e["loss"], 6) for e in result.log)
        assert all(row[f"prob_{c}"] == round(row[f"prob_{c}"], 6) for row in result.predictions for c in CLASSES)
        assert result.seconds > 0
    assert run["n_samples"] == 12 and not (tmp_path / ".run.partial").exists()


def test_a_second_process_writing_the_same_run_is_refused(toy, tmp_path):
    """While one `mer train` holds a run's lock, another one for the same --out stops at once and
    touches nothing; the lock dies with its holder, so the next run goes ahead."""
    import fcntl

    out = tmp_path / "run"
    lock = tmp_path / ".run.partial.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `mer train` holds it
        result = invoke("train", "--dynamic-images", toy["cache"], "--out", out, "--params", toy["params"])
        assert result.exit_code != 0 and "another `mer train` is writing" in result.output, result.output
        assert not out.exists() and not (tmp_path / ".run.partial").exists()
    result = invoke("train", "--dynamic-images", toy["cache"], "--out", out, "--params", toy["params"])
    assert result.exit_code == 0, result.output
    assert_same_run(out, toy["reference"])


def test_a_finished_run_is_kept_while_what_it_reads_is_unchanged(toy, tmp_path):
    """A rerun under the same run key keeps the run folder (no training, no write); a change to a phase
    the mode does not read keeps it too; a change to a phase it reads, or --fresh, trains again.
    timings.json can live outside the run folder."""
    from pipeline.io.dynamic_image_cache import read_dynamic_images

    changed = tmp_path / "changed.h5"  # the same cache with other onset_apex DIs (and other params)
    di = read_dynamic_images(toy["cache"])
    images = {**di.images, "onset_apex": 255 - di.images["onset_apex"]}
    write_dynamic_images(changed, di.samples, images, di.label_names, {"size": 32, "phases": "changed"})
    for mode, kept_on_change in (("baseline", True), ("dual_phase", False)):
        params = toy_params(tmp_path, epochs=1, mode=mode)
        out, timings = tmp_path / mode, tmp_path / "timings" / f"{mode}.json"

        def train(cache, *extra, out=out, params=params, timings=timings):
            result = invoke(
                "train", "--dynamic-images", cache, "--out", out, "--params", params, "--timings", timings, *extra
            )
            assert result.exit_code == 0, result.output
            return result.output

        assert "unchanged" not in train(toy["cache"])
        assert not (out / "timings.json").exists() and json.loads(timings.read_text())["folds"]
        before, reference = stamps(out, SUBJECTS), files(out)
        timings.unlink()
        assert "unchanged" in train(toy["cache"])
        assert stamps(out, SUBJECTS) == before and files(out) == reference and not timings.exists()
        output = train(changed)
        assert ("unchanged" in output) == kept_on_change, output
        assert (stamps(out, SUBJECTS) == before) == kept_on_change
    assert "unchanged" not in train(changed, "--fresh") and stamps(out, SUBJECTS) != before


def test_pretrained_weights_are_reported_and_their_file_is_in_the_run_key(toy, tmp_path):
    import torch

    from pipeline.train.models import build_model

    weights = tmp_path / "learnet.pth"
    torch.manual_seed(5)
    torch.save(build_model("learnet", 10, input_size=32).state_dict(), weights)  # another number of classes
    params = yaml.safe_load(toy_params(tmp_path, epochs=1, mode="baseline").read_text())
    params["models"] = {"learnet": {"weights": str(weights)}}
    params_file = write_params(tmp_path, params)
    out = tmp_path / "run"

    def train():
        result = invoke("train", "--dynamic-images", toy["cache"], "--out", out, "--params", params_file)
        assert result.exit_code == 0, result.output
        return result.output

    output = train()
    assert f"pretrained weights {weights}: loaded " in output and "tensors; reset: fc2.bias, fc2.weight" in output
    recorded = json.loads((out / "run.json").read_text())["pretrained_weights"]
    assert recorded["reset"] == ["fc2.bias", "fc2.weight"] and recorded["loaded"] == recorded["total"] - 2
    assert "unchanged" in train()
    torch.manual_seed(6)
    torch.save(build_model("learnet", 10, input_size=32).state_dict(), weights)  # a new file, same name
    assert "unchanged" not in train()
    assert json.loads((out / "run.json").read_text())["pretrained_weights"]["sha256"] != recorded["sha256"]
