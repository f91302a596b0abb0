"""Dynamic-image regeneration speed on the casme2-scale demo (issue: DIs must be fast to redo).

Measures, in one run on the same aligned cache:
  read   - only reading every sample's aligned frames from the HDF5 cache (the I/O floor);
  regen  - the dynimg stage's computation of all phase DIs (`clip_dynamic_images`), reading included;
  verified - the same as the stage runs it: frames hashed as they are read and checked against the
           stored sha256 (`VerifiedFrames`), so the difference to regen is the cost of the check;
  loop   - a straightforward reference: per phase, frames read one by one and accumulated in a
           Python loop with each coefficient computed from the formula's sum;
  compute - the same two computations on frames already in memory (no reading at all).
and prints regen/read (target <= 2) and loop/regen (target >= 20), end to end and compute only.

Usage: python benchmarks/bench_dynimg.py [--workdir /tmp/mer-bench] [--clips N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

from benchmarks.workload import casme2_scale, machine_line
from pipeline.config import load_section
from pipeline.dynimg.dataset import DynamicImageSettings
from pipeline.dynimg.phases import phase_frames
from pipeline.dynimg.rank_pooling import clip_dynamic_images, to_uint8
from pipeline.io.aligned_cache import VerifiedFrames
from pipeline.io.samples import read_samples


def read_only(handle: h5py.File, samples: list[dict]) -> float:
    start = time.perf_counter()
    for s in samples:
        handle[f"{s['subject']}/{s['clip']}/frames"][()]
    return time.perf_counter() - start


def _regen_clip(frames: np.ndarray, numbers: np.ndarray, s: dict, settings: DynamicImageSettings) -> None:
    clip_dynamic_images(
        frames,
        numbers,
        s["onset"],
        s["apex"],
        s["offset"],
        settings.phases,
        settings.variant,
        settings.size,
        False,
        settings.min_phase_frames,
    )


def _loop_clip(frame_at, numbers: list[int], s: dict, settings: DynamicImageSettings) -> None:
    """The reference: per phase, frame by frame, each coefficient from the formula's sum."""
    position = {int(n): i for i, n in enumerate(numbers)}
    for bounds in settings.phases.values():
        first, last = phase_frames(bounds, s["onset"], s["apex"], s["offset"], settings.min_phase_frames)
        T = last - first + 1
        di = np.zeros(frame_at(position[first]).shape, np.float64)
        for t in range(1, T + 1):
            a_t = sum((2 * k - T - 1) / k for k in range(t, T + 1))
            di += a_t * frame_at(position[first + t - 1]).astype(np.float64)
        to_uint8(cv2.resize(di.astype(np.float32), (settings.size, settings.size), interpolation=cv2.INTER_AREA))


def regenerate(handle: h5py.File, samples: list[dict], settings: DynamicImageSettings) -> float:
    start = time.perf_counter()
    for s in samples:
        group = handle[f"{s['subject']}/{s['clip']}"]
        _regen_clip(group["frames"][()], group["frame_numbers"][()], s, settings)
    return time.perf_counter() - start


def regenerate_verified(handle: h5py.File, samples: list[dict], settings: DynamicImageSettings) -> float:
    """`regenerate` as the stage reads: block by block, every frame hashed and checked once."""
    start = time.perf_counter()
    for s in samples:
        frames = VerifiedFrames(handle, s["subject"], s["clip"])
        _regen_clip(frames, frames.frame_numbers, s, settings)
        if frames.problem():
            raise SystemExit(frames.problem())
    return time.perf_counter() - start


def loop_reference(handle: h5py.File, samples: list[dict], settings: DynamicImageSettings) -> float:
    """Frames read one by one from the cache, as a straightforward script would."""
    start = time.perf_counter()
    for s in samples:
        group = handle[f"{s['subject']}/{s['clip']}"]
        _loop_clip(group["frames"].__getitem__, group["frame_numbers"][()].tolist(), s, settings)
    return time.perf_counter() - start


Clips = list[tuple[np.ndarray, np.ndarray, dict]]


def loop_in_memory(clips: Clips, settings: DynamicImageSettings) -> float:
    start = time.perf_counter()
    for frames, numbers, s in clips:
        _loop_clip(frames.__getitem__, numbers.tolist(), s, settings)
    return time.perf_counter() - start


def regen_in_memory(clips: Clips, settings: DynamicImageSettings) -> float:
    start = time.perf_counter()
    for frames, numbers, s in clips:
        _regen_clip(frames, numbers, s, settings)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mer-bench"))
    parser.add_argument("--clips", type=int, default=None, help="use only the first N clips (quicker)")
    parser.add_argument("--loop-clips", type=int, default=25, help="clips timed with the slow loop reference")
    args = parser.parse_args()
    work = casme2_scale(args.workdir)
    settings = DynamicImageSettings.from_params(load_section(work["params"], "dynimg"))
    samples = read_samples(work["samples"])[: args.clips]
    n_frames = sum(s["offset"] - s["onset"] + 1 for s in samples)
    print(machine_line())
    with h5py.File(work["aligned"], "r") as handle:
        shape = handle[f"{samples[0]['subject']}/{samples[0]['clip']}/frames"].shape[1:]
        print(
            f"workload: casme2-scale, {len(samples)} clips, {n_frames} frames of {shape}, "
            f"phases {', '.join(settings.phases)}, DI size {settings.size}, one process"
        )
        read_only(handle, samples[:5])  # warm the page cache equally for everyone
        t_read = read_only(handle, samples)
        t_regen = regenerate(handle, samples, settings)
        t_verified = regenerate_verified(handle, samples, settings)
        subset = samples[: args.loop_clips]
        t_loop_subset = loop_reference(handle, subset, settings)
        t_regen_subset = regenerate(handle, subset, settings)
        loaded = [
            (
                handle[f"{s['subject']}/{s['clip']}/frames"][()],
                handle[f"{s['subject']}/{s['clip']}/frame_numbers"][()],
                s,
            )
            for s in subset
        ]
    t_loop_memory = loop_in_memory(loaded, settings)
    t_regen_memory = regen_in_memory(loaded, settings)
    print(f"read aligned frames:   {t_read:7.2f} s")
    print(f"regenerate all DIs:    {t_regen:7.2f} s")
    print(f"  frames verified:     {t_verified:7.2f} s  (sha256 of every frame checked as it is read)")
    print(f"per-frame loop ({len(subset)} clips): {t_loop_subset:7.2f} s vs {t_regen_subset:.2f} s for the same clips")
    print(f"ratio regen / read:    {t_regen / t_read:7.2f}  (target <= 2)")
    print(f"ratio loop / regen:    {t_loop_subset / t_regen_subset:7.2f}  (target >= 20), reading included")
    print(
        f"compute only, frames in memory ({len(subset)} clips): loop {t_loop_memory:.2f} s, regen {t_regen_memory:.2f} s, "
        f"ratio {t_loop_memory / t_regen_memory:.2f}"
    )


if __name__ == "__main__":
    main()
