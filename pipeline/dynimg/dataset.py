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
from pipeline.config import DynimgSection, section_problems
from pipeline.datasets.composite import aligned_caches
from pipeline.datasets.presets import default_label_names, label_names_for
from pipeline.dynimg.phases import PhaseBound, apply_overrides, phase_frames
from pipeline.dynimg.rank_pooling import clip_dynamic_images
from pipeline.errors import InputProblems, MerError, SettingsError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA
from pipeline.io.dynamic_image_cache import DynamicImageWriter
from pipeline.io.hdf5 import open_cache
from pipeline.io.provenance import dynamic_images_fingerprint
from pipeline.io.samples import IMPUTED_APEX_SOURCES, read_samples, sample_ids
from pipeline.motion import estimate_apex
from pipeline.parallel import Progress, limit_native_threads, no_progress, ordered_map


@dataclass(frozen=True)
class DynamicImageSettings:
    """The settings of the DIs themselves, from the validated dynimg section (`DynimgSection`)."""

    phases: dict[str, tuple[PhaseBound, PhaseBound]]
    variant: str
    normalize: str  # global | per_channel
    size: int
    apex: str  # one of APEX_SOURCES
    min_phase_frames: int

    @classmethod
    def from_section(cls, section: DynimgSection) -> DynamicImageSettings:
        return cls(
            phases=section.parsed_phases(),
            variant=section.variant,
            normalize=section.normalize,
            size=section.size,
            apex=section.apex,
            min_phase_frames=section.min_phase_frames,
        )

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> DynamicImageSettings:
        """From a dynimg params section; SettingsError (a ValueError) names every bad key."""
        section, problems = section_problems("dynimg", params)
        if problems:
            raise SettingsError("invalid dynimg settings", problems)
        return cls.from_section(section)

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
    params stored in the cache and hashed into its fingerprint; `classes`: the class preset whose
    label order the cache records (default: the preset annotate uses for the table's dataset format,
    e.g. casme2-5, when it holds every label, else the labels sorted); `overrides`: per-clip
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
    labels = [r["label"] for r in rows]
    datasets = [r["dataset"] for r in rows]
    label_names = label_names_for(classes, datasets[0]) if classes else default_label_names(datasets, labels)
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
        fingerprint = dynamic_images_fingerprint(samples, dict(record), _frame_checksums(caches, rows))
        writer.finish(columns, {"fingerprint": fingerprint})
    return DynamicImagesResult(
        samples=len(rows),
        label_names=label_names,
        per_class=Counter(r["label"] for r in rows),
        apex_sources=Counter(r["apex_source"] for r in rows),
        skipped=[i.split("/", 1)[1] for i in skipped],
        widened=widened,
        single_frame=short,
    )
