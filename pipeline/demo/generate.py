"""Synthetic CASME II and SAMM copies made from one public-domain portrait.

The real datasets cannot be redistributed, so the demo pipeline, the tests and the benchmarks run on
copies that have the real folder layouts and coding spreadsheets (DESIGN.md section 4) and that hold
learnable micro-expressions:

- several "subjects" are made from the bundled portrait (NASA, public domain): the head is cut out
  with a soft mask, scaled, rotated, mirrored, gently reshaped, re-lit and put on a plain or
  gradient background;
- each clip warps that subject's face smoothly around its 68 landmarks with a few pixels of
  displacement, one facial-action pattern per emotion class, scaled over time by an intensity curve
  that rises from the onset to the apex and decays towards the offset;
- sensor noise and JPEG compression are added, and the coding spreadsheets carry the quirks of the
  real ones (missing apexes written `/` or `-1`, mixed integer and text cells, preamble rows).

The module has four parts: presets and patterns; planning (everything decided from the seed before
any pixel is drawn); synthesis (pure functions returning arrays); writing (the only part that
touches disk). Every clip draws its random numbers from (seed, dataset, subject, clip), so the
output does not depend on the number of parallel jobs, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

# ----------------------------------------------------------------------------------------------
# 1. Presets and facial-action patterns
# ----------------------------------------------------------------------------------------------

FORMATS = ("casme2", "samm")
FORMAT_CHOICES = ("casme2", "samm", "both")

CASME2_ROOT = "CASME2_RAW_selected"
CASME2_CODING = "CASME2-coding-20140508.xlsx"
SAMM_ROOT = "SAMM"
SAMM_CODING = "SAMM_Micro_FACS_Codes_v2.xlsx"
GROUND_TRUTH = "ground_truth.csv"

CASME2_HEADER = (
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
)
SAMM_HEADER = (
    "Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration", "Micro",
    "Action Units", "Estimated Emotion", "Objective Classes", "Notes",
)  # fmt: skip
SAMM_HEADER_ROW = 14  # spreadsheet row (1-based) of the SAMM header; 13 preamble rows come before it
GROUND_TRUTH_COLUMNS = ("subject", "clip", "onset", "apex", "offset", "emotion", "pattern")

# SAMM participants who show micro-expressions (006..037 without 008, 027 and 029).
SAMM_SUBJECTS = tuple(n for n in range(6, 38) if n not in (8, 27, 29))


@dataclass(frozen=True)
class DatasetPreset:
    """How much of one dataset to synthesize."""

    subjects: int
    counts: tuple[tuple[str, int], ...]  # (emotion as the sheet writes it, number of clips)
    frames: tuple[int, int]  # fewest and most frames per clip (inclusive)
    size: tuple[int, int]  # frame (width, height)
    quality: int = 90  # JPEG quality

    @property
    def clips(self) -> int:
        return sum(count for _, count in self.counts)


def _each(emotions: Iterable[str], count: int) -> tuple[tuple[str, int], ...]:
    return tuple((emotion, count) for emotion in emotions)


_CASME2_5 = ("happiness", "disgust", "repression", "surprise", "others")
_SAMM_5 = ("Anger", "Contempt", "Happiness", "Surprise", "Other")

PRESETS: dict[str, dict[str, DatasetPreset]] = {
    # For tests: a few seconds. One clip per 5-class emotion per subject, and one fear clip that the
    # casme2-5 class preset drops.
    "tiny": {
        "casme2": DatasetPreset(3, _each(_CASME2_5, 3) + (("fear", 1),), (10, 16), (640, 480)),
        "samm": DatasetPreset(3, _each(_SAMM_5, 3), (10, 16), (680, 363)),
    },
    # The default demo run: two clips per class per subject plus a few clips of dropped classes.
    "demo": {
        "casme2": DatasetPreset(10, _each(_CASME2_5, 20) + (("fear", 1), ("sadness", 1)), (20, 40), (640, 480)),
        "samm": DatasetPreset(8, _each(_SAMM_5, 16) + (("Disgust", 1), ("Sadness", 1)), (20, 40), (680, 363)),
    },
    # Benchmarks: the real CASME II emotion counts (255 clips, 26 subjects) at the real frame size,
    # and the real SAMM counts (159 clips, 29 subjects) at half the real 2040x1088 frame size.
    "casme2-scale": {
        "casme2": DatasetPreset(
            26,
            (
                ("others", 99),
                ("disgust", 63),
                ("happiness", 32),
                ("repression", 27),
                ("surprise", 25),
                ("sadness", 7),
                ("fear", 2),
            ),
            (55, 80),
            (640, 480),
        ),
        "samm": DatasetPreset(
            29,
            (
                ("Anger", 57),
                ("Other", 26),
                ("Happiness", 26),
                ("Surprise", 15),
                ("Contempt", 12),
                ("Disgust", 9),
                ("Fear", 8),
                ("Sadness", 6),
            ),
            (55, 80),
            (1020, 544),
        ),
    },
}
PRESET_NAMES = tuple(PRESETS)

# dlib 68-point scheme: the index each landmark takes when the face is mirrored left to right.
MIRROR = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nose base
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)


def _symmetric(moves: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Image-left landmarks given as (outward, upward); the mirror landmark gets the mirror move.

    Midline landmarks (their own mirror) only keep the upward part.
    """
    result: dict[int, tuple[float, float]] = {}
    for index, (out, up) in moves.items():
        mirror = int(MIRROR[index])
        if mirror == index:
            result[index] = (0.0, -up)
        else:
            result[index] = (-out, -up)
            result[mirror] = (out, -up)
    return result


