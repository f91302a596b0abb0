"""The plan of one synthetic dataset: every subject, clip, frame range and sheet row, decided from the seed."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.demo.face import face_found, render_subject
from pipeline.demo.looks import SubjectLook, draw_look
from pipeline.demo.patterns import EMOTION_PATTERNS
from pipeline.demo.presets import (
    ACTION_UNITS,
    CASME2_ROOT,
    FORMATS,
    PRESET_NAMES,
    PRESETS,
    SAMM_NOTES,
    SAMM_ROOT,
    SAMM_SUBJECTS,
)


def _code(value: object) -> int:
    return zlib.crc32(str(value).encode("utf-8"))


def derived_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (e.g. dataset, subject, clip)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(_code(k) for k in keys)]))


@dataclass(frozen=True)
class ClipPlan:
    """One clip: where its frames go, what they show and what the sheet says about it."""

    dataset: str
    subject: str  # normalized: sub01 / 006
    subject_number: int
    clip: str
    emotion: str  # as the sheet writes it (casme2 lower-case, SAMM capitalised)
    pattern: str
    first_frame: int  # the onset's frame number
    n_frames: int
    apex_index: int  # apex position, 0 = onset
    apex_missing: bool  # the sheet leaves the apex uncoded (`/` or -1)
    action_units: int | str
    look: SubjectLook
    quality: int
    extra: tuple[tuple[str, object], ...] = ()  # sheet-only cells (SAMM inducement, subject style, notes)

    @property
    def onset(self) -> int:
        return self.first_frame

    @property
    def apex(self) -> int:
        return self.first_frame + self.apex_index

    @property
    def offset(self) -> int:
        return self.first_frame + self.n_frames - 1

    @property
    def frame_numbers(self) -> range:
        return range(self.onset, self.offset + 1)

    def folder(self) -> str:
        """The clip folder relative to the dataset folder."""
        if self.dataset == "casme2":
            return f"{CASME2_ROOT}/{self.subject}/{self.clip}"
        return f"{SAMM_ROOT}/{self.subject}/{self.clip}"

    def frame_name(self, number: int) -> str:
        if self.dataset == "casme2":
            return f"img{number}.jpg"
        return f"{self.subject}_{number:05d}.jpg"


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset's clips, and the order of their rows in the coding sheet."""

    dataset: str
    preset: str
    seed: int
    clips: tuple[ClipPlan, ...]  # in folder order (subject, clip)
    sheet_order: tuple[int, ...]  # clip indices in spreadsheet row order


def _clip_names(rng: np.random.Generator, dataset: str, subject_number: int, n: int) -> list[str]:
    names: list[str] = []
    if dataset == "casme2":
        used: set[str] = set()
        while len(names) < n:
            stem = f"EP{int(rng.integers(1, 20)):02d}_{int(rng.integers(1, 14)):02d}"
            suffix = "f" if rng.random() < 0.35 else ""
            if stem not in used:
                used.add(stem)
                names.append(stem + suffix)
    else:
        counts: dict[int, int] = {}
        for _ in range(n):
            inducement = int(rng.integers(1, 8))
            counts[inducement] = counts.get(inducement, 0) + 1
            names.append(f"{subject_number:03d}_{inducement}_{counts[inducement]}")
    return names


def _ensure_mixed(values: list, predicate_a: Callable, predicate_b: Callable, fix_a, fix_b) -> None:
    """Make sure at least one value satisfies each predicate (when there are two values or more)."""
    if len(values) < 2:
        return
    if not any(predicate_a(v) for v in values):
        values[0] = fix_a(values[0])
    if not any(predicate_b(v) for v in values):
        values[-1] = fix_b(values[-1])


