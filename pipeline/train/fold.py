"""One leave-one-subject-out fold: train on every other subject for a fixed number of epochs, and
predict the held-out subject with the last model (nothing is selected on it: that would leak the test set).

The budget is counted in optimizer steps (`planned_steps`): `epochs` x the batches of an epoch. A
mode with `steps_of` (baseline_steps) trains for the steps its reference mode (dual_phase) takes on
the same fold over the same epochs: more epochs over its own samples, the last one partial, so the
equal-budget baseline takes exactly as many steps. The optimizer (adam, adamw, sgd) and the
learning-rate schedule (linear warm-up, then constant or cosine to 0) follow the train settings.

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

from pipeline.config import MODES
from pipeline.errors import MerError
from pipeline.train.augment import augment_batch
from pipeline.train.data import LosoData
from pipeline.train.kernels import apply_cpu_kernels
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


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over `n` samples (`batch_indices`: a last batch of one sample
    joins the batch before it)."""
    if n <= 0:
        return 0
    batches = -(-n // batch_size)
    return batches - 1 if batch_size > 1 and batches > 1 and n % batch_size == 1 else batches


def training_rows(data: LosoData, phases: Sequence[str], train_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per phase, the training clips whose DI of that phase is a sample (a degenerate phase dropped
    by `dynimg.degenerate: drop` is not)."""
    return {p: train_idx[~np.isin(train_idx, data.dropped.get(p, ()))] for p in phases}


def planned_steps(data: LosoData, settings: TrainSettings, train_idx: np.ndarray) -> int:
    """The fold's optimizer steps: `epochs` x the steps of an epoch over the mode's training samples,
    or over those of the mode named by `steps_of` (the equal-budget baseline)."""
    steps_of = MODES[settings.mode].steps_of
    phases = MODES[steps_of].train_phases if steps_of else settings.train_phases
    n = sum(len(rows) for rows in training_rows(data, phases, train_idx).values())
    return settings.epochs * steps_per_epoch(n, settings.batch_size)


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier of optimizer step `step` (0-based) of `total`: linear warm-up over
    `warmup` steps, then constant or a cosine decay to 0 at the last step."""
    import math

    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine" and total > warmup:
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return 1.0


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
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    device: torch.device,
    batch_size: int,
    amp: bool = False,
    weights: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Class probabilities of the eval-mode model, averaged over the given views of the samples
    (`weights`: per view, which samples it counts for; default all)."""
    model.eval()
    if weights is not None:
        total = None
        for x, w in zip(images, weights):
            probs = predict_proba(model, [x], device, batch_size, amp) * np.asarray(w, np.float64)[:, None]
            total = probs if total is None else total + probs
        return total / np.sum(weights, axis=0)[:, None]
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
    max_steps: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[float, float, int]:
    """One epoch over the training tensors (already on `device`) in a random order drawn from
    `generator`; batches are index slices, augmented on the device. It stops after `max_steps`
    optimizer steps when given (the last epoch of an equal-budget run); `scheduler` steps after each
    optimizer step. `weights` (per training sample, on `device`): the loss of a batch is the
    weighted mean of its samples' losses (None: the plain mean). Returns (mean loss, accuracy,
    optimizer steps).

    The running sums stay on the device, so a GPU is synchronized once per epoch, not per step.
    """
    model.train()
    n = len(x_train)
    order = torch.randperm(n, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = steps = 0
    for batch in batch_indices(n, settings.batch_size, order):
        if max_steps is not None and steps >= max_steps:
            break
        x = x_train[batch]
        if settings.augment is not None:
            x = augment_batch(x, generator, settings.augment)
        y = y_train[batch]
        with autocast(device, settings.amp), single_sample(model, len(batch) == 1):
            logits = model(x)
            if weights is None:
                loss = F.cross_entropy(logits.float(), y)
            else:
                w = weights[batch]
                losses = F.cross_entropy(logits.float(), y, reduction="none")
                loss = (w * losses).sum() / w.sum().clamp_min(1e-12)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        steps += 1
        loss_sum += loss.detach().double() * len(batch)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(batch)
    return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1), steps


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
    apply_cpu_kernels(settings.cpu_kernels)  # in a worker process: checks it started with the kernels pinned
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
        rows = training_rows(data, settings.train_phases, train_idx)
        x_train = torch.from_numpy(np.concatenate([data.images[p][rows[p]] for p in settings.train_phases]))
        y_train = torch.from_numpy(np.concatenate([data.labels[rows[p]] for p in settings.train_phases]))
        # Where each phase's samples lie in the training tensors (jitter replaces them, weighting scales them)
        bounds = np.cumsum([0] + [len(rows[p]) for p in settings.train_phases])
        segments = {p: (int(bounds[i]), int(bounds[i + 1])) for i, p in enumerate(settings.train_phases)}
        phase_rows = [p for p in settings.train_phases if p != "full"]
        # The jitter draws have their own generator: the batches are those of dual_phase
        jitter_generator = torch.Generator().manual_seed(fold_seed(settings.seed, f"{fold}\x1fjitter"))
        x_test = [torch.from_numpy(np.ascontiguousarray(data.images[p][test_idx])) for p in settings.test_phases]
        # A test view whose phase was dropped for a clip does not vote for that clip (test_fusion).
        votes = np.array([~np.isin(test_idx, data.dropped.get(p, ())) for p in settings.test_phases])
        votes[:, ~votes.any(axis=0)] = True  # a clip with every view dropped: all of them vote
        test_weights = None if votes.all() else list(votes)
        x_train, y_train = x_train.to(device), y_train.to(device)  # the whole training set moves once

        model = build_model(
            settings.model, len(data.label_names), settings.pretrained, settings.weights, settings.input_size
        )
        model.to(device)
        optimizer = make_optimizer(model, settings)
        total = planned_steps(data, settings, train_idx)
        own = steps_per_epoch(len(x_train), settings.batch_size)
        if total == 0 or own == 0:
            raise MerError(f"fold {fold!r}: {len(x_train)} training sample(s) give no optimizer step")
        warmup = min(total, round(settings.warmup_epochs * own))
        scheduler = (
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, settings.schedule))
            if warmup or settings.schedule != "constant"
            else None
        )
        log: list[dict[str, float]] = []
        epochs = range(1, -(-total // own) + 1)  # = settings.epochs unless the budget is another mode's
        done = 0
        weighting = MODES[settings.mode].weighting
        for epoch in epoch_progress(epochs, fold) if epoch_progress else epochs:
            for phase, stack in data.jitter.items():  # one of the clip's K jittered DIs per epoch
                start, stop = segments[phase]
                draws = torch.randint(stack.shape[1], (stop - start,), generator=jitter_generator).numpy()
                x_train[start:stop] = torch.from_numpy(stack[rows[phase], draws]).to(device)
            weights, phase_weight = None, settings.phase_weight_at(epoch, len(epochs))
            if weighting and phase_weight != 1.0:
                weights = torch.ones(len(y_train), dtype=torch.float32)
                for phase in phase_rows:
                    weights[segments[phase][0] : segments[phase][1]] = phase_weight
                weights = weights.to(device)
            loss, accuracy, steps = train_epoch(
                model, optimizer, x_train, y_train, settings, generator, device, total - done, scheduler, weights
            )
            done += steps
            if not math.isfinite(loss):
                raise MerError(
                    f"fold {fold}, epoch {epoch}: the training loss is {loss} (diverged): this run cannot learn and "
                    f"no predictions were written; lower train.lr (now {settings.lr:g}) or check the DI cache"
                )
            entry = {"epoch": epoch, "loss": loss, "train_accuracy": accuracy}
            if weighting:  # the weights used, in train_log.csv and the manifest
                entry.update(full_weight=1.0, phase_weight=phase_weight)
            log.append(entry)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise MerError(
                f"fold {fold}, epoch {settings.epochs}: the model's weights are not finite after training "
                f"(diverged): no predictions were written; lower train.lr (now {settings.lr:g})"
            )

        probs = predict_proba(model, x_test, device, max(settings.batch_size, 64), settings.amp, test_weights)
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
            "epochs": len(log),
            "optimizer_steps": done,
            "final_train_loss": log[-1]["loss"] if log else None,
            "final_train_accuracy": log[-1]["train_accuracy"] if log else None,
            "augment": settings.augment.to_dict() if settings.augment else None,
            **({"phase_weights": [e["phase_weight"] for e in log]} if weighting else {}),
            **({"jitter_draws": {p: int(v.shape[1]) for p, v in data.jitter.items()}} if data.jitter else {}),
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
