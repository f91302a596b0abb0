"""The whole `dvc repro` of the bundled demo, from scratch, in a temporary copy of the project.

What it does, in one run:
  copy   - the git-tracked files of this checkout (working-tree versions, or HEAD with --source head)
           into a temporary folder, without dvc.lock and the committed metrics/curves, `git init`;
  repro  - `dvc repro` there, every stage from nothing (no DVC cache, no outputs);
and prints the wall time of the whole repro, per stage the wall time between dvc's
"Running stage 'x'" lines (so each stage's figure includes dvc's hashing/caching of its outputs),
the peak memory (see below), the params preset that ran (and what differs from the README's
`dvc repro`), the arithmetic of the training (samples through forward + backward over every fold,
read from the run folders' manifests, and their FLOPs as torch counts them) and the resulting
metrics, read from cache/metrics/*.json.

Memory, two figures:
  tree peak    the peak of the summed resident memory (RSS) of `dvc` and all its descendants
               (stage commands and their joblib/loky workers), sampled every 0.1 s; also per stage.
               Pages shared between processes (libraries) are counted once per process.
  largest      resource.getrusage(RUSAGE_CHILDREN).ru_maxrss: the exact high-water mark of the
               single largest process among the descendants that were waited for. It is a max over
               single processes, not a sum over the tree.

Presets: `demo` (the default) is exactly what `dvc repro` in the README runs; `tiny` is a quick check
(tiny demo data, 2 epochs). `--epochs` and `--cpu-kernels` are what-ifs on top of either; the preset
line then says what differs from the README's `dvc repro`.

Usage: python -m benchmarks.bench_repro [--preset demo|tiny] [--epochs N] [--cpu-kernels portable|native]
       [--keep DIR] [--source worktree|head]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from benchmarks.workload import PROJECT, TreeMemory, machine_line

MIB = 1024 * 1024
# Tracked files that are outputs of the pipeline: left out so the repro starts from nothing.
LEFT_OUT = re.compile(r"^(dvc\.lock|cache/metrics/.+|cache/plots/.+)$")
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def _git(*args: str, cwd: Path = PROJECT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copy_project(dest: Path, source: str) -> str:
    """Copy the tracked files into dest and make it a git repo; returns a provenance line."""
    head = _git("rev-parse", "--short", "HEAD").strip()
    if source == "head":
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=PROJECT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        origin = f"commit {head}"
    else:
        for name in _git("ls-files", "-z").split("\0"):
            if name and (PROJECT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(PROJECT / name, dest / name)
        changed = [line for line in _git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
        origin = f"working tree at commit {head}" + (f" with {len(changed)} tracked files changed" if changed else "")
    for path in list(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        if path.is_file() and LEFT_OUT.match(rel):
            path.unlink()
    _git("init", "-q", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "bench copy", cwd=dest)
    return origin


def set_params(dest: Path, preset: str, epochs: int | None, cpu_kernels: str | None = None) -> tuple[dict, list[str]]:
    """Write the preset's params into the copy; returns them and what differs from params.yaml."""
    original = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = yaml.safe_load((dest / "params.yaml").read_text())
    if preset == "tiny":
        epochs = 2 if epochs is None else epochs
        params["demo"]["preset"] = "tiny"
    if epochs is not None:  # models.NAME.epochs would override train.epochs for its cells
        params["train"]["epochs"] = epochs
        for entry in (params.get("models") or {}).values():
            if isinstance(entry, dict) and "epochs" in entry:
                entry["epochs"] = epochs
    if cpu_kernels is not None:
        params["train"]["cpu_kernels"] = cpu_kernels
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    differs = []
    for key, (old, new) in {
        "demo.preset": (original["demo"]["preset"], params["demo"]["preset"]),
        "train.epochs": (original["train"]["epochs"], params["train"]["epochs"]),
        "train.cpu_kernels": (original["train"]["cpu_kernels"], params["train"]["cpu_kernels"]),
    }.items():
        if old != new:
            differs.append(f"{key} {new} (README's repro: {old})")
    return params, differs


