"""Training speed of the in-memory LOSO path, and (optionally) baseline vs dual-phase accuracy.

Workload: an in-memory DI set of the demo size (10 subjects x 10 clips, 5 classes, phases full,
onset_apex and apex_offset at 112x112), LEARNet, dual_phase; one LOSO fold (90 training clips =
270 training samples), batch 32. Timed per epoch, interleaved, median over `--epochs` epochs
after one warm-up epoch each:

  in-memory   the pipeline's `train_epoch`: index slices of the tensors loaded once, batched
              augmentation when the mode asks for it, running sums on the device;
  model only  the model's own forward + loss + backward + optimizer step on the same batches,
              sliced beforehand (the floor: no data handling at all);
  PNG loader  the usual alternative: the same training images as PNG files in an ImageFolder
              tree, torchvision transforms, a DataLoader with num_workers 0 and 2.

Prints in-memory / model-only (target <= 1.1) and PNG-loader / in-memory (target >= 3).

`--device cuda` (the default when a GPU is present) runs the same comparison on a GPU, where
training is meant to run: the model's work shrinks and the PNG loader's decoding, done on the
CPU, dominates. `--model resnet18 --input-size 224` measures a paper model; the PNG path then
resizes each 112-pixel DI in its transform, as MER code usually does.

`--compare-modes --dynamic-images FILE` also runs LOSO with mode baseline and dual_phase on a DI
cache (e.g. the demo preset's cache/dynamic_images/casme2.h5) with the params file's train
settings and prints accuracy, UF1 and UAR side by side.

Usage: python benchmarks/bench_train.py [--epochs 5] [--threads N] [--device cpu|cuda] [--model M --input-size S]
                                       [--cpu-kernels portable|native]
                                       [--loader-workers 0 2] [--compare-modes --dynamic-images FILE [--compare-epochs N]]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.workload import machine_line
from pipeline.config.sections import CPU_KERNELS
from pipeline.train.data import LosoData, prepare_images
from pipeline.train.fold import batch_indices, fold_seed, train_epoch
from pipeline.train.kernels import apply_cpu_kernels
from pipeline.train.models import build_model
from pipeline.train.settings import TrainSettings

CLASSES = ["happiness", "disgust", "repression", "surprise", "others"]
DI_SIZE = 112  # the DI cache's stored size (params dynimg.size)
PHASES = ("full", "onset_apex", "apex_offset")


def demo_sized_set(
    subjects: int = 10, clips: int = 10, size: int = DI_SIZE, seed: int = 0
) -> tuple[LosoData, dict[str, np.ndarray]]:
    """Synthetic DIs (uint8 stacks and the prepared float arrays) of the demo preset's size."""
    rng = np.random.default_rng(seed)
    n = subjects * clips
    labels = np.arange(n) % len(CLASSES)
    raw = {}
    for phase in PHASES:
        stack = rng.normal(128, 30, (n, size, size, 3))
        for i, label in enumerate(labels):
            stack[i, label * 20 : label * 20 + 20] += 40
        raw[phase] = np.clip(stack, 0, 255).astype(np.uint8)
    data = LosoData(
        images={p: prepare_images(raw[p], size, (0.5,) * 3, (0.5,) * 3) for p in PHASES},
        labels=labels.astype(np.int64),
        groups=np.repeat([f"sub{s + 1:02d}" for s in range(subjects)], clips),
        sample_ids=np.array([f"demo/{i:03d}" for i in range(n)]),
        datasets=np.array(["demo"] * n),
        label_names=list(CLASSES),
    )
    return data, raw


def fresh(settings: TrainSettings, seed: int, device: torch.device):
    torch.manual_seed(seed)
    model = build_model(settings.model, len(CLASSES), False, None, settings.input_size).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def plain_epoch(model, optimizer, batches, device: torch.device) -> None:
    """The model's own work on ready batches (or a DataLoader): forward, backward, step. Batches
    already on `device` stay there; a DataLoader's CPU batches are moved as in any training loop."""
    model.train()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def drain(batches, device: torch.device) -> None:
    """Only fetch the batches onto the device: the data path's own cost."""
    for x, y in batches:
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def write_pngs(root: Path, raw: dict[str, np.ndarray], labels: np.ndarray, index: np.ndarray, phases) -> int:
    import cv2

    count = 0
    for phase in phases:
        for i in index:
            folder = root / CLASSES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{phase}_{i:03d}.png"), cv2.cvtColor(raw[phase][i], cv2.COLOR_RGB2BGR))
            count += 1
    return count


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function, *args, epoch: int = 0) -> float:
    """Seconds of one epoch. The global RNG (dropout) is reseeded per epoch so that every path's model
    follows the same weight trajectory: speed then differs only by the data path (weights drifting
    into denormal floats slow a CPU by 10-20 %, which would otherwise hit one path at random).
    A GPU is synchronized before and after, so queued kernels count in the epoch that launched them."""
    torch.manual_seed(1000 + epoch)
    synchronize()
    start = time.perf_counter()
    function(*args)
    synchronize()
    return time.perf_counter() - start


