"""The dataset formats and where their clips and frames are on disk.

`FORMATS` holds one `DatasetFormat` per format: everything that sets CASME II, SAMM and
`generic` apart (subject folders and ids, example paths, the sheet's column titles, the default
class preset). Code elsewhere looks a format up by name instead of testing the name.

CASME II: ROOT/sub01/EP02_01f/img46.jpg (frame numbers not zero-padded, so sorting by name
would put img100 before img46). SAMM: ROOT/006/006_1_2/006_05562.jpg. Archives often unpack
with the top folder doubled (CASME2_RAW_selected/CASME2_RAW_selected/sub01/...), and subject
folders can hold non-image files; both are handled here once for every stage.

CAS(ME)^3 part A (`casme3`): ROOT/spNO.1/a/color/0.jpg, where `a` is a video (the sheet's
Filename) holding up to six micro-expressions: several samples share one folder and a sample
is (subject, video, onset). SMIC-HS (`smic`): ROOT/s1/micro/negative/s1_ne_01/image17581039.bmp
(the emotion folder is skipped: the sheet holds the emotion). Both are found by a folder pattern
(overridable with `folder_pattern`), like `generic`.

`generic` is any other layout (MMEW, a lab's own data): clip folders found by a folder pattern
relative to the root, `{subject}/{clip}` by default (e.g. `s{subject}/{clip}`,
`{subject}/{clip}/color`, `{subject}/*/{clip}`), frames any image files whose name ends in a
number. Subjects are kept as written (stripped), not renumbered.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import MerError
from pipeline.imaging import FrameError

DEFAULT_FOLDER_PATTERN = "{subject}/{clip}"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
_TRAILING_NUMBER = re.compile(r"(\d+)(?!.*\d)")

# field -> column title, for messages about a column the sheet lacks.
_CASME2_COLUMNS = {
    "subject": "Subject",
    "clip": "Filename",
    "onset": "OnsetFrame",
    "apex": "ApexFrame",
    "offset": "OffsetFrame",
    "emotion": "Estimated Emotion",
    "action_units": "Action Units",
}


@dataclass(frozen=True)
class DatasetFormat:
    """What sets one dataset format apart, from its folders to its coding sheet."""

    name: str
    subject_folder: re.Pattern | None  # subject folders under the root; None: found by a folder pattern
    subject_id: str | None  # canonical subject id from its number; None: kept as written
    example_frame: str | None  # a frame path relative to the root, for messages
    subject_hint: str  # how to write a subject in the sheet, for messages
    columns: Mapping[str, str]  # field -> column title as the distributed sheet spells it
    frame_span: str  # onset..offset as messages name it
    default_classes: str | None  # class preset without a class spec; None: every emotion its own class
    folder_pattern: str | None = None  # default clip-folder pattern of a layout found by pattern
    apex_column: bool = True  # False: the sheet codes no apex (SMIC): every apex is estimated
    several_per_folder: bool = False  # True: a folder (video) holds several samples, told apart by onset
    clip_only_frames: bool = False  # True: a clip folder holds only onset..offset (frames outside: a warning)
    bad_frame_rows: str = "fail"  # rows with frames out of order: fail (follow on_problem) | drop (listed)

    @property
    def required_fields(self) -> tuple[str, ...]:
        """The sheet columns a coding sheet of this format must have."""
        fields = ("subject", "clip", "onset", "apex", "offset", "emotion")
        return fields if self.apex_column else tuple(f for f in fields if f != "apex")

    @property
    def fixed_layout(self) -> bool:
        """True when the folders are laid out as the dataset ships them (no folder pattern)."""
        return self.subject_folder is not None


FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat(
            name="casme2",
            subject_folder=re.compile(r"^sub(\d+)$", re.IGNORECASE),
            subject_id="sub{:02d}",
            example_frame="sub01/EP02_01f/img46.jpg",
            subject_hint="an integer such as 1 (folder sub01)",
            columns=_CASME2_COLUMNS,
            frame_span="OnsetFrame..OffsetFrame",
            default_classes="casme2-5",
            clip_only_frames=True,
        ),
        DatasetFormat(
            name="samm",
            subject_folder=re.compile(r"^(\d+)$"),
            subject_id="{:03d}",
            example_frame="006/006_1_2/006_05562.jpg",
            subject_hint="a number such as 006 or 6",
            columns={**_CASME2_COLUMNS, "onset": "Onset Frame", "apex": "Apex Frame", "offset": "Offset Frame"},
            frame_span="OnsetFrame..OffsetFrame",
            default_classes="samm-5",
            clip_only_frames=True,
        ),
        DatasetFormat(
            name="casme3",
            subject_folder=None,
            subject_id=None,
            example_frame="spNO.1/a/color/0.jpg",
            subject_hint="the subject as its folder is named, e.g. spNO.1",
            columns={**_CASME2_COLUMNS, "onset": "Onset", "apex": "Apex", "offset": "Offset", "emotion": "emotion"},
            frame_span="Onset..Offset",
            default_classes=None,
            folder_pattern="{subject}/{clip}/color",
            several_per_folder=True,
            # The distributed sheet has 4 rows with frames out of order that no user can correct.
            bad_frame_rows="drop",
        ),
        DatasetFormat(
            name="smic",
            subject_folder=None,
            subject_id="s{:d}",
            example_frame="s1/micro/negative/s1_ne_01/image17581039.bmp",
            subject_hint="a number such as 1 (folder s1)",
            columns={**_CASME2_COLUMNS, "onset": "OnsetF", "apex": "(none)", "offset": "OffsetF", "emotion": "Emotion"},
            frame_span="OnsetF..OffsetF",
            default_classes=None,
            folder_pattern="{subject}/micro/*/{clip}",
            apex_column=False,
        ),
        DatasetFormat(
            name="generic",
            subject_folder=None,
            subject_id=None,
            example_frame=None,
            subject_hint="the subject as its folder is named (without '/')",
            columns={f: f for f in _CASME2_COLUMNS},
            frame_span="onset..offset",
            default_classes=None,
            folder_pattern=DEFAULT_FOLDER_PATTERN,
        ),
    )
}
DATASETS = tuple(FORMATS)


def dataset_format(dataset: str) -> DatasetFormat:
    """The format named `dataset`; MerError for an unknown name."""
    if dataset not in FORMATS:
        raise MerError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    return FORMATS[dataset]


def normalize_subject(dataset: str, value: object) -> str:
    """Canonical subject id: 'sub01' for CASME II, '006' for SAMM, 's1' for SMIC; accepts 1, '1',
    'sub1', 's01', '006'.

    For `generic` and `casme3` the subject is kept as written, stripped ('01' stays '01'; a numeric
    spreadsheet cell 1.0 is '1'); an empty one or one holding '/' is rejected.
    """
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    subject_id = dataset_format(dataset).subject_id
    if subject_id is None:
        if not text or "/" in text or "\\" in text:
            raise ValueError(f"not a subject id: {value!r}")
        return text
    match = re.fullmatch(r"(?:sub|s)?0*(\d+)(?:\.0+)?", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a subject id: {value!r}")
    return subject_id.format(int(match.group(1)))


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
    pattern = FORMATS[dataset].subject_folder
    return sorted(p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name))


def resolve_root(dataset: str, root: str | Path) -> Path:
    """The folder that directly holds the subject folders, descending through doubled top folders."""
    fmt = dataset_format(dataset)
    if not fmt.fixed_layout:
        raise MerError("a generic copy has no fixed layout: use find_clip_folders('generic', root, pattern)")
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
    raise MerError(f"no {dataset} subject folders found under {root}; expected a layout like ROOT/{fmt.example_frame}")


def list_frames(folder: Path) -> tuple[tuple[int, Path], ...]:
    """Image files of one clip folder sorted by frame number; other files are ignored.

    Ambiguous or broken frames raise FrameError instead of being dropped silently: two files with
    one frame number (img45.jpg beside img045.jpg) and a dangling or looping symbolic link.
    """
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.is_symlink():
            _check_link(path)
        if not path.is_file():
            continue
        number = frame_number(path)
        if number is None:
            continue
        if number in frames:
            raise FrameError(
                f"two files with frame number {number}: {frames[number]} and {path}; remove or rename one", path
            )
        frames[number] = path
    return tuple(sorted(frames.items()))


def _check_link(path: Path) -> None:
    """FrameError for a symbolic link whose target is missing or that loops."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "symbolic link loop (it points back to itself)"
        else:
            reason = f"dangling symbolic link: its target {os.readlink(path)} {exc.strerror.lower()}"
        raise FrameError(f"{reason}; fix or remove the link", path) from None


