"""Coding spreadsheets in the real CASME II / SAMM formats and tiny clip folders, for annotate tests."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import openpyxl

# Header of CASME2-coding-20140508.xlsx: two unnamed columns included.
CASME2_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
]
SAMM_HEADER = [
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
    "Duration",
    "Micro",
    "Action Units",
    "Estimated Emotion",
    "Objective Classes",
    "Notes",
]
SAMM_PREAMBLE = [
    ["SAMM: Spontaneous Actions and Micro-Movements - FACS codes"],
    ["Version 2"],
    [],
    ["Key"],
    ["Inducement Code", "the stimulus that induced the movement"],
    ["Micro", "Micro or Macro movement"],
    ["Objective Classes", "classes derived from the Action Units"],
    [],
    ["Notes"],
    ["Frame numbers are the numbers in the image file names"],
    [],
    ["Please cite the SAMM paper when using this data"],
    [],
]  # 13 rows: the header is on spreadsheet row 14

CASME2_EMOTIONS = {
    "others": 99,
    "disgust": 63,
    "happiness": 32,
    "repression": 27,
    "surprise": 25,
    "sadness": 7,
    "fear": 2,
}
SAMM_EMOTIONS = {
    "Anger": 57,
    "Other": 26,
    "Happiness": 26,
    "Surprise": 15,
    "Contempt": 12,
    "Disgust": 9,
    "Fear": 8,
    "Sadness": 6,
}
SAMM_SUBJECTS = [
    "006",
    "007",
    "009",
    "010",
    "011",
    "012",
    "013",
    "014",
    "015",
    "016",
    "017",
    "018",
    "019",
    "020",
    "021",
    "022",
    "023",
    "024",
    "025",
    "026",
    "028",
    "030",
    "031",
    "032",
    "033",
    "034",
    "035",
    "036",
    "037",
]


def casme2_row(subject: int, clip: str, onset, apex, offset, emotion: str, aus="12") -> list:
    return [subject, clip, None, onset, apex, offset, None, aus, emotion]


def samm_row(subject, clip: str, onset, apex, offset, emotion: str, aus="R12") -> list:
    duration = offset - onset + 1 if isinstance(onset, int) and isinstance(offset, int) else None
    return [subject, clip, "2", onset, apex, offset, duration, "Micro", aus, emotion, "Class I", None]


def write_xlsx(path: Path, rows: Sequence[Sequence], title: str = "Sheet1") -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = title
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


def write_csv(path: Path, rows: Sequence[Sequence], delimiter: str = ",", encoding: str = "utf-8-sig") -> Path:
    """A spreadsheet program's CSV export: every cell as text, None as empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    return path


def casme2_sheet(path: Path, rows: Sequence[Sequence], header=CASME2_HEADER) -> Path:
    return write_xlsx(path, [header, *rows])


def samm_sheet(path: Path, rows: Sequence[Sequence], header=SAMM_HEADER) -> Path:
    return write_xlsx(path, [*SAMM_PREAMBLE, header, *rows], title="FACS_Movement_Only")


def casme2_distribution() -> list[list]:
    """255 rows with the real sheet's emotion counts over 26 subjects; some apexes are '/'."""
    emotions = [e for e, n in CASME2_EMOTIONS.items() for _ in range(n)]
    rows = []
    for i, emotion in enumerate(emotions):
        subject = i % 26 + 1
        onset = 40 + i
        apex = "/" if i % 17 == 0 else onset + 9
        rows.append(
            casme2_row(subject, f"EP{i // 26 + 1:02d}_{i % 3 + 1:02d}f", onset, apex, onset + 30, emotion, "4+7+L10")
        )
    return rows


def samm_distribution() -> list[list]:
    """159 rows with the real sheet's emotion counts over 29 subjects; subjects 036 and 037 hold
    only disgust, fear and sadness rows, so samm-5 keeps 27 subjects. Subject cells alternate
    between text '006' and the number 6; some apexes are -1."""
    only_dropped = {"036": ["Disgust", "Fear", "Sadness"], "037": ["Fear", "Sadness"]}
    pool = [e for e, n in SAMM_EMOTIONS.items() for _ in range(n)]
    for emotions in only_dropped.values():
        for emotion in emotions:
            pool.remove(emotion)
    assigned = [(s, e) for s, es in only_dropped.items() for e in es]
    others = SAMM_SUBJECTS[:27]
    assigned += [(others[i % 27], e) for i, e in enumerate(pool)]
    rows, counter = [], {}
    for i, (subject, emotion) in enumerate(assigned):
        counter[subject] = counter.get(subject, 0) + 1
        cell = subject if i % 2 else int(subject)
        onset = 1000 + 50 * i
        apex = -1 if i % 13 == 0 else onset + 12
        rows.append(
            samm_row(cell, f"{subject}_{counter[subject]}_{i % 5 + 1}", onset, apex, onset + 40, emotion, "R12 + R15")
        )
    return rows


def blob_frames(n: int, peak: int, size: int = 32, seed: int = 0, noise: float = 2.0) -> np.ndarray:
    """(n, size, size) uint8 frames: a Gaussian blob whose brightness rises from nothing at the
    first frame to its maximum at frame `peak` (0-based) and back to nothing at the last one,
    over a textured static background, plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    background = 90 + 30 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    blob = np.exp(-(((xx - size * 0.6) ** 2 + (yy - size * 0.4) ** 2) / (2 * (size / 8) ** 2)))
    frames = []
    for t in range(n):
        amplitude = t / peak if t <= peak else (n - 1 - t) / max(n - 1 - peak, 1)  # 0 at onset and offset
        frame = background + 100 * amplitude * blob + rng.normal(0, noise, (size, size))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_clip(folder: Path, numbers: Sequence[int], name: str, peak: int | None = None, size: int = 32) -> Path:
    """Frames numbered `numbers` as JPEGs named name.format(number); blob peaks at index `peak`."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = blob_frames(len(numbers), len(numbers) // 3 if peak is None else peak, size)
    for number, frame in zip(numbers, frames):
        cv2.imwrite(str(folder / name.format(number)), frame)
    return folder


