"""Leave-one-subject-out training on a dynamic-image cache (DESIGN.md section 7).

The whole cache is loaded once, resized once to the model's input size and normalized to float32
arrays (one per phase). Each fold then takes its training and test rows by index: no per-sample
reads, no DataLoader workers. A fold trains for a fixed number of epochs on every other subject
and the last model predicts the held-out subject; nothing is selected on the held-out subject.

Modes are presets of the paper's comparison (`MODES`):

    baseline            train on `full`
    spatial             train on `full`, with spatial augmentation (pipeline/augment.py)
    dual_phase          train on `full`, `onset_apex`, `apex_offset`: each phase DI a separate
                        sample with the clip's label (3 samples per training clip)
    dual_phase_spatial  both

All test on `full`; `test_fusion: true` tests on the three DIs and averages a clip's class
probabilities over them. `train_phases` / `test_phases` override the mode's phases explicitly.
Augmentations run on batched tensors on the training device, seeded per fold.

Folds are independent and run through joblib: `backend: loky` (processes on this machine) or
`backend: dask`, which runs the same function through joblib's dask backend on a Dask cluster
(`scheduler: tcp://host:8786`; the output folder must then be on a file system the workers share).
`amp: true` trains and predicts under bf16 autocast (CPU or GPU).

Resuming (`train_run`): finished folds live in a work folder beside the output,
`<out parent>/.<out name>.partial/`, which exists only while a run is unfinished:

    .<name>.partial/resume.json          the run key: a sha256 of everything the numbers depend on
                                         (settings but jobs/backend/scheduler/missing_class, the torch
                                         threads per fold, the DI cache's fingerprint and a digest of
                                         its samples, labels and images, code and torch versions)
    .<name>.partial/folds/<fold>/        one finished fold (written under a temporary name, renamed
                                         when complete: a fold folder that exists is finished)
    .<name>.partial/timings/<fold>.json  that fold's training time

A rerun with the same key trains only the missing folds; a different key (or `fresh`) discards the
work folder first. Finished or not, every fold is then read back from its files, and run.json,
predictions.csv, training_curve.csv and timings.json are written from those, so a resumed run is
byte-identical to an uninterrupted one; the work folder is finally renamed to `out`, replacing the
previous run. Every file of a run but timings.json (seconds, cores, jobs, backend) depends only on the
inputs, the settings and the torch threads per fold (`threads`; `auto` = cores // jobs): with a fixed
`threads`, any `jobs` gives the same bytes.

Classes (`check_fold_classes`): a class with clips in the cache but no training sample in some fold
(all its clips belong to the held-out subject) stops the run before any training (`missing_class:
error`, the default) or is reported and trained anyway (`warn`). A label name with no clip at all in
the cache is always only a warning: class presets may list emotions a dataset copy lacks.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import __version__
from pipeline.atomic import atomic_output
from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import DynamicImageSet
from pipeline.io.runs import read_predictions, read_train_log, write_predictions, write_train_log
from pipeline.train.augment import AugmentSettings, augment_batch
from pipeline.train.models import build_model, count_parameters, resolve_input_size

PHASES_FULL = ("full",)
PHASES_ALL = ("full", "onset_apex", "apex_offset")


@dataclass(frozen=True)
class Mode:
    train_phases: tuple[str, ...]
    spatial: bool


MODES: dict[str, Mode] = {
    "baseline": Mode(PHASES_FULL, False),
    "spatial": Mode(PHASES_FULL, True),
    "dual_phase": Mode(PHASES_ALL, False),
    "dual_phase_spatial": Mode(PHASES_ALL, True),
}
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("loky", "dask")
LEGACY_KEYS = ("augment_flip", "augment_rotation")  # before `augment:`; still read
MISSING_CLASS = ("error", "warn")
# Wraps a fold's epochs (e.g. in a progress bar): (epochs, fold) -> the same epochs. Used only where
# folds run in this process (jobs 1); parallel folds report per fold.
EpochProgress = Callable[[Iterable[int], str], Iterable[int]]
# Settings that change how a run executes or what it checks, never its numbers: they are left out of
# run.json's params and of the run key (`threads` is resolved to the torch threads per fold instead).
EXECUTION_KEYS = ("jobs", "backend", "scheduler", "missing_class")


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of the train stage; `from_params` validates a params section.

    `augment` is None unless the mode is a spatial one (or the legacy `augment_flip` /
    `augment_rotation` keys switch augmentation on). `input_size` is resolved for `model`.
    """

    model: str = "learnet"
    mode: str = "dual_phase"
    train_phases: tuple[str, ...] = PHASES_ALL
    test_phases: tuple[str, ...] = PHASES_FULL
    test_fusion: bool = False
    input_size: int = 112
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    pretrained: bool = False
    weights: str | None = None
    augment: AugmentSettings | None = None
    backend: str = "loky"
    scheduler: str | None = None
    jobs: int = 1
    threads: int | None = None  # torch threads per fold; None (params `auto`): cores // jobs
    missing_class: str = "error"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainSettings:
        """Build settings from a params section; raise ValueError on unknown keys or bad values."""
        known = {f.name for f in dataclasses.fields(cls)} | set(LEGACY_KEYS)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; known keys: {sorted(known)}")
        mode_name = str(params.get("mode", cls.mode))
        if mode_name not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode_name!r}")
        mode = MODES[mode_name]
        test_fusion = bool(params.get("test_fusion", cls.test_fusion))
        if test_fusion and params.get("test_phases"):
            raise ValueError("give either test_fusion: true or test_phases, not both")
        train_phases = params.get("train_phases") or mode.train_phases
        test_phases = params.get("test_phases") or (PHASES_ALL if test_fusion else PHASES_FULL)
        for name, phases in (("train_phases", train_phases), ("test_phases", test_phases)):
            if isinstance(phases, str) or not all(isinstance(p, str) for p in phases):
                raise ValueError(f"{name} must be a list of phase names, got {phases!r}")
        device = str(params.get("device", cls.device))
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        backend = str(params.get("backend", cls.backend))
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        scheduler = params.get("scheduler") or None
        if scheduler is not None and not isinstance(scheduler, str):
            raise ValueError(f"scheduler must be an address such as tcp://host:8786, got {scheduler!r}")
        augment_params = params.get("augment")
        if augment_params is not None and not isinstance(augment_params, Mapping):
            raise ValueError(f"augment must be a mapping such as {{flip: true, rotation: 10}}, got {augment_params!r}")
        augment = AugmentSettings.from_params(augment_params)  # validated whatever the mode
        legacy_flip, legacy_rotation = bool(params.get("augment_flip")), float(params.get("augment_rotation") or 0)
        if legacy_rotation < 0:
            raise ValueError("augment_rotation must be >= 0")
        if legacy_flip or legacy_rotation:
            if augment_params is not None:
                raise ValueError("augment_flip / augment_rotation are the old form of `augment:`; give only `augment`")
            augment = AugmentSettings(flip=legacy_flip, rotation=legacy_rotation)
        elif not mode.spatial:
            augment = None
        elif not augment.active:
            raise ValueError(
                f"mode {mode_name} needs at least one augmentation in `augment` (flip, rotation, scale, translate, jitter)"
            )
        threads = params.get("threads")
        if threads in (None, "auto"):
            threads = None
        elif (
            isinstance(threads, bool)
            or not isinstance(threads, (int, str))
            or not str(threads).isdigit()
            or int(threads) < 1
        ):
            raise ValueError(f"threads must be auto or a number of torch threads per fold >= 1, got {threads!r}")
        missing_class = str(params.get("missing_class", cls.missing_class))
        if missing_class not in MISSING_CLASS:
            raise ValueError(f"missing_class must be one of {MISSING_CLASS}, got {missing_class!r}")
        model = str(params.get("model", cls.model))
        settings = cls(
            model=model,
            mode=mode_name,
            train_phases=tuple(train_phases),
            test_phases=tuple(test_phases),
            test_fusion=test_fusion,
            input_size=resolve_input_size(model, params.get("input_size")),
            epochs=int(params.get("epochs", cls.epochs)),
            batch_size=int(params.get("batch_size", cls.batch_size)),
            lr=float(params.get("lr", cls.lr)),
            weight_decay=float(params.get("weight_decay", cls.weight_decay)),
            seed=int(params.get("seed", cls.seed)),
            device=device,
            amp=bool(params.get("amp", cls.amp)),
            pretrained=bool(params.get("pretrained", cls.pretrained)),
            weights=str(params["weights"]) if params.get("weights") else None,
            augment=augment if augment is not None and augment.active else None,
            backend=backend,
            scheduler=str(scheduler) if scheduler else None,
            jobs=int(params.get("jobs", cls.jobs)),
            threads=None if threads is None else int(threads),
            missing_class=missing_class,
        )
        for name in ("input_size", "epochs", "batch_size", "jobs"):
            if getattr(settings, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
        if settings.lr <= 0 or settings.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        return settings

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train_phases"], data["test_phases"] = list(self.train_phases), list(self.test_phases)
        data["augment"] = self.augment.to_dict() if self.augment else None
        data["threads"] = "auto" if self.threads is None else self.threads
        return data

    def result_settings(self) -> dict[str, Any]:
        """The settings the numbers depend on (run.json `params`): `to_dict` without EXECUTION_KEYS."""
        return {key: value for key, value in self.to_dict().items() if key not in EXECUTION_KEYS}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class LosoData:
    """The DI cache as training arrays: images[phase] is (N, 3, S, S) float32, normalized."""

    images: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) int64
    groups: np.ndarray  # (N,) fold key per sample (subject, or dataset/subject across datasets)
    sample_ids: np.ndarray  # (N,) str
    datasets: np.ndarray  # (N,) str
    label_names: list[str]

    @property
    def folds(self) -> list[str]:
        return sorted(set(self.groups.tolist()))


