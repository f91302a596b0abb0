"""The DI cache as training arrays, and the leave-one-subject-out folds it defines.

The whole cache is loaded once, brought once to the model's input size and normalized to float32
arrays (one per phase). The cache stores DIs at the aligned crop size (dynimg.size, 224 by
default); a smaller model input is reduced by area averaging (each output pixel the mean of the
stored pixels it covers), and a larger one is refused (`check_input_size`): an enlarged DI lacks the
fine motion a DI computed at that size holds, so no model is trained on enlarged DIs. Each fold
then takes its training and test rows by index: no per-sample
reads, no DataLoader workers.

Classes (`check_fold_classes`): a class with clips in the cache but no training sample in some fold
(all its clips belong to the held-out subject) stops the run before any training (`missing_class:
error`, the default) or is reported and trained anyway (`warn`). A label name with no clip at all in
the cache is always only a warning: class presets may list emotions a dataset copy lacks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import DynamicImageSet


@dataclass
class LosoData:
    """The DI cache as training arrays: images[phase] is (N, 3, S, S) float32, normalized."""

    images: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) int64
    groups: np.ndarray  # (N,) fold key per sample (subject, or dataset/subject across datasets)
    sample_ids: np.ndarray  # (N,) str
    datasets: np.ndarray  # (N,) str
    label_names: list[str]
    dropped: dict[str, np.ndarray] = field(default_factory=dict)  # phase -> rows without a sample of it
    # phase -> (N, K, 3, S, S) float32: K jittered DIs per clip (dual_phase_jitter; dynimg.jitter_draws)
    jitter: dict[str, np.ndarray] = field(default_factory=dict)

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


def check_input_size(stored: int, size: int, source: str = "the DI cache", model: str = "the model") -> None:
    """MerError when the model's input is larger than the stored DIs: enlarging is never done."""
    if size > stored:
        raise MerError(
            f"{source} holds {stored} px dynamic images but {model} takes {size} px input: enlarging them would "
            f"train on blurred DIs that lack the motion a {size} px DI holds. Recompute the DIs at {size} px or more "
            f"(params dynimg.size: {size}, at most the aligned crop size align.size; then `dvc repro` or `mer dynimg`), "
            f"or train at {stored} px (input_size: {stored} in train or models.NAME)"
        )


def prepare_images(
    stack: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float], chunk: int = 256
) -> np.ndarray:
    """(N,H,W,3) uint8 -> (N,3,size,size) float32, scaled to [0,1], reduced once by area averaging to
    `size` when stored larger, normalized. A stored size smaller than `size` is refused (MerError)."""
    n = stack.shape[0]
    if stack.ndim == 4 and stack.shape[1:3] != (size, size):
        if stack.shape[1] != stack.shape[2]:
            raise MerError(f"dynamic images of {stack.shape[1]}x{stack.shape[2]} px: expected square images")
        check_input_size(int(stack.shape[1]), size)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    for start in range(0, n, chunk):
        x = torch.from_numpy(np.ascontiguousarray(stack[start : start + chunk])).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="area")  # the mean of the covered pixels
        out[start : start + chunk] = ((x - mean_t) / std_t).numpy()
    return out


def load_loso_data(
    di: DynamicImageSet,
    phases: Sequence[str],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    source: str = "the DI cache",
    jitter_phases: Sequence[str] = (),
) -> LosoData:
    """The cache's DIs of `phases` as training arrays; with `jitter_phases`, also the K jittered DIs
    of each of those phases (MerError when the cache holds none: dynimg.jitter_draws is 0)."""
    missing = [p for p in phases if p not in di.images]
    if missing:
        raise MerError(
            f"{source} has no phase(s) {missing} (it holds {di.phases}); change train_phases/test_phases/mode "
            "or add the phase to dynimg.phases"
        )
    labels = np.asarray(di.samples["label"], dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(di.label_names)):
        raise MerError(f"{source}: labels outside 0..{len(di.label_names) - 1} ({di.label_names})")
    present = sorted(set(labels.tolist()))
    if len(present) == 1:
        raise MerError(
            f"{source}: every clip has class {di.label_names[present[0]]!r}: a classifier needs clips of at least two "
            "classes (a one-class cache scores UF1 1.0 without learning anything); check the class mapping of "
            "annotate and dynimg, or the samples table"
        )
    groups = fold_keys(di.samples["dataset"], di.samples["subject"])
    if len(set(groups.tolist())) < 2:
        raise MerError(
            f"{source}: leave-one-subject-out needs at least 2 subjects, found {sorted(set(groups.tolist()))}"
        )
    stored = {int(di.images[p].shape[1]) for p in phases if di.images[p].ndim == 4}
    for side in stored:
        check_input_size(side, size, source)
    images = {p: prepare_images(di.images[p], size, mean, std) for p in dict.fromkeys(phases)}
    lacking = [p for p in jitter_phases if di.jitter(p) is None]
    if lacking:
        raise MerError(
            f"{source} holds no jittered DIs of phase(s) {lacking}: the jitter mode draws them from the cache; set "
            "dynimg.jitter_draws (e.g. 4) and dynimg.jitter_frames (e.g. 2) and recompute the DIs (`dvc repro` or `mer dynimg`)"
        )
    jitter = {}
    for p in jitter_phases:
        stack = di.jitter(p)
        n, k = stack.shape[:2]
        jitter[p] = prepare_images(stack.reshape(n * k, *stack.shape[2:]), size, mean, std).reshape(n, k, 3, size, size)
    return LosoData(
        images=images,
        labels=labels,
        groups=groups,
        sample_ids=np.asarray(di.samples["sample_id"]).astype(str),
        datasets=np.asarray(di.samples["dataset"]).astype(str),
        label_names=list(di.label_names),
        dropped=dropped_rows(di.attrs),
        jitter=jitter,
    )


def dropped_rows(attrs: dict) -> dict[str, np.ndarray]:
    """Per phase, the rows whose phase DI is not a training sample (cache attribute
    `degenerate_phases`, written by dynimg with `degenerate: drop`); none for older caches."""
    text = attrs.get("degenerate_phases")
    if not text:
        return {}
    record = json.loads(text if isinstance(text, str) else text.decode())
    return {phase: np.asarray(rows, dtype=np.int64) for phase, rows in record.get("dropped_rows", {}).items()}


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
