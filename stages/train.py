"""Stage `train`: leave-one-subject-out training on a dynamic-image cache (pipeline/train/run.py).

Writes the run folder `--out`: per fold `folds/<fold>/`, and run.json, predictions.csv,
training_curve.csv and timings.json (or `--timings FILE` outside it). An interrupted run resumes from
the folds finished in `<out parent>/.<out name>.partial/` when its settings, DI cache and code are
unchanged; a finished run with the same settings, DIs of the phases it reads and code is kept.
"""

from __future__ import annotations

import click
from tqdm import tqdm

from pipeline.train.models import PAPER_MODELS
from pipeline.train.run import train_cache
from pipeline.train.settings import BACKENDS, MODES, resolve_train_settings, weights_key
from stages.common import jobs_option, params_option, stage_params


@click.command("train")
@click.option("--dynamic-images", type=click.Path(dir_okay=False), required=True, help="DI cache from `mer dynimg`.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Run folder to write (replaced as a whole when every fold is done). Until then finished folds are kept in "
    "the work folder .OUT.partial beside it, and a rerun with the same settings and cache resumes from them.",
)
@click.option(
    "--model", help=f"'learnet' or a timm model name; the paper's set: {', '.join(PAPER_MODELS)} (default: params)."
)
@click.option(
    "--mode", type=click.Choice(list(MODES)), help="Training phases and augmentation preset (default: params)."
)
@click.option("--epochs", type=int, help="Epochs per fold (default: params).")
@click.option(
    "--seed",
    type=int,
    help="Training seed; folds are seeded from (seed, subject) (default: params; dvc.yaml: experiment.seeds).",
)
@click.option(
    "--backend", type=click.Choice(BACKENDS), help="Where folds run: loky (this machine) or dask (default: params)."
)
@click.option(
    "--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: params; none: a local cluster)."
)
@click.option(
    "--cpu-kernels",
    type=click.Choice(["portable", "native"]),
    help="CPU kernels: portable gives the same bytes on any x86-64 processor, native is faster (default: params).",
)
@click.option(
    "--curve",
    type=click.Path(dir_okay=False),
    help="Also write the run's training curve (epoch, mean loss and training accuracy over folds) to this CSV, "
    "e.g. for a `plots:` entry of dvc.yaml outside the run folder.",
)
@click.option(
    "--timings",
    type=click.Path(dir_okay=False),
    help="Write timings.json (seconds, cores, jobs: the one file that differs between identical runs) here "
    "instead of inside the run folder, e.g. outside the folder DVC tracks (default: OUT/timings.json).",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Train every fold: discard folds finished by an interrupted run (.OUT.partial), and retrain even when "
    "OUT was trained with the same settings, DIs and code.",
)
@jobs_option
@params_option
def train(
    dynamic_images: str, out: str, curve: str | None, timings: str | None, fresh: bool, params_file: str, **options
) -> None:
    """Train one model per LOSO fold and write checkpoints and predictions."""
    params = stage_params(params_file)
    settings = resolve_train_settings(params, **options)  # options > params models.NAME > params train

    def progress(results, total):
        return tqdm(results, total=total, desc=f"train {settings.model}", unit="fold", disable=None)

    def epoch_progress(epochs, fold):  # shown when folds run in this process (jobs 1)
        return tqdm(epochs, desc=f"fold {fold}", unit="epoch", leave=False, disable=None)

    run, results, timing = train_cache(
        dynamic_images,
        out,
        settings,
        fresh=fresh,
        curve=curve,
        timings=timings,
        weights_key=weights_key(params, settings.model),
        echo=click.echo,
        warn=lambda line: click.echo(line, err=True),
        progress=progress,
        epoch_progress=epoch_progress,
    )
    correct = sum(r["true_label"] == r["pred_label"] for f in results for r in f.predictions)
    click.echo(
        f"{len(results)} folds, {run['n_samples']} predictions (pooled accuracy {correct / max(run['n_samples'], 1):.3f}) "
        f"in {timing['total_seconds']:.1f} s -> {out}"
    )
