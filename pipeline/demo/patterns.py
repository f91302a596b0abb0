"""Facial-action patterns: landmark displacements (dlib's 68-point scheme) per emotion class."""

from __future__ import annotations

import functools

import numpy as np

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