def fold_keys(datasets: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """Subject per sample; prefixed `dataset/` when the cache mixes datasets (subjects may clash)."""
    subjects = np.asarray(subjects).astype(str)
    datasets = np.asarray(datasets).astype(str)
    if len(set(datasets.tolist())) <= 1:
        return subjects
    return np.array([s if s.startswith(f"{d}/") else f"{d}/{s}" for d, s in zip(datasets, subjects)])


def fold_dir_name(key: str) -> str:
    """A file-system-safe folder name for a fold key (`casme2/sub01` -> `casme2-sub01`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", key).strip("-.") or "fold"


def prepare_images(
    stack: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float], chunk: int = 256
) -> np.ndarray:
    """(N,H,W,3) uint8 -> (N,3,size,size) float32, scaled to [0,1], resized once, normalized."""
    n = stack.shape[0]
    out = np.empty((n, 3, size, size), dtype=np.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    for start in range(0, n, chunk):
        x = torch.from_numpy(np.ascontiguousarray(stack[start : start + chunk])).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = ((x - mean_t) / std_t).numpy()
    return out


def load_loso_data(
    di: DynamicImageSet,
    phases: Sequence[str],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    source: str = "the DI cache",
) -> LosoData:
    missing = [p for p in phases if p not in di.images]
    if missing:
        raise MerError(
            f"{source} has no phase(s) {missing} (it holds {di.phases}); change train_phases/test_phases/mode "
            "or add the phase to dynimg.phases"
        )
    labels = np.asarray(di.samples["label"], dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(di.label_names)):
        raise MerError(f"{source}: labels outside 0..{len(di.label_names) - 1} ({di.label_names})")
    groups = fold_keys(di.samples["dataset"], di.samples["subject"])
    if len(set(groups.tolist())) < 2:
        raise MerError(
            f"{source}: leave-one-subject-out needs at least 2 subjects, found {sorted(set(groups.tolist()))}"
        )
    images = {p: prepare_images(di.images[p], size, mean, std) for p in dict.fromkeys(phases)}
    return LosoData(
        images=images,
        labels=labels,
        groups=groups,
        sample_ids=np.asarray(di.samples["sample_id"]).astype(str),
        datasets=np.asarray(di.samples["dataset"]).astype(str),
        label_names=list(di.label_names),
    )


def check_fold_classes(data: LosoData, missing_class: str = "error") -> list[str]:
    """Check every fold's training set before any fold trains; return warnings to show.

    A class with clips in the cache but none in some fold's training set (all of them belong to the
    held-out subject) cannot be learnt by that fold's model: a MerError naming the class, its clip
    count and the fold(s) with `missing_class: error`, a warning with `warn`. A label name without any
    clip in the cache is a warning only (the model has an output that is never trained; class presets
    may list emotions a dataset copy lacks).
    """
    counts = np.bincount(data.labels, minlength=len(data.label_names))
    warnings = [
        f"class {name!r} has no clip in the cache: the model gets an output for it that is never trained "
        "(drop it from the class mapping if the dataset has none)"
        for name, count in zip(data.label_names, counts)
        if count == 0
    ]
    problems = []
    for c, name in enumerate(data.label_names):
        if counts[c] == 0:
            continue
        folds = sorted({str(g) for g in data.groups[data.labels == c]})
        lacking = [fold for fold in folds if not np.any((data.labels == c) & (data.groups != fold))]
        if lacking:
            problems.append(
                f"class {name!r} ({counts[c]} clip{'s' if counts[c] != 1 else ''}) has no training sample in fold "
                f"{', '.join(lacking)}: all its clips belong to that held-out subject"
            )
    if problems and missing_class == "error":
        raise MerError(
            "; ".join(problems)
            + ". A fold cannot learn a class it never sees. Merge the class into another or drop it "
            "with the class mapping of annotate and dynimg (`--classes`, params datasets.NAME.classes: a preset such as "
            "casme2-5 or megc-3, or 'emotion=class,...'), or set train.missing_class: warn to train anyway"
            + "".join(f"\nwarning: {w}" for w in warnings)
        )
    return warnings + [f"{p} (missing_class: warn; that fold cannot predict it)" for p in problems]


# ---------------------------------------------------------------------------------------------
# One fold


def fold_seed(seed: int, fold: str) -> int:
    """Seed of one fold from (seed, fold key): a fold is reproducible on its own."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{fold}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise MerError("device: cuda was requested but no CUDA GPU is available; use device: auto or cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type when `enabled` (params `amp`); a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class FoldResult:
    fold: str
    directory: str
    predictions: list[dict[str, Any]]
    manifest: dict[str, Any]
    seconds: float | None  # None when unknown (a fold read back without its timing)
    log: list[dict[str, float]] = field(default_factory=list)


