"""Stage `dynimg`: full and phase dynamic images of every sample into the DI cache."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import click
import h5py
import numpy as np
from tqdm import tqdm

from pipeline.atomic import atomic_output
from pipeline.datasets.presets import label_names_for
from pipeline.datasets.composite import aligned_caches
from pipeline.dynimg.rank_pooling import DynamicImageSettings, apply_overrides, clip_dynamic_images, phase_frames
from pipeline.errors import InputProblems, MerError
from pipeline.io.caches import ALIGNED_SCHEMA, DynamicImageWriter, open_cache
from pipeline.io.samples import read_samples
from pipeline.motion import estimate_apex
from pipeline.parallel import limit_native_threads, ordered_map
from stages.common import jobs_option, params_option, recorded_params, stage_params


@functools.lru_cache(maxsize=8)
def _aligned_handle(path: str) -> h5py.File:
    """One read-only handle per worker process, reused across the clips it is given."""
    return open_cache(path, ALIGNED_SCHEMA)


def _compute(aligned_path: str, sample: dict, settings: DynamicImageSettings):
    """DIs of one clip, or a message naming the clip when it cannot be computed."""
    limit_native_threads()
    key = f"{sample['subject']}/{sample['clip']}"
    handle = _aligned_handle(aligned_path)
    if key not in handle:
        return f"{key}: not in the aligned cache {aligned_path} (was the clip aligned?)"
    frames, numbers = handle[key]["frames"], handle[key]["frame_numbers"][()]  # frames are read block by block
    onset, apex, offset = sample["onset"], sample["apex"], sample["offset"]
    try:
        if settings.apex == "estimated" and sample["apex_source"] != "override":
            inside = np.flatnonzero((numbers >= onset) & (numbers <= offset))
            if len(inside) == 0:
                raise ValueError(f"no aligned frame between onset {onset} and offset {offset}")
            apex = int(numbers[inside[estimate_apex(frames[inside[0] : inside[-1] + 1])]])
        images, lengths = clip_dynamic_images(
            frames,
            numbers,
            onset,
            apex,
            offset,
            settings.phases,
            settings.variant,
            settings.size,
            settings.normalize == "per_channel",
            settings.min_phase_frames,
        )
    except ValueError as exc:
        return f"{key}: {exc}"
    return images, lengths, apex


def _fingerprint(samples_path: str, caches: dict[str, str], samples: list[dict], params: dict) -> str:
    """Hash of everything the DIs depend on: samples table, aligned frames used, params."""
    digest = hashlib.sha256(Path(samples_path).read_bytes())
    digest.update(json.dumps(params, sort_keys=True).encode())
    for sample in samples:
        handle = _aligned_handle(caches[sample["dataset"]])
        key = f"{sample['subject']}/{sample['clip']}/frames"
        digest.update(str(handle[key].attrs.get("sha256", "")).encode() if key in handle else b"-")
    return digest.hexdigest()


@click.command("dynimg")
@click.option(
    "--aligned",
    multiple=True,
    required=True,
    help="Aligned cache from `mer align`; for a composite table (`mer combine`) one NAME=FILE per dataset.",
)
@click.option("--samples", type=click.Path(dir_okay=False), required=True, help="Samples table from `mer annotate`.")
@click.option("--classes", default=None, help="Class preset whose label order the cache records (default: params).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Dynamic-image cache to write (.h5).")
@jobs_option
@params_option
def dynimg(
    aligned: tuple[str, ...], samples: str, classes: str | None, out: str, jobs: int | None, params_file: str
) -> None:
    """Compute full, onset-apex and apex-offset dynamic images into an HDF5 cache."""
    params = stage_params(params_file, "dynimg", jobs=jobs, classes=classes)
    try:
        settings = DynamicImageSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise MerError(f"{params_file}: invalid dynimg settings: {exc}") from exc
    rows = read_samples(samples)
    if not rows:
        raise MerError(f"{samples} holds no samples; check the annotate stage's summary")
    rows, problems = apply_overrides(rows, params.get("overrides"))
    if problems:
        raise InputProblems(f"{params_file}: dynimg.overrides cannot be applied", problems)
    skipped = [r for r in rows if settings.apex == "annotated" and r["apex_source"] == "imputed"]
    rows = [r for r in rows if r not in skipped]
    label_names = (
        label_names_for(params["classes"], rows[0]["dataset"])
        if params.get("classes")
        else sorted({r["label"] for r in rows})
    )
    unknown = sorted({r["label"] for r in rows} - set(label_names))
    if unknown:
        raise MerError(f"{samples}: labels {unknown} are not in class preset {params.get('classes')!r}")
    caches = {name: str(path) for name, path in aligned_caches(aligned, [r["dataset"] for r in rows]).items()}
    for path in caches.values():
        _aligned_handle(path)  # fail early, in this process, on a missing or wrong cache

    problems, short, widened = [], Counter(), Counter()
    results = ordered_map(
        _compute, ((caches[row["dataset"]], row, settings) for row in rows), int(params.get("jobs", 1))
    )
    # Each clip's DIs go to the file as they arrive (in table order): memory stays flat whatever the number of clips.
    with (
        atomic_output(out) as tmp,
        DynamicImageWriter(tmp, len(rows), settings.phases, label_names, recorded_params(params)) as writer,
    ):
        for row, result in zip(rows, tqdm(results, total=len(rows), desc="dynamic images", unit="clip", disable=None)):
            if isinstance(result, str):
                problems.append(result)
                continue
            images, lengths, apex = result
            if settings.apex == "estimated" and row["apex_source"] != "override":
                row["apex"], row["apex_source"] = apex, "estimated"
            if not problems:  # after a problem the file is discarded; keep going to report every bad clip
                writer.add(images)
            for name in images:
                start, end = phase_frames(settings.phases[name], row["onset"], row["apex"], row["offset"])
                widened[name] += lengths[name] > end - start + 1
                short[name] += lengths[name] == 1
        if problems:
            raise InputProblems(
                f"dynamic images failed for {len(problems)} of {len(rows)} clips; nothing was written", problems
            )
        columns = {
            field: [r[field] for r in rows]
            for field in ("dataset", "subject", "clip", "onset", "apex", "offset", "apex_source")
        }
        columns["sample_id"] = [f"{r['dataset']}/{r['subject']}/{r['clip']}" for r in rows]
        columns["label"] = [label_names.index(r["label"]) for r in rows]
        writer.finish(columns, {"fingerprint": _fingerprint(samples, caches, rows, recorded_params(params))})
    counts, sources = Counter(r["label"] for r in rows), Counter(r["apex_source"] for r in rows)
    click.echo(f"{len(rows)} clips x {len(settings.phases)} phases ({', '.join(settings.phases)}) -> {out}")
    click.echo("  per class: " + ", ".join(f"{name} {counts[name]}" for name in label_names))
    click.echo("  apex: " + ", ".join(f"{source} {n}" for source, n in sorted(sources.items())))
    if skipped:
        click.echo(
            f"  skipped {len(skipped)} clip(s) without an annotated apex (apex: annotated): "
            + ", ".join(f"{r['subject']}/{r['clip']}" for r in skipped)
        )
    for name, count in widened.items():
        if count:
            click.echo(
                f"  {count} clip(s) had a {name} phase shorter than {settings.min_phase_frames} frames: widened within the clip"
            )
    for name, count in short.items():
        if count:
            click.echo(
                f"  warning: {count} clip(s) have a one-frame {name} phase even after widening "
                f"(clip shorter than min_phase_frames): no motion, the DI is the frame itself"
            )
