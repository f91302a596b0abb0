"""One leave-one-subject-out fold: train on every other subject for a fixed number of epochs, and
predict the held-out subject with the last model (nothing is selected on it: that would leak the test set).

Batches are index slices of tensors moved to the training device once; augmentations run on the
batched tensors there, seeded per fold. `amp: true` trains and predicts under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import MerError
from pipeline.train.augment import augment_batch
from pipeline.train.data import LosoData
from pipeline.train.models import build_model
from pipeline.train.run_files import FoldResult, fold_directory, write_fold
from pipeline.train.settings import TrainSettings

# Wraps a fold's epochs (e.g. in a progress bar): (epochs, fold) -> the same epochs. Used only where
# folds run in this process (jobs 1); parallel folds report per fold.
EpochProgress = Callable[[Iterable[int], str], Iterable[int]]


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


def batch_indices(n: int, batch_size: int, order: torch.Tensor) -> Iterator[torch.Tensor]:
    """Consecutive slices of `order`; a last batch of one sample joins the batch before it.

    Batch norm cannot take batch statistics of one sample, and dropping it (as this once did)
    made `batch_size: 1` take no optimizer step at all. With batch_size 1 every batch is one
    sample: `train_epoch` runs those with batch norm on its running statistics (`single_sample`).
    """
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # the previous batch takes the last sample
    for i, start in enumerate(starts):
        yield order[start : starts[i + 1] if i + 1 < len(starts) else n]


@contextlib.contextmanager
def single_sample(model: torch.nn.Module, active: bool) -> Iterator[None]:
    """Batch-norm layers in eval mode (running statistics, not updated) while `active`: the
    training step of a batch of one sample, whose batch statistics are undefined."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if active:
        for module in norms:
            module.eval()
    try:
        yield
    finally:
        if active:
            for module in norms:
                module.train()


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
    for batch in batch_indices(n, settings.batch_size, order):
        x = x_train[batch]
        if settings.augment is not None:
            x = augment_batch(x, generator, settings.augment)
        y = y_train[batch]
        with autocast(device, settings.amp), single_sample(model, len(batch) == 1):
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
    train_log.csv (when out_dir is given; `write_fold`). Nothing written there depends on the time
    taken: that is `FoldResult.seconds`, also written to `timing_dir/<fold>.json` when given.
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
        if len(train_idx) == 0:
            raise MerError(f"fold {fold!r}: no training samples (every clip belongs to the held-out subject)")
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
            if not math.isfinite(loss):
                raise MerError(
                    f"fold {fold}, epoch {epoch}: the training loss is {loss} (diverged): this run cannot learn and "
                    f"no predictions were written; lower train.lr (now {settings.lr:g}) or check the DI cache"
                )
            log.append({"epoch": epoch, "loss": loss, "train_accuracy": accuracy})
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise MerError(
                f"fold {fold}, epoch {settings.epochs}: the model's weights are not finite after training "
                f"(diverged): no predictions were written; lower train.lr (now {settings.lr:g})"
            )

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
        manifest = {
            "held_out_subject": fold,
            "trained_on_subjects": sorted(set(data.groups[train_idx].tolist())),
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
        result = FoldResult(
            fold=fold, directory=fold_directory(fold), predictions=rows, manifest=manifest, seconds=None, log=log
        )
        if out_dir is not None:
            write_fold(out_dir, result, model, data.label_names, timing_dir, start_time)
        result.seconds = time.perf_counter() - start_time
        return result
    finally:
        torch.set_num_threads(previous_threads)