def build_plan(dataset: str, preset: str, seed: int, check_faces: bool = True) -> DatasetPlan:
    """Decide every subject, clip, frame range and sheet row of one synthetic dataset.

    With `check_faces`, each subject's neutral image is rendered and dlib must find its face;
    a subject whose look defeats the detector is drawn again (deterministically).
    """
    if dataset not in FORMATS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {FORMATS}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESET_NAMES}")
    spec = PRESETS[preset][dataset]
    rng = derived_rng(seed, dataset, "plan")
    numbers = list(range(1, spec.subjects + 1)) if dataset == "casme2" else list(SAMM_SUBJECTS[: spec.subjects])
    if len(numbers) < spec.subjects:
        raise ValueError(f"{dataset} has at most {len(numbers)} subjects")
    subjects = [f"sub{n:02d}" if dataset == "casme2" else f"{n:03d}" for n in numbers]

    # Emotions dealt to subjects round-robin, so every subject sees every class when counts allow.
    dealt: list[list[str]] = [[] for _ in subjects]
    position = 0
    for emotion, count in spec.counts:
        for _ in range(count):
            dealt[position % len(subjects)].append(emotion)
            position += 1

    looks: dict[str, SubjectLook] = {}
    for subject in subjects:
        for attempt in range(25):
            look = draw_look(derived_rng(seed, dataset, subject, "look", attempt), dataset, spec)
            if not check_faces:
                break
            image, landmarks = render_subject(look)
            if face_found(image, landmarks):
                break
        else:
            raise RuntimeError(f"no subject look for {dataset} {subject} that dlib detects")
        looks[subject] = look

    drafts = []
    for subject, number, emotions in zip(subjects, numbers, dealt):
        order = rng.permutation(len(emotions))
        names = _clip_names(rng, dataset, number, len(emotions))
        for name, k in zip(names, order):
            emotion = emotions[k]
            n_frames = int(rng.integers(spec.frames[0], spec.frames[1] + 1))
            apex_index = int(np.clip(round(rng.uniform(0.25, 0.7) * (n_frames - 1)), 2, n_frames - 3))
            first = int(rng.integers(1, 300)) if dataset == "casme2" else int(rng.integers(100, 9000))
            units = ACTION_UNITS[emotion.lower()]
            extra: dict[str, object] = {}
            if dataset == "samm":
                extra = {
                    "inducement": int(name.split("_")[1]),
                    "subject_as_text": bool(rng.random() < 0.5),
                    "notes": str(SAMM_NOTES[int(rng.integers(len(SAMM_NOTES)))]),
                }
            drafts.append(
                dict(
                    dataset=dataset, subject=subject, subject_number=number, clip=name, emotion=emotion,
                    pattern=EMOTION_PATTERNS[dataset][emotion.lower()], first_frame=first, n_frames=n_frames,
                    apex_index=apex_index, apex_missing=False, action_units=units[int(rng.integers(len(units)))],
                    look=looks[subject], quality=spec.quality, extra=extra,
                )
            )  # fmt: skip
    drafts.sort(key=lambda d: (d["subject"], d["clip"]))

    # About 10 % of the apexes are left uncoded in the sheet, at least one.
    n_missing = max(1, round(0.1 * len(drafts)))
    for index in rng.choice(len(drafts), size=n_missing, replace=False):
        drafts[int(index)]["apex_missing"] = True
    # Both integer and text action-unit cells occur, and SAMM subjects both as text and as numbers.
    units = [d["action_units"] for d in drafts]
    _ensure_mixed(units, lambda v: isinstance(v, int), lambda v: isinstance(v, str), lambda v: 12, lambda v: f"{v}+L10")
    for d, value in zip(drafts, units):
        d["action_units"] = value
    if dataset == "samm":
        styles = [d["extra"]["subject_as_text"] for d in drafts]
        _ensure_mixed(styles, bool, lambda v: not v, lambda v: True, lambda v: False)
        for d, style in zip(drafts, styles):
            d["extra"]["subject_as_text"] = style

    clips = tuple(ClipPlan(**{**d, "extra": tuple(sorted(d["extra"].items()))}) for d in drafts)
    # Sheet rows roughly in folder order but shuffled a little: readers must match by (subject, clip).
    keys = np.arange(len(clips)) + rng.uniform(0, 4, size=len(clips))
    order = [int(i) for i in np.argsort(keys, kind="stable")]
    if len(order) > 1 and order == sorted(order):
        order[0], order[1] = order[1], order[0]
    return DatasetPlan(dataset, preset, int(seed), clips, tuple(order))
