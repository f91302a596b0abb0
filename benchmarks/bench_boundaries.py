"""How far each adaptive phase boundary lands from the demo's true apex (README "Beyond the paper").

The demo copies know every clip's true apex (`ground_truth.csv`, also where the coding sheet leaves
it out). For each clip this reads the raw frames onset..offset small and grey (as annotate does)
and places the adaptive anchors of pipeline/motion.py: `peak` (peak motion relative to the onset)
and `mNN` (NN % of the cumulative frame-to-frame motion); it prints, per anchor, the share of clips
within 1 and 3 frames of the true apex and the median, mean and largest distance in frames.

Usage: python -m benchmarks.bench_boundaries [--preset tiny|demo] [--workdir /tmp/mer-bench-boundaries]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from pipeline.datasets.layouts import find_clip_folders
from pipeline.motion import load_motion_frames, motion_anchors

DEMO_ROOTS = {"casme2": "casme2/CASME2_RAW_selected", "samm": "samm/SAMM"}


def boundary_errors(demo: Path, names: tuple[str, ...] = ("peak", "m50")) -> dict[str, list[int]]:
    """Per anchor, |anchor - true apex| in frames over every clip of the demo copy `demo`."""
    errors: dict[str, list[int]] = {name: [] for name in names}
    for dataset, root in DEMO_ROOTS.items():
        if not (demo / dataset / "ground_truth.csv").is_file():
            continue
        folders = find_clip_folders(dataset, demo / root)
        with open(demo / dataset / "ground_truth.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                folder = next(
                    f for (s, c), f in folders.items() if c == row["clip"] and str(s).endswith(row["subject"])
                )
                onset, apex, offset = int(row["onset"]), int(row["apex"]), int(row["offset"])
                found = motion_anchors(load_motion_frames([p for n, p in folder.frames if onset <= n <= offset]), names)
                for name in names:
                    errors[name].append(abs(onset + found[name] - apex))
    return errors


def summary(errors: dict[str, list[int]]) -> list[str]:
    lines = ["anchor | clips | within 1 frame | within 3 frames | median | mean | max"]
    for name, values in errors.items():
        v = np.array(values)
        lines.append(
            f"{name} | {len(v)} | {np.mean(v <= 1):.0%} | {np.mean(v <= 3):.0%} | {np.median(v):.1f} | {v.mean():.2f} | {v.max()}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--workdir", default="/tmp/mer-bench-boundaries")
    args = parser.parse_args()
    from pipeline.demo.generate import generate

    demo = Path(args.workdir) / args.preset
    if not (demo / "casme2" / "ground_truth.csv").is_file():
        generate(demo, preset=args.preset, fmt="both", seed=7)
    print("\n".join(summary(boundary_errors(demo, ("peak", "m33", "m50", "m67")))))


if __name__ == "__main__":
    main()
