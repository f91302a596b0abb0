"""Writing a synthetic dataset: frames as JPEG files, the coding sheet and the ground truth."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from pipeline.demo.motion import render_clip
from pipeline.demo.plan import ClipPlan, DatasetPlan, build_plan
from pipeline.demo.presets import CASME2_CODING, GROUND_TRUTH, SAMM_CODING, formats_for
from pipeline.demo.sheets import GROUND_TRUTH_COLUMNS, coding_sheet_rows, ground_truth_rows, reproducible_xlsx


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
