"""Stage `train`: leave-one-subject-out training on a dynamic-image cache."""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from tqdm import tqdm

from pipeline.atomic import atomic_output
from pipeline.cache import read_dynamic_images
from pipeline.errors import MerError
from pipeline.models import build_model, input_normalization
from pipeline.training import MODES, TrainSettings, available_cores, load_loso_data, resolve_device, run_loso, write_run
from stages.common import jobs_option, params_option, stage_params


@click.command("train")
@click.option("--dynamic-images", "dynamic_images", type=click.Path(dir_okay=False), required=True, help="DI cache from `mer dynimg`.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder to write (replaced as a whole).")
@click.option("--model", default=None, help="'learnet' or a timm model name (default: params).")
@click.option("--mode", type=click.Choice(sorted(MODES)), default=None, help="Training phases (default: params).")
@click.option("--epochs", type=int, default=None, help="Epochs per fold (default: params).")
@jobs_option
@params_option
def train(dynamic_images: str, out: str, model: str | None, mode: str | None, epochs: int | None, jobs: int | None, params_file: str) -> None:
    """Train one model per LOSO fold and write checkpoints and predictions."""
    params = stage_params(params_file, "train", model=model, mode=mode, epochs=epochs, jobs=jobs)
    if mode is not None:  # an explicit --mode wins over phase lists in the params file
        params.pop("train_phases", None)
        params.pop("test_phases", None)
    try:
        settings = TrainSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise MerError(f"{params_file}: invalid train settings: {exc}") from exc
    device = resolve_device(settings.device)
    di = read_dynamic_images(dynamic_images)
    if len(di) == 0:
        raise MerError(f"{dynamic_images} holds no samples")
    # Build once here: an unknown model name or unavailable pretrained weights fail before any work.
    probe = build_model(settings.model, len(di.label_names), settings.pretrained, settings.weights, settings.input_size)
    mean, std = input_normalization(probe)
    del probe
    phases = list(dict.fromkeys([*settings.train_phases, *settings.test_phases]))
    data = load_loso_data(di, phases, settings.input_size, mean, std, source=str(dynamic_images))
    folds = data.folds
    click.echo(
        f"{settings.model} {settings.mode}: {len(folds)} LOSO folds, {len(di)} clips, train on {', '.join(settings.train_phases)}, "
        f"test on {', '.join(settings.test_phases)}, {settings.epochs} epochs, device {device}, jobs {min(settings.jobs, len(folds))}"
    )
    started = time.perf_counter()
    with atomic_output(out, directory=True) as tmp:

        def progress(results, total):
            return tqdm(results, total=total, desc=f"train {settings.model}", unit="fold", disable=None)

        results = run_loso(data, settings, tmp, folds, progress)
        extra = {
            "dynamic_images": str(dynamic_images),
            "dynamic_images_fingerprint": str(di.attrs.get("fingerprint", "")),
            "device": str(device),
            "cores": available_cores(),
            "torch_version": torch.__version__,
            "total_seconds": round(time.perf_counter() - started, 3),
        }
        run = write_run(tmp, results, settings, di.label_names, extra)
    correct = sum(r["true_label"] == r["pred_label"] for f in results for r in f.predictions)
    click.echo(
        f"{len(results)} folds, {run['n_samples']} predictions (pooled accuracy {correct / max(run['n_samples'], 1):.3f}) "
        f"in {run['total_seconds']:.1f} s -> {Path(out)}"
    )
