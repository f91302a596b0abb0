"""Peak memory of each stage on the `tiny` demo preset vs the `casme2-scale` preset (CASME II layout).

For each preset, in a temporary folder, the stages run in order, each as its own `mer ...` process with
the arguments dvc.yaml gives it (plus `--params` pointing at a copy of params.yaml with the preset):
  demo-data -> align -> annotate -> dynimg -> train (learnet, dual_phase) -> evaluate
Per stage it prints, in MiB:
  tree    the peak of the summed resident memory (RSS) of the stage process and its workers
          (joblib/loky), sampled every 0.05 s; shared library pages count once per process;
  main    the stage process's own peak (VmHWM, exact);
  worker  the largest worker's peak (VmHWM, exact), '-' when the stage started none;
and the ratio casme2-scale / tiny of `tree`, with the clips/frames each preset handed the stage.
align and dynimg stream clip by clip and must not grow with the dataset: verdict PASS when the
ratio <= 1.3. train holds the whole DI set in memory by design (README, Training), so its growth is
expected; on casme2-scale it runs `--epochs 1` (as on tiny, so the two are comparable).
tiny clips have 10-16 frames, casme2-scale clips 55-80, and a worker holds one clip at a time, so a
control runs align and dynimg again on the first `--subset` casme2-scale clips: same clip lengths,
fewer clips; its ratio is growth with the clip count alone.

Usage: python -m benchmarks.bench_memory [--workdir /tmp/mer-bench] [--epochs 1] [--subset 32] [--reuse-demo]
  --reuse-demo: take the casme2-scale demo copy cached by benchmarks.workload (no demo-data figure
  for casme2-scale, about 1 min quicker).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from benchmarks.workload import PROJECT, TreeMemory, casme2_scale, machine_line

MIB = 1024 * 1024
STAGES = ("demo-data", "align", "annotate", "dynimg", "train", "evaluate")
STREAMING = ("align", "dynimg")  # must not grow with the dataset
LIMIT = 1.3
MODEL, MODE, CLASSES = "learnet", "dual_phase", "casme2-5"


def mer_executable() -> str:
    mer = Path(sys.executable).parent / "mer"
    return str(mer) if mer.exists() else (shutil.which("mer") or "mer")


def run_stage(args: list[str], cwd: Path) -> dict:
    """Run one `mer` command; its wall time and memory (tree peak, main and largest-worker VmHWM)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [mer_executable(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with TreeMemory(process.pid) as memory:
        output = process.stdout.read()
        # wait4: the exit status and the exact ru_maxrss of the stage process and the workers it reaped
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"mer {' '.join(args)} failed (exit {process.returncode})")
    maxrss = usage.ru_maxrss * 1024  # KiB on Linux; a max over single processes, never a sum
    main = memory.main_hwm if memory.worker_hwm else max(memory.main_hwm, maxrss)  # no workers: exact
    return {
        "wall": wall,
        "tree": max(memory.peak, maxrss),
        "main": main,
        "worker": memory.worker_hwm,
        "processes": len(memory.processes),
        "output": output,
    }


def count_frames(root: Path) -> tuple[int, int]:
    clips = [d for d in root.glob("*/*") if d.is_dir()]
    return len(clips), sum(1 for d in clips for f in d.iterdir() if f.suffix.lower() == ".jpg")


def run_preset(preset: str, work: Path, epochs: int, demo: Path | None, subset: int = 0) -> dict:
    """Every stage on one preset in `work`; per stage its memory and what it handled."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["demo"].update(preset=preset, format="casme2")
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    p = ["--params", str(params_file)]
    results = {}
    if demo is None:
        demo = work / "demo"
        results["demo-data"] = run_stage(["demo-data", "--out", str(demo), *p], work)
    root, coding = demo / "casme2" / "CASME2_RAW_selected", demo / "casme2" / "CASME2-coding-20140508.xlsx"
    aligned, samples, dis = work / "aligned.h5", work / "samples.csv", work / "dynamic_images.h5"
    run, reports = work / "run", work / "reports"
    commands = {
        "align": ["align", "--dataset", "casme2", "--root", str(root), "--out", str(aligned)],
        "annotate": [
            "annotate",
            "--dataset",
            "casme2",
            "--root",
            str(root),
            "--coding",
            str(coding),
            "--classes",
            CLASSES,
            "--out",
            str(samples),
        ],
        "dynimg": [
            "dynimg",
            "--aligned",
            str(aligned),
            "--samples",
            str(samples),
            "--classes",
            CLASSES,
            "--out",
            str(dis),
        ],
        "train": [
            "train",
            "--dynamic-images",
            str(dis),
            "--model",
            MODEL,
            "--mode",
            MODE,
            "--out",
            str(run),
            "--curve",
            str(work / "curve.csv"),
            "--epochs",
            str(epochs),
        ],
        "evaluate": ["evaluate", "--run", str(run), "--out", str(reports), "--metrics", str(work / "metrics.json")],
    }
    for stage, args in commands.items():
        results[stage] = run_stage([*args, *p], work)
    clips, frames = count_frames(root)
    with open(samples) as handle:
        rows = list(csv.DictReader(handle))
    kept_frames = sum(int(r["offset"]) - int(r["onset"]) + 1 for r in rows)
    subjects = len({r["subject"] for r in rows})
    results["workload"] = {
        "demo-data": f"{clips} clips, {frames} frames",
        "align": f"{clips} clips, {frames} frames",
        "annotate": f"{clips} clips -> {len(rows)} kept",
        "dynimg": f"{len(rows)} clips, {kept_frames} frames",
        "train": f"{len(rows)} clips x 3 DIs, {subjects} folds",
        "evaluate": f"{len(rows)} predictions",
    }
    results["settings"] = {k: params[k].get("jobs") for k in ("demo", "align", "dynimg", "train")}
    if subset:
        results["subset"] = run_subset(work, root, rows, subset, p)
    return results


def run_subset(work: Path, root: Path, rows: list[dict], count: int, p: list[str]) -> dict:
    """align and dynimg on the first `count` clips only: the same clip lengths, fewer clips."""
    sub = work / "subset"
    folders = sorted(d for d in root.glob("*/*") if d.is_dir())[:count]
    for folder in folders:
        (sub / "root" / folder.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(folder, sub / "root" / folder.parent.name / folder.name)
    chosen = {(f.parent.name, f.name) for f in folders}
    kept = [r for r in rows if (r["subject"], r["clip"]) in chosen]
    with open(sub / "samples.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    aligned = sub / "aligned.h5"
    frames = sum(1 for f in folders for x in f.iterdir() if x.suffix.lower() == ".jpg")
    return {
        "align": run_stage(
            ["align", "--dataset", "casme2", "--root", str(sub / "root"), "--out", str(aligned), *p], sub
        ),
        "dynimg": run_stage(
            [
                "dynimg",
                "--aligned",
                str(aligned),
                "--samples",
                str(sub / "samples.csv"),
                "--classes",
                CLASSES,
                "--out",
                str(sub / "dynamic_images.h5"),
                *p,
            ],
            sub,
        ),
        "workload": f"{len(folders)} clips, {frames} frames -> {len(kept)} kept",
    }


def fmt(value: int) -> str:
    return f"{value / MIB:6.0f}" if value else "     -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mer-bench"))
    parser.add_argument("--epochs", type=int, default=1, help="train epochs per fold, both presets (params: 20)")
    parser.add_argument(
        "--subset", type=int, default=32, help="control: align and dynimg on the first N casme2-scale clips too"
    )
    parser.add_argument("--reuse-demo", action="store_true", help="use the cached casme2-scale demo copy")
    args = parser.parse_args()
    start = time.perf_counter()
    cached = casme2_scale(args.workdir)["root"].parents[1] if args.reuse_demo else None  # made once, not timed
    print(machine_line())
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="memory-") as tmp:
        for preset in ("tiny", "casme2-scale"):
            work = Path(tmp) / preset
            work.mkdir()
            demo = cached if preset == "casme2-scale" else None
            results[preset] = run_preset(
                preset, work, args.epochs, demo, args.subset if preset == "casme2-scale" else 0
            )
    tiny, big = results["tiny"], results["casme2-scale"]
    print(
        f"workload: CASME II layout, 640x480 frames, tiny vs casme2-scale demo presets; jobs {tiny['settings']}; "
        f"train {MODEL} {MODE}, {args.epochs} epoch(s) per fold on both"
    )
    print(
        "peak memory per stage, MiB (tree: sampled sum of RSS of the stage process and its workers; "
        "main / worker: exact VmHWM of the stage process / its largest worker)"
    )
    print(
        f"{'stage':<10} {'tiny tree':>9} {'main':>6} {'worker':>6}   {'c2s tree':>8} {'main':>6} {'worker':>6}  "
        f"{'ratio':>5}  {'c2s s':>6}  workload tiny | casme2-scale"
    )
    for stage in STAGES:
        a, b = tiny.get(stage), big.get(stage)
        if a is None or b is None:
            print(f"{stage:<10} (not measured: --reuse-demo)")
            continue
        ratio = b["tree"] / a["tree"]
        print(
            f"{stage:<10} {fmt(a['tree']):>9} {fmt(a['main'])} {fmt(a['worker'])}   {fmt(b['tree']):>8} {fmt(b['main'])} "
            f"{fmt(b['worker'])}  {ratio:5.2f}  {b['wall']:6.1f}  {tiny['workload'][stage]} | {big['workload'][stage]}"
        )
    sub = big.get("subset")
    if sub:
        print(
            f"control, same clip lengths (55-80 frames), fewer clips: casme2-scale's first {args.subset} clips "
            f"({sub['workload']}) vs all of them; MiB"
        )
        for stage in STREAMING:
            a, b = sub[stage], big[stage]
            print(
                f"  {stage:<8} tree {fmt(a['tree'])} -> {fmt(b['tree'])} ({b['tree'] / a['tree']:.2f}x), "
                f"main {fmt(a['main'])} -> {fmt(b['main'])} ({b['main'] / a['main']:.2f}x), "
                f"worker {fmt(a['worker'])} -> {fmt(b['worker'])} ({b['worker'] / a['worker']:.2f}x)"
            )
    for stage in STREAMING:
        ratio = big[stage]["tree"] / tiny[stage]["tree"]
        worker = (big[stage]["worker"] / tiny[stage]["worker"]) if tiny[stage]["worker"] else float("nan")
        verdict = "PASS" if ratio <= LIMIT else "FAIL"
        print(
            f"verdict {stage}: {verdict}, must not grow with the dataset: casme2-scale / tiny = {ratio:.2f} "
            f"(limit {LIMIT}); main {big[stage]['main'] / tiny[stage]['main']:.2f}, largest worker {worker:.2f} "
            f"(tiny clips are 10-16 frames, casme2-scale 55-80: a worker holds one clip)"
        )
    print(
        f"train grows by design: the whole DI set is loaded once as tensors (ratio "
        f"{big['train']['tree'] / tiny['train']['tree']:.2f})"
    )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"bench_memory took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
