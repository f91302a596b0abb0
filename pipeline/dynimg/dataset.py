"""Dynamic images of every sample of a samples table into the DI cache, from the aligned caches.

Settings come from the dynimg section of params.yaml (`DynamicImageSettings`). The apex policy
(`apex`): `annotated_or_estimated` uses the samples table's apex (annotated, or imputed by
annotate); `annotated` skips clips whose apex was imputed; `estimated` re-estimates every apex on
the aligned frames (peak of motion relative to the onset), except the ones set by an override.
Workers compute each clip's DIs; this process writes them in table order as they arrive, so memory
stays flat whatever the number of clips and the file is the same whatever the number of jobs.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.atomic import atomic_output
from pipeline.datasets.composite import aligned_caches
from pipeline.datasets.presets import label_names_for
from pipeline.dynimg.phases import apply_overrides, parse_phases, phase_frames
from pipeline.dynimg.rank_pooling import VARIANTS, clip_dynamic_images
from pipeline.errors import InputProblems, MerError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA
from pipeline.io.dynamic_image_cache import DynamicImageWriter
from pipeline.io.hdf5 import open_cache
from pipeline.io.provenance import dynamic_images_fingerprint
from pipeline.io.samples import IMPUTED_APEX_SOURCES, read_samples, sample_ids
from pipeline.motion import estimate_apex
from pipeline.parallel import Progress, limit_native_threads, no_progress, ordered_map

APEX_SOURCES = ("annotated_or_estimated", "annotated", "estimated")


@dataclass(frozen=True)
class DynamicImageSettings:
    """The dynimg section of params.yaml, validated."""

    phases: dict
    variant: str = "harmonic"
    normalize: str = "global"  # global | per_channel
    size: int = 112
    apex: str = "annotated_or_estimated"
    min_phase_frames: int = 2

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> DynamicImageSettings:
        settings = cls(
            phases=parse_phases(params.get("phases")),  # type: ignore[arg-type]
            variant=str(params.get("variant", "harmonic")),
            normalize=str(params.get("normalize", "global")),
            size=int(params.get("size", 112)),  # type: ignore[arg-type]
            apex=str(params.get("apex", "annotated_or_estimated")),
            min_phase_frames=int(params.get("min_phase_frames", 2)),  # type: ignore[arg-type]
        )
        if settings.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {settings.variant!r}")
        if settings.normalize not in ("global", "per_channel"):
            raise ValueError(f"normalize must be global or per_channel, got {settings.normalize!r}")
        if settings.apex not in APEX_SOURCES:
            raise ValueError(f"apex must be one of {APEX_SOURCES}, got {settings.apex!r}")
        if settings.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {settings.size}")
        if settings.min_phase_frames < 1:
            raise ValueError(f"min_phase_frames must be at least 1, got {settings.min_phase_frames}")
        return settings

    def estimates_apex(self, sample: Mapping[str, Any]) -> bool:
        """Whether the sample's apex is estimated on the aligned frames (an override always stands)."""
        return self.apex == "estimated" and sample["apex_source"] != "override"

    def skips(self, sample: Mapping[str, Any]) -> bool:
        """Whether the sample is left out: `apex: annotated` and an apex imputed by annotate (the sheet
        coded none, or one outside the clip)."""
        return self.apex == "annotated" and sample["apex_source"] in IMPUTED_APEX_SOURCES


@dataclass
class DynamicImagesResult:
    """What a dynimg run wrote, for the stage to report."""

    samples: int
    label_names: list[str]
    per_class: Counter  # label name -> samples
    apex_sources: Counter  # apex_source -> samples
    skipped: list[str]  # subject/clip (/onset) of the samples left out by the apex policy
    widened: Counter  # phase -> clips whose phase was widened to min_phase_frames
    single_frame: Counter  # phase -> clips whose phase still spans one frame


@functools.lru_cache(maxsize=8)
def _aligned_handle(path: str) -> h5py.File:
    """One read-only handle per worker process, reused across the clips it is given."""
    return open_cache(path, ALIGNED_SCHEMA)


def estimate_aligned_apex(frames: Any, numbers: np.ndarray, onset: int, offset: int) -> int:
    """Frame number of peak motion relative to the onset, over the aligned frames onset..offset."""
    inside = np.flatnonzero((numbers >= onset) & (numbers <= offset))
    if len(inside) == 0:
        raise ValueError(f"no aligned frame between onset {onset} and offset {offset}")
    return int(numbers[inside[estimate_apex(frames[inside[0] : inside[-1] + 1])]])


