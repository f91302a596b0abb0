"""Stage `dynimg`: full and phase dynamic images of every sample into the DI cache."""

from __future__ import annotations

import click
from tqdm import tqdm

from pipeline.dynimg.dataset import DynamicImageSettings, build_dynamic_images
from stages.common import jobs_option, params_option, stage_settings


@click.command("dynimg")
@click.option(
    "--aligned",
    multiple=True,
    required=True,
    help="Aligned cache from `mer align`; for a composite table (`mer combine`) one NAME=FILE per dataset.",
)
@click.option("--samples", type=click.Path(dir_okay=False), required=True, help="Samples table from `mer annotate`.")
@click.option(
    "--classes",
    default=None,
    help="Class preset whose label order the cache records (default: params, else the dataset format's preset, e.g. casme2-5, as annotate).",
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Dynamic-image cache to write (.h5).")
@jobs_option
@params_option
def dynimg(
    aligned: tuple[str, ...], samples: str, classes: str | None, out: str, jobs: int | None, params_file: str
) -> None:
    """Compute full, onset-apex and apex-offset dynamic images into an HDF5 cache."""
    params = stage_settings(params_file, "dynimg", jobs=jobs, classes=classes)
    settings = DynamicImageSettings.from_section(params)
    result = build_dynamic_images(
        aligned,
        samples,
        out,
        settings,
        params.record(),
        classes=params.classes,
        overrides=params.overrides,
        jobs=params.jobs,
        params_file=params_file,
        progress=lambda items, total: tqdm(items, total=total, desc="dynamic images", unit="clip", disable=None),
    )
    click.echo(f"{result.samples} clips x {len(settings.phases)} phases ({', '.join(settings.phases)}) -> {out}")
    click.echo("  per class: " + ", ".join(f"{name} {result.per_class[name]}" for name in result.label_names))
    click.echo("  apex: " + ", ".join(f"{source} {n}" for source, n in sorted(result.apex_sources.items())))
    if result.skipped:
        click.echo(
            f"  skipped {len(result.skipped)} clip(s) without an annotated apex (apex: annotated): "
            + ", ".join(result.skipped)
        )
    if result.outside:
        click.echo(
            f"  dropped {len(result.outside)} clip(s) whose phases reach beyond onset..offset (outside_clip: drop): "
            + ", ".join(result.outside[:10])
            + (", ..." if len(result.outside) > 10 else "")
        )
    described = {
        "short": f"shorter than min_phase_frames ({settings.min_phase_frames})",
        "duplicate": "equal to the full clip (apex on the onset or offset): the DI duplicates the full DI",
    }
    action = {
        "widen": {"short": "widened within the clip", "duplicate": "kept"},
        "drop": {"short": "dropped as training samples", "duplicate": "dropped as training samples"},
        "keep": {"short": "kept as they are", "duplicate": "kept"},
    }[settings.degenerate]
    for kind in ("short", "duplicate"):
        for name, clips in sorted(result.degenerate.get(kind, {}).items()):
            shown = ", ".join(clips[:10]) + (f" and {len(clips) - 10} more" if len(clips) > 10 else "")
            click.echo(
                f"  degenerate {name}: {len(clips)} clip(s) {described[kind]} "
                f"({action[kind]}; degenerate: {settings.degenerate}): {shown}"
            )
    for name, count in result.widened.items():
        if count and settings.degenerate == "widen":
            click.echo(
                f"  {count} clip(s) had a {name} phase shorter than {settings.min_phase_frames} frames: widened within the clip"
            )
    for name, count in result.single_frame.items():
        if count:
            click.echo(
                f"  warning: {count} clip(s) have a one-frame {name} phase even after widening "
                f"(clip shorter than min_phase_frames): no motion, the DI is the frame itself"
            )