def _batches(n: int, batch_size: int, order: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) == 1 and n > 1:  # batch norm cannot train on a single sample
            return
        yield batch


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, images: Sequence[torch.Tensor], device: torch.device, batch_size: int, amp: bool = False
) -> np.ndarray:
    """Class probabilities of the eval-mode model, averaged over the given views of the samples."""
    model.eval()
    total = None
    for x in images:
        parts = []
        for i in range(0, len(x), batch_size):
            with autocast(device, amp):
                logits = model(x[i : i + batch_size].to(device))
            parts.append(torch.softmax(logits.float(), dim=1).cpu())
        probs = torch.cat(parts).double()
        total = probs if total is None else total + probs
    return (total / len(images)).numpy()


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, float]:
    """One epoch over the training tensors (already on `device`) in a random order drawn from
    `generator`; batches are index slices, augmented on the device. Returns (mean loss, accuracy).

    The running sums stay on the device, so a GPU is synchronized once per epoch, not per step.
    """
    model.train()
    n = len(x_train)
    order = torch.randperm(n, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for batch in _batches(n, settings.batch_size, order):
        x = x_train[batch]
        if settings.augment is not None:
            x = augment_batch(x, generator, settings.augment)
        y = y_train[batch]
        with autocast(device, settings.amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(batch)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(batch)
    return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1)


def train_fold(
    data: LosoData,
    fold: str,
    settings: TrainSettings,
    out_dir: str | Path | None = None,
    threads: int | None = None,
    timing_dir: str | Path | None = None,
    epoch_progress: EpochProgress | None = None,
) -> FoldResult:
    """Train on every fold but `fold`, predict `fold` with the last model, write the fold folder.

    The folder `out_dir/folds/<fold>/` receives model.pt, predictions.csv, manifest.json and
    train_log.csv (when out_dir is given), written under a temporary name and renamed when complete.
    Nothing written there depends on the time taken: that is `FoldResult.seconds`, also written to
    `timing_dir/<fold>.json` when given, before the fold folder appears (so a finished fold has one).
    """
    start_time = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seed = fold_seed(settings.seed, fold)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        device = resolve_device(settings.device)
        train_idx = np.flatnonzero(data.groups != fold)
        test_idx = np.flatnonzero(data.groups == fold)
        if len(test_idx) == 0:
            raise MerError(f"fold {fold!r}: no samples of that subject in the cache")
        x_train = torch.from_numpy(np.concatenate([data.images[p][train_idx] for p in settings.train_phases]))
        y_train = torch.from_numpy(np.tile(data.labels[train_idx], len(settings.train_phases)))
        x_test = [torch.from_numpy(np.ascontiguousarray(data.images[p][test_idx])) for p in settings.test_phases]
        x_train, y_train = x_train.to(device), y_train.to(device)  # the whole training set moves once

        model = build_model(
            settings.model, len(data.label_names), settings.pretrained, settings.weights, settings.input_size
        )
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        log: list[dict[str, float]] = []
        epochs = range(1, settings.epochs + 1)
        for epoch in epoch_progress(epochs, fold) if epoch_progress else epochs:
            loss, accuracy = train_epoch(model, optimizer, x_train, y_train, settings, generator, device)
            log.append({"epoch": epoch, "loss": loss, "train_accuracy": accuracy})

        probs = predict_proba(model, x_test, device, max(settings.batch_size, 64), settings.amp)
        preds = probs.argmax(1)
        rows = []
        for k, i in enumerate(test_idx):
            row = {
                "sample_id": str(data.sample_ids[i]),
                "dataset": str(data.datasets[i]),
                "subject": fold,
                "true_label": data.label_names[int(data.labels[i])],
                "pred_label": data.label_names[int(preds[k])],
            }
            row.update({f"prob_{name}": float(probs[k, c]) for c, name in enumerate(data.label_names)})
            rows.append(row)
        rows.sort(key=lambda r: r["sample_id"])
        trained_on = sorted(set(data.groups[train_idx].tolist()))
        manifest = {
            "held_out_subject": fold,
            "trained_on_subjects": trained_on,
            "n_train_clips": len(train_idx),
            "n_train_samples": len(x_train),
            "n_test_samples": len(test_idx),
            "train_phases": list(settings.train_phases),
            "test_phases": list(settings.test_phases),
            "seed": seed,
            "epochs": settings.epochs,
            "final_train_loss": log[-1]["loss"] if log else None,
            "final_train_accuracy": log[-1]["train_accuracy"] if log else None,
            "augment": settings.augment.to_dict() if settings.augment else None,
            "amp": settings.amp,
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        directory = f"folds/{fold_dir_name(fold)}"
        if out_dir is not None:
            with atomic_output(Path(out_dir) / directory, directory=True) as folder:
                # torch.save is byte-identical for identical tensors under the same file name
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
                write_predictions(folder / "predictions.csv", rows, data.label_names)
                (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
                write_train_log(folder / "train_log.csv", log)
                if timing_dir is not None:
                    write_fold_timing(timing_dir, fold, time.perf_counter() - start_time)
        seconds = time.perf_counter() - start_time
        return FoldResult(fold=fold, directory=directory, predictions=rows, manifest=manifest, seconds=seconds, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def write_fold_timing(timing_dir: str | Path, fold: str, seconds: float) -> None:
    with atomic_output(Path(timing_dir) / f"{fold_dir_name(fold)}.json") as tmp:
        tmp.write_text(json.dumps({"fold": fold, "seconds": seconds}) + "\n")


def read_fold_result(out_dir: str | Path, fold: str, seconds: float | None = None) -> FoldResult:
    """A finished fold read back from `out_dir/folds/<fold>/` (predictions, manifest, train log)."""
    directory = f"folds/{fold_dir_name(fold)}"
    folder = Path(out_dir) / directory
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        rows = read_predictions(folder / "predictions.csv")
        log = read_train_log(folder / "train_log.csv")
        if not (folder / "model.pt").is_file():
            raise FileNotFoundError(folder / "model.pt")
        if manifest.get("held_out_subject") != fold or len(rows) != manifest.get("n_test_samples"):
            raise ValueError("its manifest does not match its predictions")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MerError(f"finished fold {folder} cannot be read ({exc}); delete it or rerun with --fresh") from exc
    return FoldResult(fold=fold, directory=directory, predictions=rows, manifest=manifest, seconds=seconds, log=log)


# ---------------------------------------------------------------------------------------------
# All folds


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads() -> int:
    """Torch threads for a fold on a Dask worker: the worker's OMP_NUM_THREADS (Dask sets 1 by default,
    config `distributed.nanny.pre-spawn-environ`), else the machine's cores / the worker's threads."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
        if value >= 1:
            return value
    except ValueError:
        pass
    try:
        from distributed import get_worker

        nthreads = int(getattr(get_worker(), "nthreads", 1) or 1)
    except (ImportError, ValueError):  # not on a Dask worker
        nthreads = 1
    return max(1, available_cores() // nthreads)


def fold_threads(settings: TrainSettings, folds: int) -> int | None:
    """Torch threads per fold: `threads`, else (auto) cores // jobs with loky, and None with dask,
    whose workers decide (`worker_threads`)."""
    if settings.threads is not None:
        return settings.threads
    if settings.backend == "dask":
        return None
    return max(1, available_cores() // max(1, min(settings.jobs, folds)))


def _train_fold_on_worker(
    data: LosoData, fold: str, settings: TrainSettings, out_dir: str, timing_dir: str | None = None
) -> FoldResult:
    """`train_fold` on a Dask worker, with `threads` or else `worker_threads()` torch threads (set
    explicitly: torch may have been imported before Dask's environment applied)."""
    return train_fold(data, fold, settings, out_dir, settings.threads or worker_threads(), timing_dir)


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A `distributed.Client` for `scheduler`, or for a local cluster of `workers` processes on loopback."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise MerError("backend: dask needs the Dask distributed package: pip install 'dask[distributed]'") from exc
    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
            except OSError as exc:
                raise MerError(
                    f"cannot reach the Dask scheduler at {scheduler} (params train.scheduler): {exc}"
                ) from exc
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
                )
            )
            client = stack.enter_context(Client(cluster))
        yield client


def run_loso(
    data: LosoData,
    settings: TrainSettings,
    out_dir: str | Path,
    folds: Sequence[str] | None = None,
    progress: Callable[[Iterator[FoldResult], int], Iterator[FoldResult]] | None = None,
    threads: int | None = None,
    timing_dir: str | Path | None = None,
    epoch_progress: EpochProgress | None = None,
) -> list[FoldResult]:
    """Train every fold (or the given ones); results sorted by fold. `threads` overrides
    `fold_threads(settings, len(folds))`, e.g. to keep a resumed run's threads those of the whole run;
    `timing_dir` receives each fold's seconds (`train_fold`).

    `backend: loky` runs `settings.jobs` folds at a time on this machine, each worker with
    `threads` torch threads, by default (auto) cores // jobs so that jobs x threads never exceeds
    the cores. `backend: dask`
    hands the same fold function to joblib's dask backend: the cluster at `settings.scheduler`
    (or, without one, a local cluster of `jobs` worker processes on 127.0.0.1) runs one fold per
    worker thread; the training arrays are scattered to the workers once. A fold on a Dask worker
    uses `threads`, else (auto) `worker_threads()` torch threads: one by default (Dask starts
    worker processes with OMP_NUM_THREADS=1), as loky gives when jobs = cores, so both backends
    give the same predictions for the same seeds.
    """
    folds = list(folds) if folds is not None else data.folds
    jobs = max(1, min(settings.jobs, len(folds)))
    threads = threads or fold_threads(settings, len(folds))
    timing = None if timing_dir is None else str(timing_dir)
    with contextlib.ExitStack() as stack:
        if settings.backend == "dask":
            from joblib import Parallel, delayed, parallel_config

            stack.enter_context(dask_client(settings.scheduler, jobs))
            stack.enter_context(parallel_config(backend="dask", n_jobs=-1, scatter=[data]))
            runner = Parallel(return_as="generator_unordered", batch_size=1)
            on_worker = dataclasses.replace(settings, threads=threads)
            results: Iterator[FoldResult] = runner(
                delayed(_train_fold_on_worker)(data, fold, on_worker, str(out_dir), timing) for fold in folds
            )
        elif jobs == 1:
            results = (train_fold(data, fold, settings, out_dir, threads, timing, epoch_progress) for fold in folds)
        else:
            from joblib import delayed

            from pipeline.parallel import process_pool  # workers exit if this process is killed

            runner = process_pool(jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="n_jobs")
            results = runner(delayed(train_fold)(data, fold, settings, str(out_dir), threads, timing) for fold in folds)
        if progress is not None:
            results = progress(results, len(folds))
        return sorted(results, key=lambda r: r.fold)


def training_curve(results: Sequence[FoldResult]) -> list[dict[str, float]]:
    """Per epoch: loss and training accuracy averaged over the folds (every fold trains the same epochs)."""
    by_epoch: dict[int, list[dict[str, float]]] = {}
    for result in results:
        for entry in result.log:
            by_epoch.setdefault(int(entry["epoch"]), []).append(entry)
    return [
        {
            "epoch": epoch,
            "loss": float(np.mean([e["loss"] for e in entries])),
            "train_accuracy": float(np.mean([e["train_accuracy"] for e in entries])),
            "folds": len(entries),
        }
        for epoch, entries in sorted(by_epoch.items())
    ]


def write_training_curve(path: str | Path, curve: Sequence[Mapping[str, float]]) -> None:
    """CSV `epoch,loss,train_accuracy,folds` that `dvc plots show` draws."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", "loss", "train_accuracy", "folds"])
        for entry in curve:
            writer.writerow([entry["epoch"], f"{entry['loss']:.6f}", f"{entry['train_accuracy']:.6f}", entry["folds"]])


def write_run(
    out_dir: str | Path,
    results: Sequence[FoldResult],
    settings: TrainSettings,
    label_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Top-level predictions.csv (all folds, sorted by sample_id), training_curve.csv and run.json.

    Nothing here depends on timings or on how the folds ran (jobs, backend): see `write_timings`.
    """
    out_dir = Path(out_dir)
    rows = sorted((row for r in results for row in r.predictions), key=lambda row: row["sample_id"])
    write_predictions(out_dir / "predictions.csv", rows, label_names)
    write_training_curve(out_dir / "training_curve.csv", training_curve(results))
    probe = build_model(settings.model, len(label_names), False, None, settings.input_size)
    run = {
        "model": settings.model,
        "mode": settings.mode,
        "params": settings.result_settings(),
        "label_names": list(label_names),
        "parameter_count": count_parameters(probe),
        "n_samples": len(rows),
        "folds": {
            r.fold: {
                "directory": r.directory,
                "n_train_samples": r.manifest["n_train_samples"],
                "n_test_samples": r.manifest["n_test_samples"],
                "final_train_loss": r.manifest["final_train_loss"],
            }
            for r in results
        },
        **(extra or {}),
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return run


def write_timings(
    path: str | Path, results: Sequence[FoldResult], execution: Mapping[str, Any], resumed: Sequence[str] = ()
) -> dict[str, Any]:
    """timings.json: the one file of a run that differs between identical runs (seconds per fold and
    in all, and how the folds ran: cores, jobs, backend)."""
    timings = {
        **execution,
        "folds": {
            r.fold: {"seconds": None if r.seconds is None else round(r.seconds, 3), "resumed": r.fold in resumed}
            for r in results
        },
    }
    Path(path).write_text(json.dumps(timings, indent=2) + "\n")
    return timings


# ---------------------------------------------------------------------------------------------
# A resumable run


def work_folder(out: str | Path) -> Path:
    """The work folder of a run: `<out parent>/.<out name>.partial/` (see the module docstring)."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


@contextlib.contextmanager
def exclusive_run(out: str | Path) -> Iterator[None]:
    """Hold the lock of the run `out` (`.<out name>.partial.lock` beside it) for the block.

    Two `mer train` processes writing the same run would train into one work folder and corrupt
    each other's folds; the second is refused instead. The lock is an flock, so the system releases
    it when its holder dies, even by SIGKILL; the empty lock file stays (DVC ignores it).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = work_folder(out).with_name(f"{work_folder(out).name}.lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MerError(
                f"another `mer train` is writing {out} (it holds {path}); wait for it to finish or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dynamic_images_digest(di: DynamicImageSet, phases: Sequence[str]) -> dict[str, Any]:
    """What a run's numbers depend on in the DI cache: its fingerprint attribute, the samples (ids,
    datasets, subjects, labels), the label names and the images of the phases used."""
    samples = hashlib.sha256()
    for name in ("sample_id", "dataset", "subject", "label"):
        samples.update("\x1f".join(map(str, np.asarray(di.samples[name]).tolist())).encode() + b"\x1e")
    return {
        "fingerprint": str(di.attrs.get("fingerprint", "")),
        "samples_sha256": samples.hexdigest(),
        "label_names": list(di.label_names),
        "images_sha256": {
            p: hashlib.sha256(np.ascontiguousarray(di.images[p]).tobytes()).hexdigest() for p in dict.fromkeys(phases)
        },
    }


def _code_digest() -> str:
    """sha256 of the training code (every module of `pipeline/train/`): a fix there invalidates finished folds."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_key(settings: TrainSettings, inputs: Mapping[str, Any], threads: int | None) -> dict[str, Any]:
    """Everything a run's numbers depend on, and its sha256 under `key`.

    `threads` is the torch threads per fold (None: decided by each Dask worker); predictions differ
    by about 1e-5 between thread counts, so it is part of the key.
    """
    content = {
        "settings": {**settings.result_settings(), "threads": "worker" if threads is None else threads},
        "inputs": dict(inputs),
        "code_sha256": _code_digest(),
        "tool_version": __version__,
        "torch_version": torch.__version__,
    }
    return {"key": hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest(), "content": content}


def _changed(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two key contents."""
    names = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names += _changed(a, b, f"{prefix}{name}.")
        elif a != b:
            names.append(f"{prefix}{name}")
    return names


def open_work_folder(
    out: str | Path, key: Mapping[str, Any], folds: Sequence[str], fresh: bool = False
) -> tuple[Path, list[str], str | None]:
    """The work folder for `out` with the run key `key`: (folder, finished folds, message).

    A work folder of another key (or any, with `fresh`) is deleted first, and the message says why.
    """
    work = work_folder(out)
    message = None
    if work.exists():
        done = sorted(p.name for p in (work / "folds").glob("*") if p.is_dir() and not p.name.startswith("."))
        previous = None
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads((work / "resume.json").read_text())
        if fresh:
            reason = "--fresh"
        elif not isinstance(previous, dict) or "key" not in previous:
            reason = "it has no readable resume.json"
        elif previous["key"] != key["key"]:
            changed = _changed(previous.get("content") or {}, key["content"])
            reason = f"{', '.join(changed) or 'the run key'} changed"
        else:
            reason = None
        if reason is not None:
            shutil.rmtree(work)
            message = f"discarding {len(done)} finished fold(s) in {work}: {reason}; training every fold"
    work.mkdir(parents=True, exist_ok=True)
    with atomic_output(work / "resume.json") as tmp:
        tmp.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    finished = [fold for fold in folds if (work / "folds" / fold_dir_name(fold)).is_dir()]
    if finished:
        message = f"resuming: {len(finished)} of {len(folds)} folds already trained in {work}"
    return work, finished, message


def _read_seconds(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_run(
    data: LosoData,
    settings: TrainSettings,
    out: str | Path,
    inputs: Mapping[str, Any],
    fresh: bool = False,
    progress: Callable[[Iterator[FoldResult], int], Iterator[FoldResult]] | None = None,
    echo: Callable[[str], Any] = print,
    extra: Mapping[str, Any] | None = None,
    started: float | None = None,
    warn: Callable[[str], Any] | None = None,
    epoch_progress: EpochProgress | None = None,
) -> tuple[dict[str, Any], list[FoldResult], dict[str, Any]]:
    """A whole, resumable LOSO run into the folder `out`: (run.json, fold results, timings.json).

    Folds already finished in the work folder under the same run key are not trained again (see
    the module docstring); `inputs` is `dynamic_images_digest` of the cache. Every fold result is
    read back from its files, finished earlier or just now, so resuming changes no byte of the
    run (timings.json aside). `out` is replaced only once the run is complete; on any failure the
    work folder stays for the next attempt. The classes of every fold are checked first
    (`check_fold_classes`; its warnings go to `warn`, by default `echo`). One process at a time
    writes a run (`exclusive_run`).
    """
    started = time.perf_counter() if started is None else started
    out = Path(out)
    for warning in check_fold_classes(data, settings.missing_class):
        (warn or echo)(f"warning: {warning}")
    with exclusive_run(out):  # a second process writing the same run is refused, not interleaved
        folds = data.folds
        threads = fold_threads(settings, len(folds))
        key = run_key(settings, inputs, threads)
        work, finished, message = open_work_folder(out, key, folds, fresh)
        if message:
            echo(message)
        todo = [fold for fold in folds if fold not in finished]
        timings = work / "timings"
        timings.mkdir(exist_ok=True)
        if todo:
            run_loso(
                data, settings, work, todo, progress, threads=threads, timing_dir=timings, epoch_progress=epoch_progress
            )
        results = [
            read_fold_result(work, fold, _read_seconds(timings / f"{fold_dir_name(fold)}.json")) for fold in folds
        ]
        run = write_run(work, results, settings, data.label_names, extra)
        execution = {
            "total_seconds": round(time.perf_counter() - started, 3),
            "cores": available_cores(),
            "jobs": settings.jobs,
            "backend": settings.backend,
            "scheduler": settings.scheduler,
            "threads_per_fold": "set by each Dask worker" if threads is None else threads,
        }
        timing = write_timings(work / "timings.json", results, execution, resumed=finished)
        shutil.rmtree(timings)
        (work / "resume.json").unlink()
        # The finished run replaces `out` in two renames (work -> temporary sibling -> out), through the
        # same helper as every atomic output; the old run is deleted only after the swap.
        with atomic_output(out) as tmp:
            os.replace(work, tmp)
        return run, results, timing
