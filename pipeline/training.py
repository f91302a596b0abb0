"""Leave-one-subject-out training on a dynamic-image cache (DESIGN.md section 7).

The whole cache is loaded once, resized once to the model's input size and normalized to float32
arrays (one per phase). Each fold then takes its training and test rows by index: no per-sample
reads, no DataLoader workers. A fold trains for a fixed number of epochs on every other subject
and the last model predicts the held-out subject; nothing is selected on the held-out subject.

Training/test phases come from the mode (`baseline`: train on `full`; `dual_phase`: train on
`full`, `onset_apex` and `apex_offset`, each phase image a separate sample with the clip's label;
both test on `full`) unless `train_phases` / `test_phases` are given explicitly. With several test
phases a clip's class probabilities are averaged over them.

Folds are independent and run through joblib, so `joblib.parallel_config(backend="dask")` runs them
on a Dask cluster unchanged (the output folder must then be on a shared file system).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cache import DynamicImageSet
from .errors import MerError
from .models import build_model, count_parameters

MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "baseline": (("full",), ("full",)),
    "dual_phase": (("full", "onset_apex", "apex_offset"), ("full",)),
}
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of the train stage; `from_params` validates a params section."""

    model: str = "learnet"
    mode: str = "dual_phase"
    train_phases: tuple[str, ...] = MODES["dual_phase"][0]
    test_phases: tuple[str, ...] = MODES["dual_phase"][1]
    input_size: int = 112
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    pretrained: bool = False
    weights: str | None = None
    augment_flip: bool = False
    augment_rotation: float = 0.0
    jobs: int = 1

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainSettings":
        """Build settings from a params section; raise ValueError on unknown keys or bad values."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; known keys: {sorted(known)}")
        mode = str(params.get("mode", cls.mode))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        train_phases = params.get("train_phases") or MODES[mode][0]
        test_phases = params.get("test_phases") or MODES[mode][1]
        for name, phases in (("train_phases", train_phases), ("test_phases", test_phases)):
            if isinstance(phases, str) or not all(isinstance(p, str) for p in phases):
                raise ValueError(f"{name} must be a list of phase names, got {phases!r}")
        device = str(params.get("device", cls.device))
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        settings = cls(
            model=str(params.get("model", cls.model)),
            mode=mode,
            train_phases=tuple(train_phases),
            test_phases=tuple(test_phases),
            input_size=int(params.get("input_size", cls.input_size)),
            epochs=int(params.get("epochs", cls.epochs)),
            batch_size=int(params.get("batch_size", cls.batch_size)),
            lr=float(params.get("lr", cls.lr)),
            weight_decay=float(params.get("weight_decay", cls.weight_decay)),
            seed=int(params.get("seed", cls.seed)),
            device=device,
            pretrained=bool(params.get("pretrained", cls.pretrained)),
            weights=str(params["weights"]) if params.get("weights") else None,
            augment_flip=bool(params.get("augment_flip", cls.augment_flip)),
            augment_rotation=float(params.get("augment_rotation", cls.augment_rotation)),
            jobs=int(params.get("jobs", cls.jobs)),
        )
        for name in ("input_size", "epochs", "batch_size", "jobs"):
            if getattr(settings, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
        if settings.lr <= 0 or settings.weight_decay < 0 or settings.augment_rotation < 0:
            raise ValueError("lr must be > 0, weight_decay and augment_rotation >= 0")
        return settings

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train_phases"], data["test_phases"] = list(self.train_phases), list(self.test_phases)
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


def augment_batch(x: torch.Tensor, generator: torch.Generator, flip: bool, rotation: float) -> torch.Tensor:
    """Random horizontal flips (p = 0.5) and rotations in [-rotation, rotation] degrees."""
    if flip:
        mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    if rotation > 0:
        angles = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * math.radians(rotation)
        cos, sin = torch.cos(angles), torch.sin(angles)
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1), torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x


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
def predict_proba(model: torch.nn.Module, images: Sequence[torch.Tensor], device: torch.device, batch_size: int) -> np.ndarray:
    """Class probabilities of the eval-mode model, averaged over the given views of the samples."""
    model.eval()
    total = None
    for x in images:
        parts = [torch.softmax(model(x[i : i + batch_size].to(device)), dim=1).cpu() for i in range(0, len(x), batch_size)]
        probs = torch.cat(parts).double()
        total = probs if total is None else total + probs
    return (total / len(images)).numpy()


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
        n = len(x_train)
        log: list[dict[str, float]] = []
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            loss_sum, correct, seen = 0.0, 0, 0
            for batch in _batches(n, settings.batch_size, order):
                x = x_train[batch]
                if settings.augment_flip or settings.augment_rotation:
                    x = augment_batch(x, generator, settings.augment_flip, settings.augment_rotation)
                y = y_train[batch]
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(batch)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(batch)
            log.append({"epoch": epoch, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)})

        probs = predict_proba(model, x_test, device, max(settings.batch_size, 64))
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
            "n_train_samples": int(n),
            "n_test_samples": int(len(test_idx)),
            "train_phases": list(settings.train_phases),
            "test_phases": list(settings.test_phases),
            "seed": seed,
            "epochs": settings.epochs,
            "final_train_loss": log[-1]["loss"] if log else None,
            "final_train_accuracy": log[-1]["train_accuracy"] if log else None,
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


def run_loso(
    data: LosoData,
    settings: TrainSettings,
    out_dir: str | Path,
    folds: Sequence[str] | None = None,
    progress: Callable[[Iterator[FoldResult], int], Iterator[FoldResult]] | None = None,
) -> list[FoldResult]:
    """Train every fold (or the given ones), `settings.jobs` at a time; results sorted by fold.

    Each worker uses cores // jobs torch threads so that jobs x threads never exceeds the cores.
    """
    folds = list(folds) if folds is not None else data.folds
    jobs = max(1, min(settings.jobs, len(folds)))
    threads = max(1, available_cores() // jobs)
    if jobs == 1:
        results: Iterator[FoldResult] = (train_fold(data, fold, settings, out_dir, threads) for fold in folds)
    else:
        from joblib import Parallel, delayed

        runner = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="n_jobs")
        results = runner(delayed(train_fold)(data, fold, settings, str(out_dir), threads) for fold in folds)
    if progress is not None:
        results = progress(results, len(folds))
    return sorted(results, key=lambda r: r.fold)


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

