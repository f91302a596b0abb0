"""`mer cache info` and `mer cache verify`: inspect and check HDF5 caches."""

from __future__ import annotations

import json
from collections import Counter

import click

from pipeline.atomic import atomic_output
from pipeline.errors import MerError
from pipeline.io.caches import ALIGNED_SCHEMA, aligned_clip_keys, open_cache, read_dynamic_images, verify


@click.group("cache")
def cache() -> None:
    """Inspect and verify aligned and dynamic-image caches."""


def _print_attrs(handle) -> None:
    for key in sorted(handle.attrs):
        value = handle.attrs[key]
        if key == "params":
            click.echo("params:")
            for line in json.dumps(json.loads(value), indent=2, sort_keys=True).splitlines():
                click.echo(f"  {line}")
        else:
            click.echo(f"{key}: {value}")


@cache.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
def info(file: str) -> None:
    """Print schema, params, provenance and contents of a cache."""
    with open_cache(file) as handle:
        _print_attrs(handle)
        if handle.attrs["schema"] == ALIGNED_SCHEMA:
            keys = aligned_clip_keys(handle)
            frames = sum(handle[s][c]["frames"].shape[0] for s, c in keys)
            shape = handle[keys[0][0]][keys[0][1]]["frames"].shape[1:] if keys else ()
            click.echo(f"clips: {len(keys)} from {len({s for s, _ in keys})} subjects, {frames} frames of {shape}")
            return
        labels = json.loads(handle.attrs["label_names"])
        label = handle["label"][()]
        subjects = handle["subject"].asstr()[()]
        click.echo(f"samples: {len(label)} from {len(set(subjects))} subjects")
        counts = Counter(label.tolist())
        click.echo("per class: " + ", ".join(f"{name} {counts[i]}" for i, name in enumerate(labels)))
        per_subject = Counter(subjects.tolist())
        click.echo("per subject: " + ", ".join(f"{s} {n}" for s, n in sorted(per_subject.items())))
        for phase in handle["images"]:
            click.echo(f"images/{phase}: {handle['images'][phase].shape} {handle['images'][phase].dtype}")
        sources = Counter(handle["apex_source"].asstr()[()].tolist())
        click.echo("apex source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))


@cache.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
def verify_command(file: str) -> None:
    """Check schema, shapes and stored checksums; exit non-zero when the file is damaged."""
    problems = verify(file)
    if problems:
        raise MerError(f"{file} failed verification:\n" + "\n".join(f"  - {p}" for p in problems))
    click.echo(f"{file}: OK")


@cache.command("preview")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG to write.")
@click.option("--count", type=int, default=6, show_default=True, help="Samples to show (spread over the classes).")
def preview(file: str, out: str, count: int) -> None:
    """Draw the full DI and the phase DIs of a few clips side by side (PNG)."""
    from pipeline.dynimg.preview import dynamic_image_sheet, pick_samples  # matplotlib only when drawing

    data = read_dynamic_images(file)
    if len(data) == 0:
        raise MerError(f"{file} holds no samples")
    figure = dynamic_image_sheet(data, pick_samples(data, max(1, count)))
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    click.echo(f"preview of {min(count, len(data))} clips -> {out}")