def speed(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    device = torch.device(args.device)
    settings = TrainSettings.from_params(
        {
            "model": args.model,
            "mode": args.mode,
            "input_size": args.input_size,
            "batch_size": args.batch_size,
            "device": args.device,
            "epochs": args.epochs,
        }
    )
    data, raw = demo_sized_set()
    size = settings.input_size
    if size != DI_SIZE:  # prepared once at the model's size, as `load_loso_data` does
        data.images = {p: prepare_images(raw[p], size, (0.5,) * 3, (0.5,) * 3) for p in PHASES}
    fold = "sub01"
    train_idx = np.flatnonzero(data.groups != fold)
    x_train = torch.from_numpy(np.concatenate([data.images[p][train_idx] for p in settings.train_phases])).to(device)
    y_train = torch.from_numpy(np.tile(data.labels[train_idx], len(settings.train_phases))).to(device)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} torch threads"
    )
    print(
        f"workload: in-memory DI set of the demo size ({len(data.labels)} clips x {len(PHASES)} phases at {DI_SIZE}x{DI_SIZE}, "
        f"{len(data.folds)} subjects), {settings.model} at input {size}, {settings.mode}, one LOSO fold: {len(train_idx)} "
        f"training clips = {len(x_train)} samples, batch {settings.batch_size}, {where}, median of {args.epochs} epochs after 1 warm-up"
    )

    seed = fold_seed(0, fold)
    generator = torch.Generator().manual_seed(seed)
    pipe_model, pipe_opt = fresh(settings, seed, device)
    ref_model, ref_opt = fresh(settings, seed, device)
    ref_gen = torch.Generator().manual_seed(seed)

    def ref_batches():
        order = torch.randperm(len(x_train), generator=ref_gen).to(device)
        return [(x_train[b].contiguous(), y_train[b]) for b in batch_indices(len(x_train), settings.batch_size, order)]

    def slices():
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        return ((x_train[b], y_train[b]) for b in batch_indices(len(x_train), settings.batch_size, order))

    timed(train_epoch, pipe_model, pipe_opt, x_train, y_train, settings, generator, device)  # warm-up
    timed(plain_epoch, ref_model, ref_opt, ref_batches(), device)
    t_pipe, t_ref = [], []
    for epoch in range(1, args.epochs + 1):  # interleaved: a load change on the shared machine hits both
        batches = ref_batches()  # sliced outside the timing: the floor
        if epoch % 2:  # alternate which path goes first
            t_pipe.append(
                timed(train_epoch, pipe_model, pipe_opt, x_train, y_train, settings, generator, device, epoch=epoch)
            )
            t_ref.append(timed(plain_epoch, ref_model, ref_opt, batches, device, epoch=epoch))
        else:
            t_ref.append(timed(plain_epoch, ref_model, ref_opt, batches, device, epoch=epoch))
            t_pipe.append(
                timed(train_epoch, pipe_model, pipe_opt, x_train, y_train, settings, generator, device, epoch=epoch)
            )
    pipe, ref = statistics.median(t_pipe), statistics.median(t_ref)
    print(f"in-memory epoch:        {pipe:7.3f} s")
    print(f"model-only epoch:       {ref:7.3f} s")
    print(f"ratio in-memory / model-only: {pipe / ref:6.3f}  (target <= 1.1)")

    with tempfile.TemporaryDirectory(prefix="mer-bench-png-") as tmp:
        count = write_pngs(Path(tmp), raw, data.labels, train_idx, settings.train_phases)
        steps = [transforms.Resize(size, antialias=True)] if size != DI_SIZE else []  # the usual MER transform
        tf = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
        folder = datasets.ImageFolder(tmp, transform=tf)
        assert len(folder) == count
        for workers in args.loader_workers:
            loader = DataLoader(
                folder,
                batch_size=settings.batch_size,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(seed),
            )
            png_model, png_opt = fresh(settings, seed, device)  # both start afresh: same stage of training
            pipe_model, pipe_opt = fresh(settings, seed, device)
            timed(plain_epoch, png_model, png_opt, loader, device)  # warm-up (and worker start)
            timed(train_epoch, pipe_model, pipe_opt, x_train, y_train, settings, generator, device)
            t_png, t_now = [], []
            for epoch in range(1, args.epochs + 1):
                t_png.append(timed(plain_epoch, png_model, png_opt, loader, device, epoch=epoch))
                t_now.append(
                    timed(train_epoch, pipe_model, pipe_opt, x_train, y_train, settings, generator, device, epoch=epoch)
                )
            png, pipe_now = statistics.median(t_png), statistics.median(t_now)
            print(
                f"PNG ImageFolder DataLoader, num_workers {workers}: {png:7.3f} s per epoch ({count} PNG files) vs in-memory "
                f"{pipe_now:.3f} s (fresh models, interleaved); ratio PNG / in-memory: {png / pipe_now:6.3f}  (target >= 3)"
            )
            # The data path alone (no model): what each way costs per epoch before the model's floor.
            png_data = statistics.median(timed(drain, loader, device, epoch=e) for e in range(args.epochs))
            memory_data = statistics.median(timed(drain, slices(), device, epoch=e) for e in range(args.epochs))
            print(
                f"  data path alone: PNG loader {png_data:.3f} s vs in-memory slicing {memory_data:.4f} s per epoch "
                f"(ratio {png_data / max(memory_data, 1e-9):.0f}); the model's own epoch: {ref:.3f} s"
            )
            del loader