def _image_xy(moves: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Landmarks given directly as (dx, dy) in image axes (y down): for one-sided movements."""
    return dict(moves)


# Facial-action patterns: landmark displacements in face axes (x to the image right, y down), before
# normalisation to a peak of 1. Image-left/right follow dlib's labels, which are by image position.
_PATTERN_MOVES: dict[str, dict[int, tuple[float, float]]] = {
    # AU6 + AU12: lip corners up and out, cheeks raised (lower lids pushed up).
    "cheek_raise_lip_corner_pull": _symmetric(
        {
            48: (0.55, 0.85),
            49: (0.25, 0.45),
            59: (0.3, 0.35),
            60: (0.45, 0.7),
            67: (0.15, 0.25),
            50: (0.1, 0.25),
            58: (0.1, 0.15),
            40: (0.0, 0.35),
            41: (0.0, 0.35),
            3: (0.1, 0.3),
            4: (0.1, 0.3),
            31: (0.05, 0.15),
        }
    ),  # fmt: skip
    # AU4 + AU9 + AU10: brows down and together, nose wrinkled, upper lip raised.
    "brow_lower_nose_wrinkle": _symmetric(
        {
            17: (-0.1, -0.35),
            18: (-0.2, -0.45),
            19: (-0.3, -0.55),
            20: (-0.45, -0.65),
            21: (-0.6, -0.7),
            31: (-0.1, 0.45),
            32: (-0.05, 0.5),
            33: (0.0, 0.5),
            28: (0.0, 0.15),
            29: (0.0, 0.2),
            39: (0.0, 0.15),
            50: (0.0, 0.75),
            51: (0.0, 0.85),
            49: (0.05, 0.55),
            61: (0.0, 0.6),
            62: (0.0, 0.65),
            48: (0.0, 0.3),
        }
    ),  # fmt: skip
    # AU14 + AU15 + AU17: lip corners pressed in and down, chin pushed up.
    "lip_corner_depress_chin_raise": _symmetric(
        {
            48: (-0.3, -0.8),
            49: (-0.1, -0.35),
            59: (-0.15, -0.45),
            60: (-0.3, -0.6),
            57: (0.0, 0.45),
            58: (0.0, 0.4),
            66: (0.0, 0.3),
            7: (0.0, 0.3),
            8: (0.0, 0.35),
        }
    ),  # fmt: skip
    # AU1 + AU2 + AU26: brows up, upper lids up, jaw slightly down.
    "brow_raise_jaw_drop": _symmetric(
        {
            17: (0.05, 0.8),
            18: (0.0, 0.95),
            19: (0.0, 1.0),
            20: (0.0, 0.95),
            21: (0.0, 0.85),
            37: (0.0, 0.35),
            38: (0.0, 0.35),
            5: (0.0, -0.25),
            6: (0.0, -0.45),
            7: (0.0, -0.6),
            8: (0.0, -0.65),
            57: (0.0, -0.6),
            58: (0.0, -0.55),
            59: (0.0, -0.4),
            66: (0.0, -0.55),
            67: (0.0, -0.5),
        }
    ),  # fmt: skip
    # AU7 plus a one-sided AU2: lids tightened, the image-right outer brow raised.
    "lid_tighten_unilateral_brow": {
        **_symmetric({37: (0.0, -0.4), 38: (0.0, -0.4), 40: (0.0, 0.6), 41: (0.0, 0.6)}),
        **_image_xy({24: (0.0, -0.6), 25: (0.05, -0.85), 26: (0.05, -0.8)}),
    },
    # AU4 + AU23/24: brows down and together, lips pressed.
    "brow_lower_lip_press": _symmetric(
        {
            21: (-0.75, -0.7),
            20: (-0.5, -0.55),
            19: (-0.3, -0.4),
            18: (-0.15, -0.3),
            17: (0.0, -0.2),
            39: (0.0, -0.15),
            50: (0.0, -0.45),
            51: (0.0, -0.5),
            61: (0.0, -0.4),
            62: (0.0, -0.45),
            57: (0.0, 0.45),
            58: (0.0, 0.4),
            66: (0.0, 0.4),
            67: (0.0, 0.35),
            48: (-0.25, 0.0),
            60: (-0.2, 0.0),
        }
    ),  # fmt: skip
    # One-sided AU14: the image-right lip corner pulled up and back.
    "unilateral_dimpler": _image_xy(
        {
            54: (0.65, -0.75),
            53: (0.3, -0.4),
            55: (0.3, -0.35),
            64: (0.5, -0.55),
            63: (0.15, -0.2),
            65: (0.15, -0.2),
            12: (0.1, -0.2),
        }
    ),  # fmt: skip
    # AU1 + AU2 + AU4 + AU20: brows up and together, lips stretched sideways.
    "inner_brow_raise_lip_stretch": _symmetric(
        {
            21: (-0.5, 0.9),
            20: (-0.35, 0.75),
            19: (-0.2, 0.55),
            18: (0.0, 0.4),
            17: (0.0, 0.3),
            37: (0.0, 0.3),
            38: (0.0, 0.3),
            48: (0.95, -0.2),
            49: (0.4, -0.05),
            59: (0.45, -0.15),
            60: (0.7, -0.1),
            67: (0.2, -0.1),
        }
    ),  # fmt: skip
    # AU1 + AU15: inner brows up, lip corners down.
    "inner_brow_raise_lip_corner_depress": _symmetric(
        {
            21: (-0.35, 0.95),
            20: (-0.2, 0.55),
            19: (0.0, 0.25),
            48: (0.0, -0.9),
            49: (0.0, -0.35),
            59: (0.0, -0.4),
            60: (0.0, -0.65),
        }
    ),  # fmt: skip
}

# Emotion (lower-case) -> pattern, per dataset. SAMM's "other" shares CASME II's "others" pattern.
EMOTION_PATTERNS: dict[str, dict[str, str]] = {
    "casme2": {
        "happiness": "cheek_raise_lip_corner_pull",
        "disgust": "brow_lower_nose_wrinkle",
        "repression": "lip_corner_depress_chin_raise",
        "surprise": "brow_raise_jaw_drop",
        "others": "lid_tighten_unilateral_brow",
        "fear": "inner_brow_raise_lip_stretch",
        "sadness": "inner_brow_raise_lip_corner_depress",
    },
    "samm": {
        "anger": "brow_lower_lip_press",
        "contempt": "unilateral_dimpler",
        "happiness": "cheek_raise_lip_corner_pull",
        "surprise": "brow_raise_jaw_drop",
        "other": "lid_tighten_unilateral_brow",
        "disgust": "brow_lower_nose_wrinkle",
        "fear": "inner_brow_raise_lip_stretch",
        "sadness": "inner_brow_raise_lip_corner_depress",
    },
}

# Action-unit cells as the sheets write them: integers for a single AU, text otherwise.
_ACTION_UNITS: dict[str, tuple[int | str, ...]] = {
    "happiness": (12, "6+12", "R12", "12+L10", "6+12+25"),
    "disgust": ("4+7", "4+7+L10", 9, "4+9", "L10", "4+10"),
    "repression": (14, "R14A", 15, "14+17", "R12 + R15", 17),
    "surprise": ("1+2", "R1+R2", "1+2+25", 2),
    "others": (4, 7, "4+7", "L2", "R2", "7+43"),
    "other": (7, "R2", "6+7", "L2+7", 43),
    "fear": ("1+2+4+20", "4+20", 20),
    "sadness": ("1+4+15", "15+17", "1+15"),
    "anger": (4, "4+7", "R4+R7", "4+23", "7+24", "4+7+43"),
    "contempt": ("R14", "R12", "L14", "R12+R14"),
}
# SAMM objective classes (Davison et al., 2018), I..VII as integers.
_SAMM_OBJECTIVE = {
    "happiness": 1,
    "surprise": 2,
    "anger": 3,
    "disgust": 4,
    "sadness": 5,
    "fear": 6,
    "contempt": 7,
    "other": 7,
}
_SAMM_NOTES = ("", "", "", "", "", "Blink", "Head movement", "Eye movement at offset", "Slight head tilt")


@functools.cache
def pattern(name: str) -> np.ndarray:
    """(68, 2) float32 landmark displacements of a facial-action pattern, largest of length 1."""
    moves = np.zeros((68, 2), dtype=np.float64)
    for index, move in _PATTERN_MOVES[name].items():
        moves[index] = move
    moves /= np.linalg.norm(moves, axis=1).max()
    result = moves.astype(np.float32)
    result.setflags(write=False)
    return result


PATTERN_NAMES = tuple(_PATTERN_MOVES)


# ----------------------------------------------------------------------------------------------
# 2. Planning: every subject, clip and sheet row, decided from the seed before rendering
# ----------------------------------------------------------------------------------------------


def _code(value: object) -> int:
    return zlib.crc32(str(value).encode("utf-8"))


def derived_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (e.g. dataset, subject, clip)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(_code(k) for k in keys)]))


@dataclass(frozen=True)
class SubjectLook:
    """Everything that makes one synthetic subject: geometry, shading, background, noise."""

    size: tuple[int, int]  # frame (width, height)
    gray: bool
    face_width: float  # jaw-to-jaw width in output pixels
    centre: tuple[float, float]  # where the face's landmark centroid lands
    angle: float  # in-plane rotation, degrees
    mirror: bool
    aspect: float  # horizontal stretch of the face
    bulge: tuple[float, float]  # radial reshaping strength along x and y
    wave: tuple[float, float, float, float]  # amplitude (x face width), wavelength (x face width), direction, phase
    contrast: float
    brightness: float
    gamma: float
    tint: tuple[float, float, float]  # BGR gains
    blur: float  # Gaussian sigma in output pixels
    background: tuple[tuple[float, float, float], tuple[float, float, float], float]  # two BGR colours, direction
    noise: float  # sensor noise sigma, grey levels


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
    dataset: str
    preset: str
    seed: int
    clips: tuple[ClipPlan, ...]  # in folder order (subject, clip)
    sheet_order: tuple[int, ...]  # clip indices in spreadsheet row order
    looks: dict[str, SubjectLook] = field(hash=False, compare=False, default_factory=dict)

    @property
    def n_frames(self) -> int:
        return sum(clip.n_frames for clip in self.clips)


def _draw_look(rng: np.random.Generator, dataset: str, preset: DatasetPreset) -> SubjectLook:
    width, height = preset.size
    gray = dataset == "samm"
    # Faces: about 230-300 px wide in a 640x480 CASME II frame; SAMM faces fill less of the frame.
    face_width = height * (rng.uniform(0.48, 0.62) if dataset == "casme2" else rng.uniform(0.38, 0.46))
    centre = (width * (0.5 + rng.uniform(-0.07, 0.07)), height * (0.5 + rng.uniform(-0.04, 0.05)))
    level = rng.uniform(0.35, 0.9) * 255
    first = tuple(float(np.clip(level * rng.uniform(0.94, 1.06), 0, 255)) for _ in range(3))
    if rng.random() < 0.4:
        second = first  # plain
    else:
        factor = rng.uniform(0.65, 1.2)
        second = tuple(float(np.clip(c * factor * rng.uniform(0.95, 1.05), 0, 255)) for c in first)
    return SubjectLook(
        size=(int(width), int(height)),
        gray=gray,
        face_width=float(face_width),
        centre=(float(centre[0]), float(centre[1])),
        angle=float(rng.uniform(-6, 6)),
        mirror=bool(rng.random() < 0.5),
        aspect=float(rng.uniform(0.93, 1.07)),
        bulge=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
        wave=(
            float(rng.uniform(0, 0.015)),
            float(rng.uniform(1.2, 2.5)),
            float(rng.uniform(0, math.pi)),
            float(rng.uniform(0, 2 * math.pi)),
        ),
        contrast=float(rng.uniform(0.8, 1.15)),
        brightness=float(rng.uniform(-0.08, 0.08)),
        gamma=float(rng.uniform(0.8, 1.25)),
        tint=(1.0, 1.0, 1.0) if gray else tuple(float(rng.uniform(0.92, 1.08)) for _ in range(3)),
        blur=float(rng.uniform(0, 1.2)),
        background=(first, second, float(rng.uniform(0, 2 * math.pi))),
        noise=float(rng.uniform(0.8, 1.8)),
    )


def _face_found(image: np.ndarray, landmarks: np.ndarray) -> bool:
    """dlib's detector finds the face (at the size the align stage detects on, and at full size)."""
    from pipeline.align.landmarks import detect_faces

    centre = landmarks.mean(axis=0)
    height, width = image.shape[:2]
    candidates = [(image, 1.0)]
    factor = 640 / max(height, width)
    if factor < 1:
        candidates.append((cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA), factor))
    for picture, scale in candidates:
        faces = detect_faces(picture, 0)
        if not faces:
            return False
        box = faces[0][1]
        x, y = centre * scale
        if not (box.left() <= x <= box.right() and box.top() <= y <= box.bottom()):
            return False
    return True


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
            look = _draw_look(derived_rng(seed, dataset, subject, "look", attempt), dataset, spec)
            if not check_faces:
                break
            image, landmarks = render_subject(look)
            if _face_found(image, landmarks):
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
            units = _ACTION_UNITS[emotion.lower()]
            extra: dict[str, object] = {}
            if dataset == "samm":
                extra = {
                    "inducement": int(name.split("_")[1]),
                    "subject_as_text": bool(rng.random() < 0.5),
                    "notes": str(_SAMM_NOTES[int(rng.integers(len(_SAMM_NOTES)))]),
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
    return DatasetPlan(dataset, preset, int(seed), clips, tuple(order), looks)


# ----------------------------------------------------------------------------------------------
# 3. Synthesis: pure functions from plans to arrays
# ----------------------------------------------------------------------------------------------

PORTRAIT_RESOURCE = files("pipeline") / "data" / "astronaut.jpg"

# Head-and-shoulders cut-out of the portrait, in its pixels: an ellipse around the hair and a
# polygon for the neck, helmet ring and suit; the flag and shuttle model are left out.
_HEAD_ELLIPSE = ((225, 94), (76, 80))
_BODY_POLYGON = [(175, 120), (275, 120), (300, 150), (318, 190), (335, 240), (365, 300), (430, 420), (512, 512),
                 (0, 512), (20, 420), (60, 300), (105, 230), (120, 175), (150, 150)]  # fmt: skip


@functools.lru_cache(maxsize=1)
def portrait() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled portrait (BGR uint8), its 68 landmarks, and the soft head mask (float32 0..1)."""
    from pipeline.align.landmarks import detect_landmarks

    image = cv2.imread(str(PORTRAIT_RESOURCE), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"bundled portrait missing: {PORTRAIT_RESOURCE}")
    landmarks = detect_landmarks(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if landmarks is None:
        raise RuntimeError("dlib finds no face in the bundled portrait")
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    cv2.ellipse(mask, _HEAD_ELLIPSE[0], _HEAD_ELLIPSE[1], 0, 0, 360, 255, -1)
    cv2.fillPoly(mask, [np.array(_BODY_POLYGON, dtype=np.int32)], 255)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 4.0)
    for array in (image, landmarks, soft):
        array.setflags(write=False)
    return image, landmarks.astype(np.float32), soft


def _rotation(degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def _placement(look: SubjectLook, landmarks: np.ndarray) -> np.ndarray:
    """2x3 affine from portrait pixels to frame pixels (scale, aspect, mirror, rotation, shift)."""
    jaw = float(np.linalg.norm(landmarks[16] - landmarks[0]))
    scale = look.face_width / jaw
    flip = -1.0 if look.mirror else 1.0
    linear = _rotation(look.angle) @ np.diag([scale * look.aspect * flip, scale])
    centre = landmarks.mean(axis=0).astype(np.float64)
    return np.hstack([linear, (np.asarray(look.centre) - linear @ centre)[:, None]])


def _shape_warp(look: SubjectLook, points: np.ndarray) -> np.ndarray:
    """Gentle smooth displacement (frame pixels) at `points` (..., 2): a radial bulge and a long wave."""
    centre = np.asarray(look.centre)
    offset = points - centre
    reach = 0.7 * look.face_width
    falloff = np.exp(-(offset**2).sum(-1, keepdims=True) / (2 * reach**2))
    bulge = offset * np.asarray(look.bulge) * falloff
    amplitude, wavelength, direction, phase = look.wave
    along = np.array([math.cos(direction), math.sin(direction)])
    across = np.array([-math.sin(direction), math.cos(direction)])
    wave = amplitude * look.face_width * np.sin(2 * math.pi * (offset @ along) / (wavelength * look.face_width) + phase)
    return bulge + wave[..., None] * across


def _background(look: SubjectLook) -> np.ndarray:
    width, height = look.size
    first, second, direction = look.background
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((xs - width / 2) * math.cos(direction) + (ys - height / 2) * math.sin(direction)) / (
        0.5 * math.hypot(width, height)
    )
    t = (np.clip(t, -1, 1) + 1) / 2
    first, second = np.asarray(first, np.float32), np.asarray(second, np.float32)
    return first + (second - first) * t[..., None]


@functools.lru_cache(maxsize=8)
def render_subject(look: SubjectLook) -> tuple[np.ndarray, np.ndarray]:
    """A subject's neutral frame (uint8, BGR (H,W,3) or grayscale (H,W)) and its 68 landmarks.

    The landmarks are the portrait's, carried through the same transform, and relabelled after
    mirroring so that they follow dlib's scheme in the new image.
    """
    photo, landmarks, mask = portrait()
    width, height = look.size
    affine = _placement(look, landmarks)
    inverse = cv2.invertAffineTransform(affine)

    # Backward map: frame pixel q samples the portrait at A^-1 (q + w(q)).
    grid = np.stack(np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)), axis=-1)
    source = (grid + _shape_warp(look, grid)) @ inverse[:, :2].T + inverse[:, 2]
    map_x, map_y = source[..., 0].astype(np.float32), source[..., 1].astype(np.float32)

    shaded = photo.astype(np.float32) / 255.0
    shaded = np.power(shaded, look.gamma)
    shaded = (shaded - 0.5) * look.contrast + 0.5 + look.brightness
    shaded = np.clip(shaded * np.asarray(look.tint, np.float32), 0, 1) * 255.0
    face = cv2.remap(shaded, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.remap(mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if look.blur > 0.3:
        face = cv2.GaussianBlur(face, (0, 0), look.blur)
    image = alpha[..., None] * face + (1 - alpha[..., None]) * _background(look)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if look.gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    # Forward landmarks: solve q + w(q) = A p by fixed-point iteration (w is small and smooth).
    source_points = landmarks[MIRROR] if look.mirror else landmarks
    target = source_points.astype(np.float64) @ affine[:, :2].T + affine[:, 2]
    points = target.copy()
    for _ in range(20):
        points = target - _shape_warp(look, points)
    image.setflags(write=False)
    points = points.astype(np.float32)
    points.setflags(write=False)
    return image, points


def face_scale(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(face width, inter-ocular distance, roll angle in radians) of 68 landmarks."""
    right, left = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    dx, dy = left - right
    return float(np.linalg.norm(landmarks[16] - landmarks[0])), float(math.hypot(dx, dy)), math.atan2(dy, dx)


def displacement_field(
    landmarks: np.ndarray, displacements: np.ndarray, sigma: float, size: tuple[int, int], step: int = 4
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Dense (h, w, 2) float32 displacement over the face's region of interest, and that region.

    Gaussian-weighted landmark displacements, normalised where landmarks crowd together (so the
    field at a landmark is about its own and its neighbours' displacement) and fading to zero a few
    sigma away. Evaluated on a coarse grid and interpolated: the field is smooth at that scale.
    Returns ((x0, y0, x1, y1), field) with the field covering frame pixels x0..x1-1, y0..y1-1.
    """
    width, height = size
    margin = 3 * sigma + 2
    x0, y0 = (np.floor(landmarks.min(axis=0) - margin)).astype(int)
    x1, y1 = (np.ceil(landmarks.max(axis=0) + margin)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    w, h = x1 - x0, y1 - y0
    cw, ch = max(2, -(-w // step)), max(2, -(-h // step))
    # Coarse sample centres, placed as cv2.resize maps them back onto the fine grid.
    xs = x0 + (np.arange(cw) + 0.5) * (w / cw) - 0.5
    ys = y0 + (np.arange(ch) + 0.5) * (h / ch) - 0.5
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    d2 = ((points[:, None, :] - landmarks[None, :, :].astype(np.float64)) ** 2).sum(-1)
    weights = np.exp(-d2 / (2 * sigma**2))
    coarse = (weights @ displacements.astype(np.float64)) / np.maximum(1.0, weights.sum(1, keepdims=True))
    coarse = coarse.reshape(ch, cw, 2).astype(np.float32)
    return (int(x0), int(y0), int(x1), int(y1)), cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def intensity_curve(n_frames: int, apex_index: int, residual: float = 0.0) -> np.ndarray:
    """(n,) expression intensity: 0 at the onset, 1 at the apex, `residual` at the offset.

    Raised-cosine rise and decay, so the motion starts and stops smoothly.
    """
    k = np.arange(n_frames, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(math.pi * np.clip(k / max(apex_index, 1), 0, 1))
    decay_length = max(n_frames - 1 - apex_index, 1)
    decay = residual + (1 - residual) * (0.5 + 0.5 * np.cos(math.pi * np.clip((k - apex_index) / decay_length, 0, 1)))
    return np.where(k <= apex_index, rise, decay)


# Peak landmark displacement, in pixels for a face 265 px wide (a 640x480 CASME II frame).
AMPLITUDE_RANGE = (1.5, 3.0)
REFERENCE_FACE_WIDTH = 265.0
_NOISE_PAD = 32


SUBJECT_STYLE = 0.5  # share of each clip's motion that is the subject's own style, the same for all classes
CLIP_JITTER = 0.25  # per-landmark variation of a clip's motion, relative


@functools.lru_cache(maxsize=64)
def subject_style(seed: int, dataset: str, subject: str) -> np.ndarray:
    """(68, 2) a subject's idiosyncratic motion: a random mix of all patterns, largest of length 1.

    People differ in how they move their faces; mixed into every clip of the subject, it makes
    leave-one-subject-out generalization a real test instead of matching one template per class.
    """
    weights = derived_rng(seed, dataset, subject, "style").dirichlet(np.full(len(PATTERN_NAMES), 0.5))
    style = sum(w * pattern(name).astype(np.float64) for w, name in zip(weights, PATTERN_NAMES))
    return style / np.linalg.norm(style, axis=1).max()


def clip_displacements(
    clip: ClipPlan, landmarks: np.ndarray, rng: np.random.Generator, style: np.ndarray
) -> np.ndarray:
    """(68, 2) peak landmark displacements of one clip, in frame pixels."""
    face_width, _, roll = face_scale(landmarks)
    moves = (1 - SUBJECT_STYLE) * pattern(clip.pattern).astype(np.float64) + SUBJECT_STYLE * style
    moves = moves * (1 + CLIP_JITTER * rng.standard_normal(moves.shape))  # per-clip variation of the shape
    amplitude = rng.uniform(*AMPLITUDE_RANGE) * face_width / REFERENCE_FACE_WIDTH
    return moves @ _rotation(math.degrees(roll)).T * amplitude


@functools.lru_cache(maxsize=4)
def _noise_pool(seed: int, dataset: str, subject: str, look: SubjectLook) -> tuple[np.ndarray, np.ndarray]:
    """A subject's sensor noise, padded, as its positive and negative parts (uint8).

    Frames read it at random offsets: windows at different offsets are independent, and drawing
    one field per subject instead of one per frame saves most of the cost. Keeping the two parts
    lets two saturating uint8 operations add the noise exactly.
    """
    rng = derived_rng(seed, dataset, subject, "noise")
    width, height = look.size
    shape = (height + _NOISE_PAD, width + _NOISE_PAD) + (() if look.gray else (3,))
    noise = np.rint(rng.standard_normal(shape, dtype=np.float32) * look.noise)
    positive, negative = np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)
    positive.setflags(write=False)
    negative.setflags(write=False)
    return positive, negative


def render_clip(clip: ClipPlan, seed: int) -> np.ndarray:
    """All frames of one clip, (T, H, W, 3) BGR or (T, H, W) grayscale uint8, noise included."""
    rng = derived_rng(seed, clip.dataset, clip.subject, clip.clip)
    base, landmarks = render_subject(clip.look)
    height, width = base.shape[:2]
    displacements = clip_displacements(clip, landmarks, rng, subject_style(seed, clip.dataset, clip.subject))
    _, eye_distance, _ = face_scale(landmarks)
    (x0, y0, x1, y1), flow = displacement_field(landmarks, displacements, 0.12 * eye_distance, (width, height))
    curve = intensity_curve(clip.n_frames, clip.apex_index, float(rng.uniform(0.0, 0.15)))
    grid_x, grid_y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))

    positive, negative = _noise_pool(seed, clip.dataset, clip.subject, clip.look)

    def noisy(image: np.ndarray, oy: int, ox: int, flip: bool) -> np.ndarray:
        h, w = image.shape[:2]
        up, down = (negative, positive) if flip else (positive, negative)  # the noise is symmetric
        out = cv2.add(image, up[oy : oy + h, ox : ox + w])
        return cv2.subtract(out, down[oy : oy + h, ox : ox + w], dst=out)

    frames = np.empty((clip.n_frames,) + base.shape, dtype=np.uint8)
    for k, level in enumerate(curve):
        oy, ox, flip = (int(v) for v in rng.integers(0, _NOISE_PAD + 1, size=3))
        flip = bool(flip % 2)
        frames[k] = noisy(base, oy, ox, flip)
        if level > 0:
            # Content moves by +level * flow: each pixel samples the neutral face where it came from.
            map_x = grid_x - np.float32(level) * flow[..., 0]
            map_y = grid_y - np.float32(level) * flow[..., 1]
            moved = cv2.remap(base, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            frames[k, y0:y1, x0:x1] = noisy(moved, oy + y0, ox + x0, flip)
    return frames


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG bytes of a BGR or grayscale frame (grayscale stays single-channel)."""
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()


def clip_files(clip: ClipPlan, seed: int) -> list[tuple[str, bytes]]:
    """(path relative to the dataset folder, JPEG bytes) for every frame of a clip."""
    from pipeline.parallel import limit_native_threads

    limit_native_threads()
    frames = render_clip(clip, seed)
    folder = clip.folder()
    return [
        (f"{folder}/{clip.frame_name(n)}", encode_jpeg(f, clip.quality)) for n, f in zip(clip.frame_numbers, frames)
    ]


def _sheet_extra(clip: ClipPlan) -> dict[str, object]:
    return dict(clip.extra)


def coding_rows(plan: DatasetPlan) -> list[list[object]]:
    """The coding spreadsheet's data rows (cells as the real sheet types them), in sheet order."""
    rows = []
    for index in plan.sheet_order:
        clip = plan.clips[index]
        if plan.dataset == "casme2":
            apex: object = "/" if clip.apex_missing else clip.apex
            rows.append(
                [
                    clip.subject_number,
                    clip.clip,
                    None,
                    clip.onset,
                    apex,
                    clip.offset,
                    None,
                    clip.action_units,
                    clip.emotion,
                ]
            )
        else:
            extra = _sheet_extra(clip)
            subject: object = clip.subject if extra["subject_as_text"] else clip.subject_number
            apex = -1 if clip.apex_missing else clip.apex
            rows.append(
                [subject, clip.clip, extra["inducement"], clip.onset, apex, clip.offset, clip.n_frames, "Micro",
                 clip.action_units, clip.emotion, _SAMM_OBJECTIVE[clip.emotion.lower()], extra["notes"] or None]
            )  # fmt: skip
    return rows


def ground_truth_rows(plan: DatasetPlan) -> list[dict[str, object]]:
    """One row per clip, in folder order: the true apex even where the sheet leaves it out."""
    return [
        {"subject": c.subject, "clip": c.clip, "onset": c.onset, "apex": c.apex, "offset": c.offset,
         "emotion": c.emotion.lower(), "pattern": c.pattern}
        for c in plan.clips
    ]  # fmt: skip


SAMM_PREAMBLE = (
    "SAMM Micro-Expression Database: FACS codes of micro-movements (synthetic demo copy)",
    None,
    "Generated by `mer demo-data` from one public-domain portrait; this is not the SAMM database.",
    "Frame numbers refer to the image files SSS_NNNNN.jpg in each clip folder (200 fps).",
    None,
    "Apex Frame -1: apex not coded.",
    "Duration: Offset Frame - Onset Frame + 1, in frames.",
    "Inducement Code: the stimulus that induced the movement.",
    None,
    "Objective Classes: I-VII (Davison et al., 2018) written as 1-7.",
    "Estimated Emotion: as judged by the coders.",
    None,
    None,
)
assert len(SAMM_PREAMBLE) == SAMM_HEADER_ROW - 1


# ----------------------------------------------------------------------------------------------
# 4. Writing: frames, spreadsheets and ground truth on disk
# ----------------------------------------------------------------------------------------------

_FIXED_TIME = _dt.datetime(2014, 5, 8, 12, 0, 0)
_ZIP_TIME = (2014, 5, 8, 12, 0, 0)


def reproducible_xlsx(rows: Iterable[Iterable[object]]) -> bytes:
    """An .xlsx holding `rows` on one sheet, byte-identical for identical rows.

    openpyxl stamps the current time into docProps/core.xml and into the zip entries; both are
    replaced by a fixed time here.
    """
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    for row in rows:
        sheet.append(list(row))
    workbook.properties.creator = "mer demo-data"
    workbook.properties.created = _FIXED_TIME
    buffer = io.BytesIO()
    workbook.save(buffer)
    stamp = _FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = io.BytesIO()
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(out, "w") as target:
        for entry in source.infolist():
            data = source.read(entry.filename)
            if entry.filename == "docProps/core.xml":
                text = data.decode("utf-8")
                text = re.sub(r"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)", rf"\g<1>{stamp}\g<2>", text)
                data = text.encode("utf-8")
            info = zipfile.ZipInfo(entry.filename, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 0
            info.external_attr = 0
            target.writestr(info, data)
    return out.getvalue()


def coding_sheet_rows(plan: DatasetPlan) -> list[list[object]]:
    """Every spreadsheet row, preamble and header included."""
    if plan.dataset == "casme2":
        return [list(CASME2_HEADER)] + coding_rows(plan)
    return [[line] if line else [] for line in SAMM_PREAMBLE] + [list(SAMM_HEADER)] + coding_rows(plan)


def write_dataset(
    folder: Path,
    plan: DatasetPlan,
    jobs: int = 1,
    progress: Callable[[Iterator, int, str], Iterable] | None = None,
) -> dict[str, int]:
    """Write one dataset's frames, coding sheet and ground truth under `folder` (made if missing)."""
    from pipeline.parallel import ordered_map

    folder.mkdir(parents=True, exist_ok=True)
    results = ordered_map(clip_files, ((clip, plan.seed) for clip in plan.clips), jobs)
    if progress is not None:
        results = progress(results, len(plan.clips), plan.dataset)
    n_frames = 0
    made: set[Path] = set()
    for files_of_clip in results:
        for relative, data in files_of_clip:
            path = folder / relative
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(data)
            n_frames += 1
    coding = CASME2_CODING if plan.dataset == "casme2" else SAMM_CODING
    (folder / coding).write_bytes(reproducible_xlsx(coding_sheet_rows(plan)))
    with open(folder / GROUND_TRUTH, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=GROUND_TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(ground_truth_rows(plan))
    return {"clips": len(plan.clips), "frames": n_frames, "subjects": len({c.subject for c in plan.clips})}


def formats_for(choice: str) -> tuple[str, ...]:
    if choice == "both":
        return FORMATS
    if choice not in FORMATS:
        raise ValueError(f"unknown format {choice!r}; expected one of {FORMAT_CHOICES}")
    return (choice,)


def generate(
    folder: str | Path,
    preset: str = "demo",
    fmt: str = "both",
    seed: int = 7,
    jobs: int = 1,
    progress: Callable[[Iterator, int, str], Iterable] | None = None,
) -> dict[str, dict[str, int]]:
    """Write the synthetic datasets into `folder` (folder/casme2, folder/samm); a summary per dataset.

    Writes in place: callers wanting an all-or-nothing folder wrap this in atomic_output.
    """
    summary = {}
    for dataset in formats_for(fmt):
        plan = build_plan(dataset, preset, seed)
        summary[dataset] = write_dataset(Path(folder) / dataset, plan, jobs, progress)
    return summary
