"""What a synthetic copy holds: dataset formats and layouts, size presets, subjects, sheet vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FORMATS = ("casme2", "samm")
FORMAT_CHOICES = ("casme2", "samm", "both")

CASME2_ROOT = "CASME2_RAW_selected"
CASME2_CODING = "CASME2-coding-20140508.xlsx"
SAMM_ROOT = "SAMM"
SAMM_CODING = "SAMM_Micro_FACS_Codes_v2.xlsx"
GROUND_TRUTH = "ground_truth.csv"

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


def formats_for(choice: str) -> tuple[str, ...]:
    """The datasets a --format choice stands for."""
    if choice == "both":
        return FORMATS
    if choice not in FORMATS:
        raise ValueError(f"unknown format {choice!r}; expected one of {FORMAT_CHOICES}")
    return (choice,)


# Action-unit cells as the sheets write them: integers for a single AU, text otherwise.
ACTION_UNITS: dict[str, tuple[int | str, ...]] = {
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
# SAMM "Notes" cells, mostly empty.
SAMM_NOTES = ("", "", "", "", "", "Blink", "Head movement", "Eye movement at offset", "Slight head tilt")