def _clip_folder(dataset: str, subject: str, clip: str, clip_dir: Path) -> ClipFolder:
    try:
        frames = list_frames(clip_dir)
    except PermissionError as exc:
        raise MerError(f"cannot read clip folder {clip_dir}: {exc.strerror}; check its permissions") from exc
    except FrameError as exc:
        raise FrameError(f"clip {subject}/{clip}: {exc.reason}", exc.file) from None
    return ClipFolder(dataset, subject, clip, clip_dir, frames)


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def compile_folder_pattern(pattern: str) -> list[re.Pattern]:
    """One regex per path segment of a folder pattern such as `s{subject}/{clip}/color`.

    `{subject}` and `{clip}` must each occur once, in different segments or separated by literal
    text; `*` matches any text within one segment. Raises MerError on a malformed pattern.
    """
    text = str(pattern).strip().replace("\\", "/").strip("/")
    if not text:
        raise MerError("the folder pattern is empty; use e.g. {subject}/{clip}")
    if str(pattern).strip().startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
        raise MerError(f"folder pattern {pattern!r} must be relative to the root, e.g. {DEFAULT_FOLDER_PATTERN}")
    names = _PLACEHOLDER.findall(text)
    unknown = sorted(set(names) - {"subject", "clip"})
    if unknown:
        raise MerError(
            f"folder pattern {pattern!r}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            "only {subject} and {clip} are filled in"
        )
    if names.count("subject") != 1 or names.count("clip") != 1:
        raise MerError(
            f"folder pattern {pattern!r} must hold {{subject}} and {{clip}} once each, e.g. {DEFAULT_FOLDER_PATTERN}"
        )
    segments = []
    for segment in text.split("/"):
        if segment in ("", ".", ".."):
            raise MerError(f"folder pattern {pattern!r} has an empty, '.' or '..' path part")
        if "{" in _PLACEHOLDER.sub("", segment) or "}" in _PLACEHOLDER.sub("", segment):
            raise MerError(f"folder pattern {pattern!r}: unbalanced braces")
        regex, last = "", 0
        for match in _PLACEHOLDER.finditer(segment):
            regex += _literal(segment[last : match.start()]) + f"(?P<{match.group(1)}>.+?)"
            last = match.end()
        regex += _literal(segment[last:])
        segments.append(re.compile(f"^{regex}$"))
    return segments