def run_repro(project: Path, log_path: Path) -> dict:
    """`dvc repro` in project; wall time, stage start times, memory figures, the log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # the copy's own code: `mer` would otherwise import the project where it is installed (this
    # checkout, editable), whatever commit was copied
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))
    env.pop("DVC_NO_ANALYTICS", None)
    starts: list[tuple[str, float]] = []
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        with TreeMemory(process.pid, interval=0.1) as sampler:
            for line in process.stdout:
                now = time.perf_counter() - start
                log.write(line)
                match = STAGE_LINE.search(line)
                if match:
                    starts.append((match.group(1), now))
                    sampler.label = match.group(1)
            rc = process.wait()
            wall = time.perf_counter() - start
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    if rc != 0:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"dvc repro failed (exit {rc}); log: {log_path}")
    stages = []
    for i, (name, t0) in enumerate(starts):
        t1 = starts[i + 1][1] if i + 1 < len(starts) else wall
        stages.append((name, t1 - t0, sampler.per_label.get(name, 0)))
    return {
        "wall": wall,
        "stages": stages,
        "tree_peak": sampler.peak,
        "largest_kib": largest,
        "before_stages": starts[0][1] if starts else wall,
    }


def workload_line(project: Path, params: dict) -> str:
    parts = []
    for ds in params["datasets"]:
        samples = project / "cache" / "samples" / f"{ds}.csv"
        if samples.is_file():
            with open(samples) as handle:
                n = sum(1 for _ in handle) - 1
            parts.append(f"{ds} {n} clips")
    exp = params["experiment"]
    cells = len(exp["datasets"]) * len(exp["models"]) * len(exp["modes"]) * len(exp.get("seeds") or [0])
    models = params.get("models") or {}
    epochs = {m: (models.get(m) or {}).get("epochs", params["train"]["epochs"]) for m in exp["models"]}
    return (
        f"workload: demo preset '{params['demo']['preset']}' ({', '.join(parts)} after the class presets); "
        f"{cells} train/evaluate cells ({' x '.join('/'.join(exp[k]) for k in ('datasets', 'models', 'modes'))} x "
        f"seeds {'/'.join(map(str, exp.get('seeds') or [0]))}), epochs per LOSO fold "
        f"{', '.join(f'{m} {e}' for m, e in epochs.items())}, jobs: demo {params['demo']['jobs']}, "
        f"align {params['align']['jobs']}, dynimg {params['dynimg']['jobs']}, train {params['train']['jobs']}"
    )


def training_arithmetic(project: Path) -> tuple[int, float]:
    """(samples through forward + backward, GFLOP) of every fold of every run: what training
    computes whatever the kernels (FLOPs per sample counted by torch on one batch of each model)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.train.fold import steps_per_epoch
    from pipeline.train.models import build_model

    passes, gflop, per_sample = 0, 0.0, {}
    for run_file in sorted((project / "cache" / "runs").glob("*/run.json")):
        run = json.loads(run_file.read_text())
        settings, classes = run["params"], len(run["label_names"])
        key = (settings["model"], settings["input_size"], classes)
        if key not in per_sample:
            model = build_model(settings["model"], classes, input_size=settings["input_size"])
            x = torch.rand(2, 3, settings["input_size"], settings["input_size"])
            with FlopCounterMode(display=False) as counted:
                F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
            per_sample[key] = counted.get_total_flops() / 2 / 1e9
        for manifest_file in (run_file.parent / "folds").glob("*/manifest.json"):
            fold = json.loads(manifest_file.read_text())
            n, steps = fold["n_train_samples"], fold["optimizer_steps"]
            epoch_steps = steps_per_epoch(n, settings["batch_size"])
            samples = (steps // epoch_steps) * n + min((steps % epoch_steps) * settings["batch_size"], n)
            passes += samples
            gflop += samples * per_sample[key]
    return passes, gflop


def metrics_table(project: Path) -> list[str]:
    rows = ["cell                          n  accuracy [95% CI]      UF1 [95% CI]           UAR [95% CI]"]
    for path in sorted((project / "cache" / "metrics").glob("*.json")):
        m = json.loads(path.read_text())
        ci = m.get("intervals", {})
        cells = []
        for key in ("accuracy", "uf1", "uar"):
            low, high = ci.get(key, (float("nan"), float("nan")))
            cells.append(f"{m[key]:.3f} [{low:.3f}, {high:.3f}]")
        rows.append(f"{path.stem:<28} {m.get('n_samples', '?'):>3}  {'  '.join(cells)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=("demo", "tiny"),
        default="demo",
        help="demo: what the README's `dvc repro` runs; tiny: a quick check (2 epochs)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="what-if: override train.epochs")
    parser.add_argument(
        "--cpu-kernels",
        choices=("portable", "native"),
        default=None,
        help="what-if: override train.cpu_kernels (native: each library's fastest code for this processor, "
        "results tied to it)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="reproduce in this (new or empty) folder and keep it")
    parser.add_argument(
        "--source",
        choices=("worktree", "head"),
        default="worktree",
        help="copy the working-tree versions of the tracked files, or commit HEAD",
    )
    args = parser.parse_args()
    if args.keep:
        if args.keep.exists() and any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep}: folder exists and is not empty")
        args.keep.mkdir(parents=True, exist_ok=True)
        project, tmp = args.keep.resolve(), None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mer-repro-")
        project = Path(tmp.name)
    try:
        origin = copy_project(project, args.source)
        params, differs = set_params(project, args.preset, args.epochs, args.cpu_kernels)
        print(machine_line())
        print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"project: {origin}, copied to {project}")
        print(
            "preset: "
            + (
                "identical to the README's `dvc repro`"
                if not differs
                else "DIFFERS from the README's `dvc repro`: " + "; ".join(differs)
            )
        )
        result = run_repro(project, project / "dvc-repro.log")
        print(workload_line(project, params))
        print(
            f"dvc repro, from scratch: {result['wall']:7.1f} s  ({int(result['wall'] // 60)} min {int(result['wall'] % 60):02d} s), "
            f"{len(result['stages'])} stages; dvc start-up before the first stage {result['before_stages']:.1f} s"
        )
        print(f"peak memory, whole process tree (sampled sum of RSS): {result['tree_peak'] / MIB:7.0f} MiB")
        print(
            f"peak memory, largest single process (ru_maxrss of children, a max not a sum): {result['largest_kib'] / 1024:7.0f} MiB"
        )
        print("per stage (from its 'Running stage' line to the next; includes dvc saving its outputs):")
        print("  stage                                   wall s   share   tree peak MiB")
        for name, seconds, peak in result["stages"]:
            print(f"  {name:<38} {seconds:7.1f}  {100 * seconds / result['wall']:5.1f} %  {peak / MIB:8.0f}")
        passes, gflop = training_arithmetic(project)
        train_wall = sum(seconds for name, seconds, _ in result["stages"] if name.startswith("train@"))
        print(
            f"training: {passes:,} samples through forward + backward, {gflop:,.0f} GFLOP "
            f"({gflop / train_wall / params['train']['jobs']:.1f} GFLOPS per fold process over the train stages' "
            f"{train_wall:.0f} s, {params['train']['jobs']} at a time; "
            "`python -m benchmarks.bench_kernels` prints what the matrix products alone reach)"
        )
        print("metrics (cache/metrics/*.json; pooled LOSO, subject-bootstrap intervals):")
        for row in metrics_table(project):
            print("  " + row)
        print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if args.keep:
            print(f"kept: {project} (log: {project / 'dvc-repro.log'})")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