def compare_modes(args: argparse.Namespace) -> None:
    from pipeline.evaluate.metrics import Predictions, compute_metrics
    from pipeline.io.dynamic_image_cache import read_dynamic_images
    from pipeline.train.data import load_loso_data
    from pipeline.train.execution import run_loso
    from pipeline.train.models import input_normalization
    from pipeline.train.settings import resolve_train_settings

    di = read_dynamic_images(args.dynamic_images)
    results = {}
    for mode in ("baseline", "dual_phase"):
        # as `mer train --mode MODE` resolves its settings (the params file's phase lists give way to the mode)
        settings = resolve_train_settings(args.params, mode=mode, device="cpu", epochs=args.compare_epochs or None)
        probe = build_model(settings.model, len(di.label_names), False, None, settings.input_size)
        mean, std = input_normalization(probe)
        data = load_loso_data(
            di, list(dict.fromkeys([*settings.train_phases, *settings.test_phases])), settings.input_size, mean, std
        )
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mer-bench-loso-") as tmp:
            folds = run_loso(data, settings, tmp)
        seconds = time.perf_counter() - start
        rows = [r for f in folds for r in f.predictions]
        index = {n: i for i, n in enumerate(di.label_names)}
        predictions = Predictions(
            np.array([r["sample_id"] for r in rows]),
            np.array([r["subject"] for r in rows]),
            np.array([r["dataset"] for r in rows]),
            np.array([index[r["true_label"]] for r in rows]),
            np.array([index[r["pred_label"]] for r in rows]),
            list(di.label_names),
        )
        results[mode] = (compute_metrics(predictions), seconds, settings)
    first = results["baseline"][2]
    print(
        f"compare modes on {args.dynamic_images}: {len(di)} clips, {len(set(np.asarray(di.samples['subject']).tolist()))} LOSO folds, "
        f"{first.model}, input {first.input_size}, {first.epochs} epochs, batch {first.batch_size}, lr {first.lr}, jobs {first.jobs}"
    )
    print(f"{'mode':<12} {'accuracy':>9} {'UF1':>7} {'UAR':>7} {'seconds':>8}")
    for mode, (m, seconds, _) in results.items():
        print(f"{mode:<12} {m['accuracy']:9.3f} {m['uf1']:7.3f} {m['uar']:7.3f} {seconds:8.1f}")
    delta = results["dual_phase"][0]["accuracy"] - results["baseline"][0]["accuracy"]
    print(f"dual_phase - baseline accuracy: {100 * delta:+.1f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per path (median)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the speed part (default: torch's)")
    parser.add_argument("--mode", default="dual_phase", help="training mode of the speed workload")
    parser.add_argument("--model", default="learnet", help="model of the speed workload: learnet or a timm name")
    parser.add_argument(
        "--input-size", type=int, default=112, help="model input size (DIs are stored at 112 and resized)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="training device of the speed part"
    )
    parser.add_argument(
        "--loader-workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers values to compare"
    )
    parser.add_argument(
        "--cpu-kernels",
        choices=CPU_KERNELS,
        default="portable",
        help="torch's CPU kernels, as train.cpu_kernels (default: portable, what `mer train` runs)",
    )
    parser.add_argument("--skip-speed", action="store_true", help="only --compare-modes")
    parser.add_argument("--compare-modes", action="store_true", help="LOSO baseline vs dual_phase on --dynamic-images")
    parser.add_argument("--dynamic-images", type=Path, default=Path("cache/dynamic_images/casme2.h5"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="train settings for --compare-modes")
    parser.add_argument(
        "--compare-epochs", type=int, default=None, help="epochs per fold for --compare-modes (default: params)"
    )
    args = parser.parse_args()
    print(machine_line())
    print(f"torch CPU kernels: {args.cpu_kernels} ({apply_cpu_kernels(args.cpu_kernels)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_speed:
        speed(args)
    if args.compare_modes:
        compare_modes(args)


if __name__ == "__main__":
    main()