def _literal(text: str) -> str:
    return ".*?".join(re.escape(part) for part in text.split("*"))


def _walk(folder: Path, segments: list[re.Pattern], found: dict[str, str]) -> Iterator[tuple[dict[str, str], Path]]:
    if not segments:
        yield found, folder
        return
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
    except PermissionError as exc:
        raise MerError(f"cannot read folder {folder}: {exc.strerror}; check its permissions") from exc
    for child in children:
        match = segments[0].match(child.name)
        if match:
            yield from _walk(child, segments[1:], {**found, **match.groupdict()})


def _generic_clip_folders(dataset: str, root: str | Path, pattern: str | None) -> dict[tuple[str, str], ClipFolder]:
    pattern = FORMATS[dataset].folder_pattern if pattern is None else pattern
    segments = compile_folder_pattern(pattern)
    folder = Path(root)
    if not folder.is_dir():
        raise MerError(f"data folder not found: {folder} (set the dataset's root in params.yaml)")
    # Descend through doubled top folders (as for CASME II) while the pattern finds no frames.
    matches: list[tuple[dict[str, str], Path]] = []
    for _ in range(3):
        found = [(m, p) for m, p in _walk(folder, segments, {}) if m["subject"].strip() and m["clip"].strip()]
        matches = matches or found
        if any(list_frames(p) for _, p in found):
            matches = found
            break
        children = [p for p in folder.iterdir() if p.is_dir()]
        if len(children) != 1:
            break
        folder = children[0]
    if not matches:
        raise MerError(
            f"no clip folders matching the folder pattern {pattern!r} under {root}; "
            f"set the pattern (--folder-pattern) to your layout, e.g. {DEFAULT_FOLDER_PATTERN} for ROOT/01/clip1/frame001.jpg"
        )
    clips: dict[tuple[str, str], ClipFolder] = {}
    for match, path in matches:
        subject = match["subject"].strip()
        try:
            subject = normalize_subject(dataset, subject)
        except ValueError:
            continue  # a folder whose name is no subject id of this format (e.g. SMIC's s1 vs notes/)
        key = (subject, match["clip"].strip())
        if key in clips:
            raise MerError(
                f"folder pattern {pattern!r} matches two folders for subject {key[0]}, clip {key[1]}: "
                f"{clips[key].path} and {path}; make the pattern more specific"
            )
        clips[key] = _clip_folder(dataset, key[0], key[1], path)
    return clips


