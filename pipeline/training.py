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
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentSettings, augment_batch
from .cache import DynamicImageSet
from .errors import MerError
from .models import build_model, count_parameters, resolve_input_size

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

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainSettings":
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
            raise ValueError(f"mode {mode_name} needs at least one augmentation in `augment` (flip, rotation, scale, translate, jitter)")
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
        return data


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
    di: DynamicImageSet, phases: Sequence[str], size: int, mean: Sequence[float], std: Sequence[float], source: str = "the DI cache"
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
        raise MerError(f"{source}: leave-one-subject-out needs at least 2 subjects, found {sorted(set(groups.tolist()))}")
    images = {p: prepare_images(di.images[p], size, mean, std) for p in dict.fromkeys(phases)}
    return LosoData(
        images=images,
        labels=labels,
        groups=groups,
        sample_ids=np.asarray(di.samples["sample_id"]).astype(str),
        datasets=np.asarray(di.samples["dataset"]).astype(str),
        label_names=list(di.label_names),
    )


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
    seconds: float
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
) -> FoldResult:
    """Train on every fold but `fold`, predict `fold` with the last model, write the fold folder.

    The folder `out_dir/folds/<fold>/` receives model.pt, predictions.csv, manifest.json and
    train_log.csv (when out_dir is given).
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

        model = build_model(settings.model, len(data.label_names), settings.pretrained, settings.weights, settings.input_size)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        log: list[dict[str, float]] = []
        for epoch in range(1, settings.epochs + 1):
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
        seconds = time.perf_counter() - start_time
        manifest = {
            "held_out_subject": fold,
            "trained_on_subjects": trained_on,
            "n_train_clips": int(len(train_idx)),
            "n_train_samples": int(len(x_train)),
            "n_test_samples": int(len(test_idx)),
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
            "seconds": round(seconds, 3),
        }
        directory = f"folds/{fold_dir_name(fold)}"
        if out_dir is not None:
            folder = Path(out_dir) / directory
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
            write_predictions(folder / "predictions.csv", rows, data.label_names)
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            with open(folder / "train_log.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["epoch", "loss", "train_accuracy"], lineterminator="\n")
                writer.writeheader()
                for entry in log:
                    writer.writerow({"epoch": entry["epoch"], "loss": f"{entry['loss']:.6f}", "train_accuracy": f"{entry['train_accuracy']:.6f}"})
        return FoldResult(fold=fold, directory=directory, predictions=rows, manifest=manifest, seconds=seconds, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def prediction_columns(label_names: Sequence[str]) -> list[str]:
    return ["sample_id", "dataset", "subject", "true_label", "pred_label", *[f"prob_{name}" for name in label_names]]


def write_predictions(path: str | Path, rows: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> None:
    columns = prediction_columns(label_names)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row[c]:.6f}" if c.startswith("prob_") else row[c] for c in columns])


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


def _train_fold_on_worker(data: LosoData, fold: str, settings: TrainSettings, out_dir: str) -> FoldResult:
    """`train_fold` on a Dask worker, with `worker_threads()` torch threads (set explicitly: torch may
    have been imported before Dask's environment applied)."""
    return train_fold(data, fold, settings, out_dir, worker_threads())


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
                raise MerError(f"cannot reach the Dask scheduler at {scheduler} (params train.scheduler): {exc}") from exc
        else:
            cluster = stack.enter_context(
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
            )
            client = stack.enter_context(Client(cluster))
        yield client


def run_loso(
    data: LosoData,
    settings: TrainSettings,
    out_dir: str | Path,
    folds: Sequence[str] | None = None,
    progress: Callable[[Iterator[FoldResult], int], Iterator[FoldResult]] | None = None,
) -> list[FoldResult]:
    """Train every fold (or the given ones); results sorted by fold.

    `backend: loky` runs `settings.jobs` folds at a time on this machine, each worker with
    cores // jobs torch threads so that jobs x threads never exceeds the cores. `backend: dask`
    hands the same fold function to joblib's dask backend: the cluster at `settings.scheduler`
    (or, without one, a local cluster of `jobs` worker processes on 127.0.0.1) runs one fold per
    worker thread; the training arrays are scattered to the workers once. A fold on a Dask worker
    uses `worker_threads()` torch threads: one by default (Dask starts worker processes with
    OMP_NUM_THREADS=1), as loky gives when jobs = cores, so both backends give the same
    predictions for the same seeds.
    """
    folds = list(folds) if folds is not None else data.folds
    jobs = max(1, min(settings.jobs, len(folds)))
    threads = max(1, available_cores() // jobs)
    with contextlib.ExitStack() as stack:
        if settings.backend == "dask":
            from joblib import Parallel, delayed, parallel_config

            stack.enter_context(dask_client(settings.scheduler, jobs))
            stack.enter_context(parallel_config(backend="dask", n_jobs=-1, scatter=[data]))
            runner = Parallel(return_as="generator_unordered", batch_size=1)
            results: Iterator[FoldResult] = runner(delayed(_train_fold_on_worker)(data, fold, settings, str(out_dir)) for fold in folds)
        elif jobs == 1:
            results = (train_fold(data, fold, settings, out_dir, threads) for fold in folds)
        else:
            from joblib import Parallel, delayed

            runner = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="n_jobs")
            results = runner(delayed(train_fold)(data, fold, settings, str(out_dir), threads) for fold in folds)
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
    """Top-level predictions.csv (all folds, sorted by sample_id) and run.json."""
    out_dir = Path(out_dir)
    rows = sorted((row for r in results for row in r.predictions), key=lambda row: row["sample_id"])
    write_predictions(out_dir / "predictions.csv", rows, label_names)
    write_training_curve(out_dir / "training_curve.csv", training_curve(results))
    probe = build_model(settings.model, len(label_names), False, None, settings.input_size)
    run = {
        "model": settings.model,
        "mode": settings.mode,
        "params": settings.to_dict(),
        "label_names": list(label_names),
        "parameter_count": count_parameters(probe),
        "n_samples": len(rows),
        "folds": {
            r.fold: {
                "directory": r.directory,
                "n_train_samples": r.manifest["n_train_samples"],
                "n_test_samples": r.manifest["n_test_samples"],
                "seconds": round(r.seconds, 3),
                "final_train_loss": r.manifest["final_train_loss"],
            }
            for r in results
        },
        **(extra or {}),
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return run