def _clip_images(aligned_path: str, sample: dict, settings: DynamicImageSettings):
    """DIs of one clip, the frames each phase spans and the apex used, or a message naming the clip."""
    limit_native_threads()
    key = f"{sample['subject']}/{sample['clip']}"
    handle = _aligned_handle(aligned_path)
    if key not in handle:
        return f"{key}: not in the aligned cache {aligned_path} (was the clip aligned?)"
    frames, numbers = handle[key]["frames"], handle[key]["frame_numbers"][()]  # frames are read block by block
    onset, apex, offset = sample["onset"], sample["apex"], sample["offset"]
    try:
        if settings.estimates_apex(sample):
            apex = estimate_aligned_apex(frames, numbers, onset, offset)
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


def _frame_checksums(caches: Mapping[str, str], samples: list[dict]):
    """The stored checksum of each sample's aligned frames, "-" for a clip absent from its cache."""
    for sample in samples:
        handle = _aligned_handle(caches[sample["dataset"]])
        key = f"{sample['subject']}/{sample['clip']}/frames"
        yield str(handle[key].attrs.get("sha256", "")) if key in handle else "-"


def effective_params(record: Mapping[str, Any], widened: Mapping[str, int]) -> dict[str, Any]:
    """The params recorded in the cache and hashed into its fingerprint: `record` without a
    `min_phase_frames` that widened no phase of any clip. A setting that changed no byte of the images
    then leaves the whole file byte-identical, so DVC reruns nothing downstream."""
    effective = dict(record)
    if not any(widened.values()):
        effective.pop("min_phase_frames", None)
    return effective


def build_dynamic_images(
    aligned: Sequence[str],
    samples: str | Path,
    out: str | Path,
    settings: DynamicImageSettings,
    record: Mapping[str, Any],
    *,
    classes: str | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    jobs: int = 1,
    params_file: str | Path = "params.yaml",
    progress: Progress = no_progress,
) -> DynamicImagesResult:
    """Compute every sample's phase DIs into the DI cache `out`.

    `aligned`: one aligned cache, or NAME=FILE per dataset of a composite table; `record`: the
    params stored in the cache and hashed into its fingerprint (those that had an effect:
    `effective_params`); `classes`: the class preset whose
    label order the cache records (default: the labels present, sorted); `overrides`: per-clip
    onset / apex / offset corrections (params_file names where they come from in messages).
    Raises InputProblems listing every clip that fails, and writes nothing then.
    """
    rows = read_samples(samples)
    if not rows:
        raise MerError(f"{samples} holds no samples; check the annotate stage's summary")
    rows, problems = apply_overrides(rows, overrides)
    if problems:
        raise InputProblems(f"{params_file}: dynimg.overrides cannot be applied", problems)
    ids = sample_ids(rows)  # unique per sample: dataset/subject/clip, plus /onset where a folder holds several
    skipped = [i for i, r in zip(ids, rows) if settings.skips(r)]
    kept = [(i, r) for i, r in zip(ids, rows) if not settings.skips(r)]
    ids, rows = [i for i, _ in kept], [r for _, r in kept]
    if not rows:
        raise MerError(f"{samples}: every sample's apex was imputed, and dynimg.apex is 'annotated': nothing is left")
    label_names = label_names_for(classes, rows[0]["dataset"]) if classes else sorted({r["label"] for r in rows})
    unknown = sorted({r["label"] for r in rows} - set(label_names))
    if unknown:
        raise MerError(f"{samples}: labels {unknown} are not in class preset {classes!r}")
    caches = {name: str(path) for name, path in aligned_caches(aligned, [r["dataset"] for r in rows]).items()}
    for path in caches.values():
        _aligned_handle(path)  # fail early, in this process, on a missing or wrong cache

    problems, short, widened = [], Counter(), Counter()
    results = ordered_map(_clip_images, ((caches[row["dataset"]], row, settings) for row in rows), jobs)
    with atomic_output(out) as tmp, DynamicImageWriter(tmp, len(rows), settings.phases, label_names, record) as writer:
        for row, result in zip(rows, progress(results, len(rows))):
            if isinstance(result, str):
                problems.append(result)
                continue
            images, lengths, apex = result
            if settings.estimates_apex(row):
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
        columns["sample_id"] = ids
        columns["label"] = [label_names.index(r["label"]) for r in rows]
        effective = effective_params(record, widened)
        fingerprint = dynamic_images_fingerprint(samples, effective, _frame_checksums(caches, rows))
        writer.finish(columns, {"fingerprint": fingerprint}, params=effective)
    return DynamicImagesResult(
        samples=len(rows),
        label_names=label_names,
        per_class=Counter(r["label"] for r in rows),
        apex_sources=Counter(r["apex_source"] for r in rows),
        skipped=[i.split("/", 1)[1] for i in skipped],
        widened=widened,
        single_frame=short,
    )
