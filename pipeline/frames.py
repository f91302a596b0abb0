"""Finding clips and frames in the CASME II and SAMM folder layouts.

CASME II: ROOT/sub01/EP02_01f/img46.jpg (frame numbers not zero-padded, so sorting by name
would put img100 before img46). SAMM: ROOT/006/006_1_2/006_05562.jpg. Archives often unpack
with the top folder doubled (CASME2_RAW_selected/CASME2_RAW_selected/sub01/...), and subject
folders can hold non-image files; both are handled here once for every stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import MerError

DATASETS = ("casme2", "samm")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
_SUBJECT_FOLDER = {"casme2": re.compile(r"^sub(\d+)$", re.IGNORECASE), "samm": re.compile(r"^(\d+)$")}
_TRAILING_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def normalize_subject(dataset: str, value: object) -> str:
    """Canonical subject id: 'sub01' for CASME II, '006' for SAMM; accepts 1, '1', 'sub1', '006'."""
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    match = re.fullmatch(r"(?:sub)?0*(\d+)(?:\.0+)?", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a subject id: {value!r}")
    number = int(match.group(1))
    return f"sub{number:02d}" if dataset == "casme2" else f"{number:03d}"


def frame_number(path: str | Path) -> int | None:
    """The frame index written in a file name: the last run of digits of its stem."""
    match = _TRAILING_NUMBER.search(Path(path).stem)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ClipFolder:
    dataset: str
    subject: str
    clip: str
    path: Path
    frames: tuple[tuple[int, Path], ...]  # (frame number, file), sorted by number

    @property
    def frame_numbers(self) -> list[int]:
        return [number for number, _ in self.frames]


def _subject_dirs(dataset: str, folder: Path) -> list[Path]:
    pattern = _SUBJECT_FOLDER[dataset]
    return sorted(p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name))


def resolve_root(dataset: str, root: str | Path) -> Path:
    """The folder that directly holds the subject folders, descending through doubled top folders."""
    if dataset not in DATASETS:
        raise MerError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    folder = Path(root)
    if not folder.is_dir():
        raise MerError(f"data folder not found: {folder} (set the dataset's root in params.yaml)")
    for _ in range(3):
        if _subject_dirs(dataset, folder):
            return folder
        children = [p for p in folder.iterdir() if p.is_dir()]
        if len(children) != 1:
            break
        folder = children[0]
    expected = "sub01/EP02_01f/img46.jpg" if dataset == "casme2" else "006/006_1_2/006_05562.jpg"
    raise MerError(f"no {dataset} subject folders found under {root}; expected a layout like ROOT/{expected}")


def list_frames(folder: Path) -> tuple[tuple[int, Path], ...]:
    """Image files of one clip folder sorted by frame number; other files are ignored."""
    frames = []
    for path in folder.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            number = frame_number(path)
            if number is not None:
                frames.append((number, path))
    frames.sort()
    return tuple(frames)


def find_clip_folders(dataset: str, root: str | Path) -> dict[tuple[str, str], ClipFolder]:
    """All clip folders of a dataset copy, keyed by (subject, clip)."""
    base = resolve_root(dataset, root)
    clips: dict[tuple[str, str], ClipFolder] = {}
    for subject_dir in _subject_dirs(dataset, base):
        subject = normalize_subject(dataset, subject_dir.name)
        for clip_dir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
            try:
                frames = list_frames(clip_dir)
            except PermissionError as exc:
                raise MerError(f"cannot read clip folder {clip_dir}: {exc.strerror}; check its permissions") from exc
            clips[(subject, clip_dir.name)] = ClipFolder(dataset, subject, clip_dir.name, clip_dir, frames)
    return clips


def read_frame(path: str | Path) -> np.ndarray:
    """Decode one frame as RGB uint8 (H, W, 3); grayscale files are replicated to three channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MerError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