@dataclass(frozen=True)
class UnreadableFolder:
    subject: str
    clip: str  # "*" for a whole subject folder
    path: Path
    reason: str


def scan_clip_folders(
    dataset: str, root: str | Path, pattern: str | None = None
) -> tuple[dict[tuple[str, str], ClipFolder], list[UnreadableFolder]]:
    """All readable clip folders keyed by (subject, clip), and the folders that could not be listed.

    `pattern` (layouts found by pattern: generic, casme3, smic) is the folder pattern relative
    to the root, default the format's (`{subject}/{clip}` for generic); the CASME II and SAMM
    layouts are fixed and take none.
    """
    if dataset in FORMATS and not FORMATS[dataset].fixed_layout:
        return _generic_clip_folders(dataset, root, pattern), []
    if pattern is not None:
        raise MerError(
            f"a folder pattern applies to the generic format only (and to casme3 and smic); {dataset} folders are laid out as the dataset ships them"
        )
    base = resolve_root(dataset, root)
    clips: dict[tuple[str, str], ClipFolder] = {}
    unreadable: list[UnreadableFolder] = []
    subject_dirs: dict[str, Path] = {}
    for subject_dir in _subject_dirs(dataset, base):
        subject = normalize_subject(dataset, subject_dir.name)
        if subject in subject_dirs:
            raise MerError(
                f"two subject folders are both subject {subject}: {subject_dirs[subject]} and {subject_dir}; "
                "merge them or rename one"
            )
        subject_dirs[subject] = subject_dir
    for subject, subject_dir in subject_dirs.items():
        try:
            clip_dirs = sorted(p for p in subject_dir.iterdir() if p.is_dir())
        except PermissionError as exc:
            unreadable.append(
                UnreadableFolder(subject, "*", subject_dir, f"cannot read subject folder: {exc.strerror or exc}")
            )
            continue
        for clip_dir in clip_dirs:
            try:
                frames = list_frames(clip_dir)
            except PermissionError as exc:
                reason = f"cannot read clip folder: {exc.strerror or exc}; check its permissions"
                unreadable.append(UnreadableFolder(subject, clip_dir.name, clip_dir, reason))
                continue
            except FrameError as exc:
                unreadable.append(UnreadableFolder(subject, clip_dir.name, Path(exc.file), exc.reason))
                continue
            clips[(subject, clip_dir.name)] = ClipFolder(dataset, subject, clip_dir.name, clip_dir, frames)
    return clips, unreadable


def find_clip_folders(dataset: str, root: str | Path, pattern: str | None = None) -> dict[tuple[str, str], ClipFolder]:
    """All clip folders of a dataset copy, keyed by (subject, clip); an unreadable one is an error."""
    clips, unreadable = scan_clip_folders(dataset, root, pattern)
    if unreadable:
        raise MerError(f"{unreadable[0].path}: {unreadable[0].reason}")
    return clips


def read_frame(path: str | Path) -> np.ndarray:
    """Decode one frame as RGB uint8 (H, W, 3); grayscale files are replicated to three channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MerError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
