"""One cell of the paper's matrix per model, timed: samples/s and seconds per LOSO fold, and an
estimate of the whole matrix (docs/paper-recipe.md).

Workload per model: an in-memory DI set at the model's input size (224, learnet 112), `--clips`
training clips of one subject plus one held-out subject, mode dual_phase (3 samples per clip),
`--epochs` epochs, the recipe's optimizer settings (AdamW, warm-up, cosine; randomly initialised
weights: the speed does not depend on them, and no weights file is needed). Timed: one fold's
`train_fold` (model build, training, prediction), after one untimed warm-up step per model.

Estimate of the whole matrix: seconds per training sample-epoch x the sample-epochs of the recipe:
per dataset, folds x training clips per fold x (1 + 3 + 3 + 1 + 3 samples per clip for baseline,
baseline_steps, dual_phase, spatial, dual_phase_spatial) x epochs x seeds. CASME II (casme2-5):
26 subjects, 246 clips; SAMM (samm-5): 28 subjects, 136 clips.

On a CPU the figures are CPU figures (this project's machine has no GPU); `--device cuda` measures
a GPU. Default run: six models, 1 fold, 1 epoch, 8 clips, batch 8: under 5 minutes on 2 cores.

Usage: python -m benchmarks.bench_paper [--models M ...] [--clips 8] [--epochs 1] [--batch-size 8]
                                        [--device cpu|cuda] [--threads N] [--recipe-epochs 30] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.workload import machine_line
from pipeline.train.data import LosoData
from pipeline.train.fold import train_fold
from pipeline.train.models import PAPER_MODELS
from pipeline.train.settings import TrainSettings

PHASES = ("full", "onset_apex", "apex_offset")
DATASETS = {"casme2": (26, 246), "samm": (28, 136)}  # subjects, clips (5-class presets)
SAMPLES_PER_CLIP = {"baseline": 1, "baseline_steps": 3, "spatial": 1, "dual_phase": 3, "dual_phase_spatial": 3}
RECIPE_LR = {"learnet": 1e-3, "vit_base_patch16_224": 3e-5}  # others 3e-4 (docs/paper-recipe.md)


def workload(size: int, clips: int, classes: int = 5) -> LosoData:
    rng = np.random.default_rng(0)
    n = clips + 4  # the training subject's clips + 4 held-out clips
    labels = np.arange(n) % classes
    images = {p: rng.normal(0, 1, (n, 3, size, size)).astype(np.float32) for p in PHASES}
    groups = np.array(["train"] * clips + ["held_out"] * 4)
    return LosoData(
        images=images,
        labels=labels.astype(np.int64),
        groups=groups,
        sample_ids=np.array([f"bench/{g}/{i}" for i, g in enumerate(groups)]),
        datasets=np.array(["bench"] * n),
        label_names=[f"c{i}" for i in range(classes)],
    )


def settings(model: str, size: int, args: argparse.Namespace) -> TrainSettings:
    optimizer = {"optimizer": "adam"} if model == "learnet" else {"optimizer": "adamw", "weight_decay": 0.05}
    return TrainSettings.from_params(
        {
            "model": model,
            "mode": "dual_phase",
            "input_size": size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": RECIPE_LR.get(model, 3e-4),
            "warmup_epochs": 0.5,
            "schedule": "cosine",
            "device": args.device,
            "jobs": 1,
            **optimizer,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAPER_MODELS))
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--recipe-epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    load = tuple(round(x, 2) for x in os.getloadavg())
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, load average {load}")
    print(
        f"workload: 1 fold, {args.clips} training clips x 3 phases (dual_phase), {args.epochs} epoch(s), "
        f"batch {args.batch_size}"
    )
    sample_epochs = {
        name: subjects * (clips - clips / subjects) * sum(SAMPLES_PER_CLIP.values()) * args.recipe_epochs * args.seeds
        for name, (subjects, clips) in DATASETS.items()
    }
    print(
        f"matrix estimate: {len(SAMPLES_PER_CLIP)} modes, {args.recipe_epochs} epochs, {args.seeds} seeds, "
        + ", ".join(f"{n} {DATASETS[n][0]} folds" for n in DATASETS)
    )
    casme_fold = (DATASETS["casme2"][1] - DATASETS["casme2"][1] / DATASETS["casme2"][0]) * 3 * args.recipe_epochs
    print(
        f"{'model':24} {'input':>5} {'s/fold':>8} {'samples/s':>10} "
        f"{'CASME II dual_phase fold, ' + str(args.recipe_epochs) + ' epochs (min)':>44} {'matrix (h)':>11}"
    )
    total_hours = 0.0
    for model in args.models:
        size = 112 if model == "learnet" else 224
        data = workload(size, args.clips)
        cell = settings(model, size, args)
        warm = settings(model, size, argparse.Namespace(**{**vars(args), "epochs": 1}))
        train_fold(workload(size, 2), "held_out", warm)  # untimed: allocations, kernels
        start = time.perf_counter()
        result = train_fold(data, "held_out", cell)
        seconds = time.perf_counter() - start
        samples = result.manifest["n_train_samples"] * result.manifest["epochs"]
        rate = samples / seconds
        hours = sum(sample_epochs.values()) / rate / 3600
        total_hours += hours
        print(f"{model:24} {size:5d} {seconds:8.1f} {rate:10.1f} {casme_fold / rate / 60:44.1f} {hours:11.1f}")
    print(f"whole matrix, {len(args.models)} model(s), both datasets: about {total_hours:.0f} h on this device")


if __name__ == "__main__":
    main()