def casme2_clip(root: Path, subject: str, clip: str, onset: int, offset: int, peak: int | None = None) -> Path:
    return write_clip(root / subject / clip, range(onset, offset + 1), "img{}.jpg", peak)


def samm_clip(root: Path, subject: str, clip: str, onset: int, offset: int, peak: int | None = None) -> Path:
    return write_clip(root / subject / clip, range(onset, offset + 1), subject + "_{:05d}.jpg", peak)


# Generic format: a plain CSV with these columns (any order, names matched loosely).
GENERIC_HEADER = ["subject", "clip", "onset", "apex", "offset", "emotion"]


def generic_clip(
    root: Path, folder: str, onset: int, offset: int, peak: int | None = None, name: str = "frame_{:04d}.png"
) -> Path:
    """A clip of a generic copy at root/folder (e.g. 's01/happy_1/color'), frames named name.format(n)."""
    return write_clip(root / folder, range(onset, offset + 1), name, peak)


def write_overrides(
    path: Path, rows: Sequence[Sequence], header=("subject", "clip", "onset", "apex", "offset")
) -> Path:
    """An overrides CSV: blank cells (None) keep the coding sheet's values."""
    return write_csv(path, [list(header), *rows], encoding="utf-8")


# CAS(ME)^3 part A: sheet `label`, every cell text, one video (Filename a..m) holds several MEs.
CASME3_HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]


def casme3_row(subject: str, video: str, onset, apex, offset, emotion: str, aus="R12") -> list:
    """A row as the distributed sheet writes it: every cell text, frame numbers included."""
    return [subject, video, str(onset), str(apex), str(offset), aus, "I", emotion]


def casme3_sheet(path: Path, rows: Sequence[Sequence]) -> Path:
    """The workbook as distributed: the table on sheet `label`, then a blank `Sheet1` and an empty `Sheet3`."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "label"
    for row in [CASME3_HEADER, *rows]:
        sheet.append(list(row))
    blank = workbook.create_sheet("Sheet1")
    for _ in range(5):
        blank.append([None] * 8)
    workbook.create_sheet("Sheet3")
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


def casme3_clip(root: Path, subject: str, video: str, first: int, last: int, peak: int | None = None) -> Path:
    """A CAS(ME)^3 part A video folder: root/spNO.1/a/color/0.jpg ... (the whole video, not one ME)."""
    return write_clip(root / subject / video / "color", range(first, last + 1), "{}.jpg", peak)


# SMIC-HS-E: sheets HS and VIS; no apex column; OffsetF (and more) are formulas such as =D2+M2-1.
SMIC_HS_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetF",
    "OffsetF",
    "Onset2F",
    "Offset2F",
    None,
    "FirstF",
    "LastF",
    "TotalMF1",
    "TotalMF2",
    "TotalVL",
    "Emotion",
]


def smic_row(subject: int, clip: str, onset: int, length: int, emotion: str, number: int) -> list:
    """A row of sheet HS at spreadsheet row `number`: OffsetF is the formula =D{n}+K{n}-1 (onset + TotalMF1 - 1)."""
    return [
        subject,
        clip,
        None,
        onset,
        f"=D{number}+K{number}-1",
        None,
        None,
        None,
        onset - 100,
        onset + 300,
        length,
        None,
        f"=J{number}-I{number}+1",
        emotion,
    ]


def smic_workbook(path: Path, hs_rows: Sequence[Sequence], vis_rows: Sequence[Sequence], cached: bool = True) -> Path:
    """A SMIC-HS-E-like workbook (sheets HS, VIS, Sheet2). With `cached`, every formula cell holds
    the value a spreadsheet program saves with it; without, it holds none (as openpyxl writes it)."""
    workbook = openpyxl.Workbook()
    sheets = [("HS", hs_rows), ("VIS", vis_rows)]
    first = workbook.active
    first.title = "HS"
    for title, rows in sheets:
        sheet = first if title == "HS" else workbook.create_sheet(title)
        for row in [SMIC_HS_HEADER, *rows]:
            sheet.append(list(row))
    workbook.create_sheet("Sheet2")
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    if cached:
        values = {}
        for index, (_, rows) in enumerate(sheets, start=1):
            for number, row in enumerate(rows, start=2):
                d, i, j, k = row[3], row[8], row[9], row[10]
                values[(index, f"E{number}")] = d + k - 1
                values[(index, f"M{number}")] = j - i + 1
        _store_formula_values(path, values)
    return path


def _store_formula_values(path: Path, values: dict[tuple[int, str], int]) -> None:
    """Write cached values into formula cells ((sheet index, cell) -> value), as Excel saves them."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as archive:
        items = {name: archive.read(name) for name in archive.namelist()}
    for (index, ref), value in values.items():
        name = f"xl/worksheets/sheet{index}.xml"
        text = items[name].decode()
        text = re.sub(rf'(<c r="{ref}"[^>]*><f>[^<]*</f>)<v ?/>', rf"\g<1><v>{value}</v>", text)
        items[name] = text.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in items.items():
            archive.writestr(name, data)


def smic_clip(
    root: Path, subject: int, emotion: str, clip: str, first: int, last: int, peak: int | None = None
) -> Path:
    """A SMIC-HS clip folder: root/s1/micro/negative/s1_ne_01/image{n}.bmp."""
    return write_clip(root / f"s{subject}" / "micro" / emotion / clip, range(first, last + 1), "image{}.bmp", peak)
