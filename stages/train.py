"""Stage `train`: leave-one-subject-out training on a dynamic-image cache.

Writes the run folder `--out`: per fold `folds/<fold>/` (model.pt, predictions.csv, manifest.json,
train_log.csv), and run.json, predictions.csv, training_curve.csv and timings.json. Every file but
timings.json is byte-identical for the same inputs and settings (`threads` fixed: whatever `jobs`).

An interrupted run resumes: folds are finished one by one in the work folder
`<out parent>/.<out name>.partial/`, and a rerun with the same settings and the same DI cache
trains only the folds missing there ("resuming: K of N folds already trained in ..."). Changed
settings, cache or code discard the work folder and train every fold, as does `--fresh`. The work
folder becomes `--out` (replacing the previous run) only when every fold is done.
"""

from __future__ import annotations

import time

import click
import torch
from tqdm import tqdm

from pipeline.atomic import atomic_output
from pipeline.config import optional_section
from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import read_dynamic_images
from pipeline.train.models import PAPER_MODELS, build_model, input_normalization
from pipeline.train.training import (
    BACKENDS,
    MODES,
    TrainSettings,
    dynamic_images_digest,
    load_loso_data,
    resolve_device,
    train_run,
    training_curve,
    write_training_curve,
)
from stages.common import jobs_option, params_option, stage_params


def model_settings(params_file: str, model: str) -> dict:
    """The `models.NAME` section of the params file, or nothing when the model has none."""
    section = optional_section(params_file, "models").get(model) or {}
    if not isinstance(section, dict):
        raise MerError(f"{params_file}: models.{model} must be a mapping of train settings, got {section!r}")
    return section


@click.command("train")
@click.option(
    "--dynamic-images",
    "dynamic_images",
    type=click.Path(dir_okay=False),
    required=True,
    help="DI cache from `mer dynimg`.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Run folder to write (replaced as a whole when every fold is done). Until then finished folds are kept in "
    "the work folder .OUT.partial beside it, and a rerun with the same settings and cache resumes from them.",
)
@click.option(
    "--model",
    default=None,
    help=f"'learnet' or a timm model name; the paper's set: {', '.join(PAPER_MODELS)} (default: params).",
)
@click.option(
    "--mode",
    type=click.Choice(list(MODES)),
    default=None,
    help="Training phases and augmentation preset (default: params).",
)
@click.option("--epochs", type=int, default=None, help="Epochs per fold (default: params).")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Where folds run: loky (this machine) or dask (default: params).",
)
@click.option(
    "--scheduler",
    default=None,
    help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: params; none: a local cluster).",
)
@click.option(
    "--curve",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the run's training curve (epoch, mean loss and training accuracy over folds) to this CSV, "
    "e.g. for a `plots:` entry of dvc.yaml outside the run folder.",
)
@click.option(
    "--fresh", is_flag=True, help="Discard folds finished by an interrupted run (.OUT.partial) and train every fold."
)
@jobs_option
@params_option
def train(
    dynamic_images: str,
    out: str,
    model: str | None,
    mode: str | None,
    epochs: int | None,
    backend: str | None,
    scheduler: str | None,
    curve: str | None,
    fresh: bool,
    jobs: int | None,
    params_file: str,
) -> None:
    """Train one model per LOSO fold and write checkpoints and predictions."""
    options = {"model": model, "mode": mode, "epochs": epochs, "backend": backend, "scheduler": scheduler, "jobs": jobs}
    params = stage_params(params_file, "train", **options)
    # Per-model settings (params `models.NAME`) lie between the train section and the options, so
    # that each model of an experiment can differ, and changing one reruns only its cells.
    params.update(model_settings(params_file, str(params.get("model", "learnet"))))
    params.update({key: value for key, value in options.items() if value is not None})
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
    augment = ", ".join(f"{k} {v}" for k, v in settings.augment.to_dict().items()) if settings.augment else "none"
    where = (
        f"dask {settings.scheduler or 'local cluster'}"
        if settings.backend == "dask"
        else f"jobs {min(settings.jobs, len(folds))}"
    )
    click.echo(
        f"{settings.model} {settings.mode}: {len(folds)} LOSO folds, {len(di)} clips, train on {', '.join(settings.train_phases)}, "
        f"test on {', '.join(settings.test_phases)}, augmentation {augment}, input {settings.input_size}, {settings.epochs} epochs, "
        f"device {device}{' (bf16 autocast)' if settings.amp else ''}, {where}"
    )
    started = time.perf_counter()

    def progress(results, total):
        return tqdm(results, total=total, desc=f"train {settings.model}", unit="fold", disable=None)

    def epoch_progress(epochs, fold):  # shown when folds run in this process (jobs 1)
        return tqdm(epochs, desc=f"fold {fold}", unit="epoch", leave=False, disable=None)

    extra = {
        "dynamic_images": str(dynamic_images),
        "dynamic_images_fingerprint": str(di.attrs.get("fingerprint", "")),
        "device": str(device),
        "torch_version": torch.__version__,
    }
    run, results, timings = train_run(
        data,
        settings,
        out,
        dynamic_images_digest(di, phases),
        fresh=fresh,
        progress=progress,
        epoch_progress=epoch_progress,
        echo=click.echo,
        extra=extra,
        started=started,
        warn=lambda line: click.echo(line, err=True),
    )
    if curve:
        with atomic_output(curve) as curve_tmp:
            write_training_curve(curve_tmp, training_curve(results))
    correct = sum(r["true_label"] == r["pred_label"] for f in results for r in f.predictions)
    click.echo(
        f"{len(results)} folds, {run['n_samples']} predictions (pooled accuracy {correct / max(run['n_samples'], 1):.3f}) "
        f"in {timings['total_seconds']:.1f} s -> {out}"
    )
