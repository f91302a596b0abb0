"""Stage `demo_data`: synthetic CASME II / SAMM copies for demos, tests and benchmarks."""

from __future__ import annotations

import click
from tqdm import tqdm

from pipeline.atomic import atomic_output
from pipeline.demo.generate import generate
from pipeline.demo.presets import FORMAT_CHOICES, PRESET_NAMES
from stages.common import jobs_option, params_option, stage_settings


def _progress(results, total: int, dataset: str):
    return tqdm(results, total=total, desc=f"demo {dataset}", unit="clip", disable=None)


@click.command("demo-data")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write (replaced as a whole).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None, help="Size of the copies (default: params).")
@click.option(
    "--format", "fmt", type=click.Choice(FORMAT_CHOICES), default=None, help="Datasets to make (default: params)."
)
@click.option(
    "--seed", type=int, default=None, help="Random seed; the same seed gives identical files (default: params)."
)
@jobs_option
@params_option
def demo_data(
    out: str, preset: str | None, fmt: str | None, seed: int | None, jobs: int | None, params_file: str
) -> None:
    """Generate synthetic CASME II and SAMM copies."""
    params = stage_settings(params_file, "demo", preset=preset, format=fmt, seed=seed, jobs=jobs)
    with atomic_output(out, directory=True) as tmp:
        summary = generate(tmp, params.preset, params.format, params.seed, params.jobs, _progress)
    for dataset, counts in summary.items():
        click.echo(
            f"{dataset}: {counts['clips']} clips, {counts['frames']} frames, {counts['subjects']} subjects -> {out}/{dataset}"
        )
