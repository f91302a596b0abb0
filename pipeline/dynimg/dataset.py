"""Dynamic images of every sample of a samples table into the DI cache, from the aligned caches.

Settings come from the dynimg section of params.yaml (`DynamicImageSettings`). The apex policy
(`apex`): `annotated_or_estimated` uses the samples table's apex (annotated, or imputed by
annotate); `annotated` skips clips whose apex was imputed; `estimated` re-estimates every apex on
the aligned frames (peak of motion relative to the onset), except the ones set by an override.
Degenerate phases (`degenerate_phase`): a phase shorter than `min_phase_frames` frames, or one whose
frames equal the full clip's (the apex on the onset or the offset makes apex_offset or onset_apex
the whole clip, so its DI duplicates the full DI). `degenerate` chooses: `widen` (widen short phases
within the clip; duplicates stay), `drop` (the DI is stored but is no training sample: the cache's
`degenerate_phases` attribute lists its rows, which `mer train` leaves out), or `keep` (short phases
as they are). The summary and that attribute count and name the clips of each kind.
Adaptive anchors (`peak`, `mNN` in `phases`, pipeline/dynimg/phases.py) are placed per clip from
its aligned frames onset..offset (`motion_anchors`); the cache then records, per sample, each
anchor's frame (`motion_anchors/<name>`) and the frames every phase spans (`phase_windows/<phase>`).
Phase jitter (`jitter_draws` K > 0): per clip and phase other than the full one, K windows whose
start and end lie within `jitter_frames` of the phase's own, inside onset..offset and at least
min_phase_frames long, distinct while the range allows, drawn from (jitter_seed, sample id, phase)
(`jitter_windows`); their DIs go to `jitter/<phase>` (N,K,H,W,3), the windows to
`jitter/<phase>_frames` (N,K,2).
Workers compute each clip's DIs (and so does this process while the next clip in order is not
ready); this process writes them in table order as they arrive, so memory stays flat whatever the
number of clips and the file is the same whatever the number of jobs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.atomic import atomic_output, ensure_free_space
from pipeline.config import DynimgSection, section_problems
from pipeline.datasets.composite import aligned_caches
from pipeline.datasets.presets import default_label_names, label_names_for
from pipeline.dynimg.phases import (
    PhaseBound,
    apply_overrides,
    motion_anchor_names,
    outside_clip,
    phase_frames,
    widen_window,
)
from pipeline.dynimg.rank_pooling import FRAME_BLOCK, clip_dynamic_images
from pipeline.errors import InputProblems, MerError, SettingsError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA, VerifiedFrames
from pipeline.io.dynamic_image_cache import DynamicImageWriter, encode_image
from pipeline.io.hdf5 import array_sha256, open_cache
from pipeline.io.provenance import dynamic_images_fingerprint
from pipeline.io.samples import IMPUTED_APEX_SOURCES, read_samples, sample_ids
from pipeline.motion import estimate_apex, motion_anchors
from pipeline.parallel import Progress, limit_native_threads, no_progress, ordered_map

# A clip's DIs take a few ms (a 30-frame CASME II clip: ~1 ms of kernel, ~7 ms of gzip): clips go
# to the workers four at a time so that the pool's per-task cost does not eat the second core.
CLIPS_PER_TASK = 4


@dataclass(frozen=True)
class DynamicImageSettings:
    """The settings of the DIs themselves, from the validated dynimg section (`DynimgSection`)."""

    phases: dict[str, tuple[PhaseBound, PhaseBound]]
    variant: str
    normalize: str  # global | per_channel
    size: int | None  # None: the aligned frames' size
    apex: str  # one of APEX_SOURCES
    min_phase_frames: int
    outside_clip: str  # error | drop: samples whose phase anchors fall outside the clip
    degenerate: str = "widen"  # widen | drop | keep
    jitter_draws: int = 0  # K jittered DIs per clip and non-full phase (0: none)
    jitter_frames: int = 2  # bounds drawn within this many frames of the phase's
    jitter_seed: int = 0

    @property
    def min_frames(self) -> int:
        """The length phases are widened to (1 with `degenerate: keep`)."""
        return 1 if self.degenerate == "keep" else self.min_phase_frames

    @property
    def jitter_phases(self) -> list[str]:
        """The phases jittered: every phase but the full one, when jitter_draws > 0."""
        full = full_phase(self.phases)
        return [name for name in self.phases if name != full] if self.jitter_draws else []

    @classmethod
    def from_section(cls, section: DynimgSection) -> DynamicImageSettings:
        return cls(
            jitter_draws=section.jitter_draws,
            jitter_frames=section.jitter_frames,
            jitter_seed=section.jitter_seed,
            phases=section.parsed_phases(),
            variant=section.variant,
            normalize=section.normalize,
            size=section.size,
            apex=section.apex,
            min_phase_frames=section.min_phase_frames,
            outside_clip=section.outside_clip,
            degenerate=section.degenerate,
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
    degenerate: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    # kind (short | duplicate | dropped) -> phase -> sample ids (`degenerate_phase`)
    outside: list[str] = dataclasses.field(default_factory=list)  # clips dropped (outside_clip: drop)


def full_phase(phases: Mapping[str, tuple[PhaseBound, PhaseBound]]) -> str | None:
    """The phase spanning the whole clip: `full`, else the first one bounded [onset, offset]."""
    if "full" in phases:
        return "full"
    whole = (PhaseBound("onset"), PhaseBound("offset"))
    return next((name for name, bounds in phases.items() if bounds == whole), None)


def degenerate_phase(
    settings: DynamicImageSettings,
    name: str,
    onset: int,
    apex: int,
    offset: int,
    motion: Mapping[str, int] | None = None,
) -> str | None:
    """`short` (fewer than min_phase_frames frames before widening), `duplicate` (its frames, as
    computed, are the full clip's, so its DI is the full DI), or None."""
    full = full_phase(settings.phases)
    if name == full:
        return None
    start, end = phase_frames(settings.phases[name], onset, apex, offset, motion=motion)
    if end - start + 1 < settings.min_phase_frames:
        return "short"
    if full is not None:
        min_frames = settings.min_frames
        window = phase_frames(settings.phases[name], onset, apex, offset, min_frames, motion)
        if window == phase_frames(settings.phases[full], onset, apex, offset, min_frames, motion):
            return "duplicate"
    return None


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


def _clip_apex(aligned_path: str, sample: dict) -> int | str:
    """The apex estimated on the clip's aligned frames, or a message naming the clip (the whole
    clip is read, hashed and checked against its stored checksum first: `VerifiedFrames`)."""
    limit_native_threads()
    key = f"{sample['subject']}/{sample['clip']}"
    frames = VerifiedFrames(_aligned_handle(aligned_path), sample["subject"], sample["clip"], FRAME_BLOCK)
    try:
        apex = estimate_aligned_apex(frames, frames.frame_numbers, sample["onset"], sample["offset"])
    except ValueError as exc:
        return f"{key}: {exc}"
    return frames.problem() or apex


def _clip_motion(aligned_path: str, sample: dict, names: tuple[str, ...]) -> dict[str, int] | str:
    """The clip's motion anchors (frame numbers) on its aligned frames onset..offset, or a message
    naming the clip (the whole clip is read, hashed and checked against its stored checksum first: `VerifiedFrames`)."""
    limit_native_threads()
    key = f"{sample['subject']}/{sample['clip']}"
    frames = VerifiedFrames(_aligned_handle(aligned_path), sample["subject"], sample["clip"], FRAME_BLOCK)
    numbers = frames.frame_numbers
    inside = np.flatnonzero((numbers >= sample["onset"]) & (numbers <= sample["offset"]))
    if len(inside) == 0:
        return f"{key}: no aligned frame between onset {sample['onset']} and offset {sample['offset']}"
    found = motion_anchors(frames[inside[0] : inside[-1] + 1], names)
    return frames.problem() or {name: int(numbers[inside[0] + index]) for name, index in found.items()}


def _stable_seed(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def jitter_windows(
    window: tuple[int, int], onset: int, offset: int, draws: int, frames: int, min_frames: int, seed: int
) -> list[tuple[int, int]]:
    """`draws` windows (first, last frame) around `window`: each bound within `frames` frames of its
    own, inside onset..offset, at least `min_frames` long (or the whole clip when shorter); distinct
    from one another while the range holds enough windows (then repeated), drawn with `seed`."""
    start, end = window
    candidates = [
        (s, e)
        for s in range(max(onset, start - frames), min(offset, start + frames) + 1)
        for e in range(max(onset, end - frames), min(offset, end + frames) + 1)
        if e - s + 1 >= min(min_frames, offset - onset + 1)
    ] or [widen_window(start, end, onset, offset, min_frames)]
    rng = np.random.default_rng(seed)
    picked = list(rng.permutation(len(candidates))[:draws])
    while len(picked) < draws:
        picked.append(int(rng.integers(len(candidates))))
    return [candidates[int(i)] for i in picked]


def clip_jitter_windows(
    settings: DynamicImageSettings, sample_id: str, row: Mapping[str, Any]
) -> dict[str, list[tuple[int, int]]]:
    """Per jittered phase, the clip's `jitter_draws` windows (`jitter_windows`), seeded by
    (jitter_seed, sample id, phase): the same whatever the jobs or the other clips."""
    onset, apex, offset, motion = row["onset"], row["apex"], row["offset"], row.get("_motion")
    return {
        name: jitter_windows(
            phase_frames(settings.phases[name], onset, apex, offset, settings.min_frames, motion),
            onset,
            offset,
            settings.jitter_draws,
            settings.jitter_frames,
            settings.min_frames,
            _stable_seed(settings.jitter_seed, sample_id, name),
        )
        for name in settings.jitter_phases
    }


def _clip_images(aligned_path: str, sample: dict, settings: DynamicImageSettings, extra_windows=()):
    """DIs of one clip, the frames each phase spans, (with extra windows their DIs,) each phase's DI
    and each extra DI compressed as the cache stores it, and the sha256 stored with the clip's
    frames (for the cache's fingerprint); or a message naming the clip.

    The clip's frames are read block by block and hashed as they are read; the DIs are returned
    only when the digest equals the checksum stored with the frames (`VerifiedFrames`).
    """
    limit_native_threads()
    key = f"{sample['subject']}/{sample['clip']}"
    handle = _aligned_handle(aligned_path)
    if key not in handle:
        return f"{key}: not in the aligned cache {aligned_path} (was the clip aligned?)"
    shape = handle[key]["frames"].shape
    if settings.size is not None and settings.size > max(shape[1:3]):
        return (
            f"{key}: dynimg.size {settings.size} is larger than the aligned frames ({shape[2]}x{shape[1]} px): "
            "DIs are never enlarged; set dynimg.size to null (the aligned size) or at most that size"
        )
    frames = VerifiedFrames(handle, sample["subject"], sample["clip"], FRAME_BLOCK)
    try:
        computed = clip_dynamic_images(
            frames,
            frames.frame_numbers,
            sample["onset"],
            sample["apex"],
            sample["offset"],
            settings.phases,
            settings.variant,
            settings.size,
            settings.normalize == "per_channel",
            settings.min_frames,
            sample.get("_motion"),
            extra_windows,
        )
    except ValueError as exc:
        return f"{key}: {exc}"
    problem = frames.problem()
    if problem:
        return problem
    # compressed here, in the worker: the writer then only copies each image's stored chunk
    extra = computed[2] if extra_windows else []
    return (
        *computed,
        {phase: encode_image(image) for phase, image in computed[0].items()},
        [encode_image(image) for image in extra],
        str(frames.sha256 or ""),
    )


def table_problems(rows: list[dict], samples: str | Path) -> list[str]:
    """The samples table's own invariants, one message per broken row naming the file, line and clip:
    onset <= apex <= offset, n_frames = offset - onset + 1, no sample twice (same dataset, subject,
    clip and onset: several samples may share a clip folder, never an onset)."""
    problems, seen = [], {}
    for row in rows:
        where = f"{samples} line {row['_line']} ({row['subject']}/{row['clip']})"
        onset, apex, offset = row["onset"], row["apex"], row["offset"]
        if not onset <= apex <= offset:
            problems.append(
                f"{where}: onset {onset}, apex {apex}, offset {offset}: onset <= apex <= offset does not hold"
            )
        if row["n_frames"] != offset - onset + 1:
            problems.append(f"{where}: n_frames {row['n_frames']} but onset..offset spans {offset - onset + 1} frames")
        key = (row["dataset"], row["subject"], row["clip"], onset)
        if key in seen:
            problems.append(f"{where}: the same sample (clip and onset {onset}) as line {seen[key]}")
        seen.setdefault(key, row["_line"])
    return problems


def aligned_problems(rows: list[dict], samples: str | Path, caches: Mapping[str, str]) -> list[str]:
    """Rows whose clip or frames onset..offset are not in their aligned cache (or whose frame numbers
    do not match their stored checksum), naming the samples file, line and clip."""
    problems = []
    for row in rows:
        where = f"{samples} line {row['_line']} ({row['subject']}/{row['clip']})"
        key = f"{row['subject']}/{row['clip']}"
        cache = caches[row["dataset"]]
        dataset = _aligned_handle(cache).get(f"{key}/frame_numbers")  # one lookup: ~70 us each
        if dataset is None:
            problems.append(f"{where}: the clip is not in the aligned cache {cache} (was it aligned?)")
            continue
        numbers = dataset[()]
        if dataset.attrs.get("sha256") != array_sha256(numbers):
            problems.append(f"{cache}, clip {key}: frame_numbers do not match their stored sha256")
            continue
        missing = sorted(set(range(row["onset"], row["offset"] + 1)) - set(numbers.tolist()))
        if missing:
            problems.append(
                f"{where}: frames {missing[:5]}{'...' if len(missing) > 5 else ''} of onset..offset "
                f"{row['onset']}..{row['offset']} are not in the aligned cache {cache}"
            )
    return problems


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
    label order the cache records (default: the preset annotate uses for the table's dataset format,
    e.g. casme2-5, when it holds every label, else the labels sorted); `overrides`: per-clip
    onset / apex / offset corrections (params_file names where they come from in messages).
    Raises InputProblems listing every clip that fails, and writes nothing then.
    """
    rows = read_samples(samples)
    if not rows:
        raise MerError(f"{samples} holds no samples; check the annotate stage's summary")
    for number, row in enumerate(rows, start=2):
        row["_line"] = number  # the CSV line, for messages (the header is line 1)
    problems = table_problems(rows, samples)
    if problems:
        raise InputProblems(
            f"{samples} is not a valid samples table; nothing was written (re-run `mer annotate`)", problems
        )
    rows, problems = apply_overrides(rows, overrides)
    if problems:
        raise InputProblems(f"{params_file}: dynimg.overrides cannot be applied", problems)
    ids = sample_ids(rows)  # unique per sample: dataset/subject/clip, plus /onset where a folder holds several
    skipped = [i for i, r in zip(ids, rows) if settings.skips(r)]
    kept = [(i, r) for i, r in zip(ids, rows) if not settings.skips(r)]
    ids, rows = [i for i, _ in kept], [r for _, r in kept]
    if not rows:
        raise MerError(f"{samples}: every sample's apex was imputed, and dynimg.apex is 'annotated': nothing is left")
    datasets = [r["dataset"] for r in rows]
    labels = [r["label"] for r in rows]
    label_names = label_names_for(classes, datasets[0]) if classes else default_label_names(datasets, labels)
    unknown = [r for r in rows if r["label"] not in label_names]
    if unknown:
        raise InputProblems(
            f"{samples}: labels not in class preset {classes!r} {label_names}",
            [f"{samples} line {r['_line']} ({r['subject']}/{r['clip']}): label {r['label']!r}" for r in unknown],
        )
    caches = {name: str(path) for name, path in aligned_caches(aligned, [r["dataset"] for r in rows]).items()}
    for path in caches.values():
        _aligned_handle(path)  # fail early, in this process, on a missing or wrong cache
    problems = aligned_problems(rows, samples, caches)
    if problems:
        raise InputProblems(f"{samples}: clips or frames missing from the aligned cache; nothing was written", problems)

    estimated = [r for r in rows if settings.estimates_apex(r)]
    apexes = ordered_map(_clip_apex, ((caches[r["dataset"]], r) for r in estimated), jobs, batch=CLIPS_PER_TASK)
    for row, apex in zip(estimated, apexes):
        if isinstance(apex, str):
            problems.append(apex)
        else:
            row["apex"], row["apex_source"] = apex, "estimated"
    if problems:
        raise InputProblems(f"apex estimation failed for {len(problems)} clips; nothing was written", problems)
    anchor_names = tuple(motion_anchor_names(settings.phases))
    if anchor_names:
        found = ordered_map(
            _clip_motion, ((caches[r["dataset"]], r, anchor_names) for r in rows), jobs, batch=CLIPS_PER_TASK
        )
        for row, anchors in zip(rows, found):
            if isinstance(anchors, str):
                problems.append(anchors)
            else:
                row["_motion"] = anchors
        if problems:
            raise InputProblems(f"motion anchors failed for {len(problems)} clips; nothing was written", problems)
    outside = {
        k
        for k, r in enumerate(rows)
        if any(outside_clip(b, r["onset"], r["apex"], r["offset"], r.get("_motion")) for b in settings.phases.values())
    }
    dropped = [ids[k].split("/", 1)[1] for k in sorted(outside)]  # subject/clip (/onset)
    if outside and settings.outside_clip == "error":
        raise MerError(
            f"{params_file}: dynimg.phases "
            + ", ".join(f"{name} [{a}, {b}]" for name, (a, b) in settings.phases.items())
            + f" reach beyond onset..offset in {len(dropped)} of {len(rows)} clips ({', '.join(dropped[:5])}"
            + (", ..." if len(dropped) > 5 else "")
            + "): phases are never clamped; change the anchors, or set dynimg.outside_clip: drop to leave those clips out"
        )
    ids = [i for k, i in enumerate(ids) if k not in outside]
    rows = [r for k, r in enumerate(rows) if k not in outside]
    if not rows:
        raise MerError(f"{samples}: no sample left after dropping {len(dropped)} with phases outside the clip")

    # uncompressed size: an upper bound of the gzip-compressed images
    first = _aligned_handle(caches[rows[0]["dataset"]])[f"{rows[0]['subject']}/{rows[0]['clip']}/frames"]
    side = settings.size or max(first.shape[1:3])  # dynimg.size null: the aligned crop size
    image_bytes = side * side * 3
    per_clip = len(settings.phases) + settings.jitter_draws * len(settings.jitter_phases)
    ensure_free_space(out, len(rows) * per_clip * image_bytes, "the dynamic-image cache")
    widened, short = Counter(), Counter()
    degenerate: dict[str, dict[str, list[str]]] = {"short": {}, "duplicate": {}, "dropped": {}}
    dropped_rows: dict[str, list[int]] = {}
    frame_checksums: list[str] = []  # the sha256 stored with each sample's aligned frames, in order
    jitter = [clip_jitter_windows(settings, i, r) for i, r in zip(ids, rows)]
    flat = [[w for name in settings.jitter_phases for w in windows[name]] for windows in jitter]
    results = ordered_map(
        _clip_images,
        ((caches[row["dataset"]], row, settings, f) for row, f in zip(rows, flat)),
        jobs,
        batch=CLIPS_PER_TASK,
    )
    jitter_draws = {name: settings.jitter_draws for name in settings.jitter_phases}

    def per_phase(draws: list) -> dict[str, list]:
        """A clip's extra windows' items (DIs or their chunks), listed as `flat` lists them, by jittered phase."""
        remaining = iter(draws)
        return {name: [next(remaining) for _ in range(k)] for name, k in jitter_draws.items()}

    with (
        atomic_output(out) as tmp,
        DynamicImageWriter(tmp, len(rows), settings.phases, label_names, record, jitter=jitter_draws) as writer,
    ):
        for index, (row, result) in enumerate(zip(rows, progress(results, len(rows)))):
            if isinstance(result, str):
                problems.append(result)
                continue
            images, lengths, *extra, encoded, encoded_extra, frames_sha256 = result
            frame_checksums.append(frames_sha256)
            if not problems:  # after a problem the file is discarded; keep going to report every bad clip
                writer.add(images, per_phase(extra[0] if extra else []), encoded, per_phase(encoded_extra))
            motion = row.get("_motion")
            for name in images:
                start, end = phase_frames(
                    settings.phases[name], row["onset"], row["apex"], row["offset"], motion=motion
                )
                widened[name] += lengths[name] > end - start + 1
                short[name] += lengths[name] == 1
                kind = degenerate_phase(settings, name, row["onset"], row["apex"], row["offset"], motion)
                if kind:
                    degenerate[kind].setdefault(name, []).append(ids[index])
                    if settings.degenerate == "drop":
                        degenerate["dropped"].setdefault(name, []).append(ids[index])
                        dropped_rows.setdefault(name, []).append(index)
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
        fingerprint = dynamic_images_fingerprint(samples, effective, frame_checksums)
        record_degenerate = {
            "policy": settings.degenerate,  # min_phase_frames: in the params when it widened a phase
            **{kind: {p: len(v) for p, v in by_phase.items()} for kind, by_phase in degenerate.items()},
            "clips": degenerate,
            "dropped_rows": dropped_rows,
        }
        attrs: dict[str, Any] = {"fingerprint": fingerprint, "degenerate_phases": json.dumps(record_degenerate)}
        arrays: dict[str, np.ndarray] = {}
        if anchor_names:  # only then, so that caches of annotated phases keep their bytes
            for name in anchor_names:
                arrays[f"motion_anchors/{name}"] = np.array([r["_motion"][name] for r in rows], np.int64)
            for name, bounds in settings.phases.items():
                arrays[f"phase_windows/{name}"] = np.array(
                    [
                        phase_frames(bounds, r["onset"], r["apex"], r["offset"], settings.min_frames, r["_motion"])
                        for r in rows
                    ],
                    np.int64,
                ).reshape(len(rows), 2)
            attrs["motion_anchors"] = json.dumps(
                {"anchors": list(anchor_names), "source": "aligned frames onset..offset (pipeline/motion.py)"}
            )
        if jitter_draws:
            for name in settings.jitter_phases:
                arrays[f"jitter/{name}_frames"] = np.array([j[name] for j in jitter], np.int64).reshape(
                    len(rows), settings.jitter_draws, 2
                )
            attrs["jitter"] = json.dumps(
                {
                    "draws": settings.jitter_draws,
                    "frames": settings.jitter_frames,
                    "seed": settings.jitter_seed,
                    "phases": settings.jitter_phases,
                }
            )
        if settings.outside_clip == "drop":  # only then, so that caches made without the setting keep their bytes
            attrs["outside_clip_dropped"] = len(outside)
        writer.finish(columns, attrs, arrays, params=effective)
    return DynamicImagesResult(
        samples=len(rows),
        label_names=label_names,
        per_class=Counter(r["label"] for r in rows),
        apex_sources=Counter(r["apex_source"] for r in rows),
        skipped=[i.split("/", 1)[1] for i in skipped],
        widened=widened,
        single_frame=short,
        degenerate=degenerate,
        outside=dropped,
    )
