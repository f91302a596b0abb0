"""Shared by the benchmark scripts: the machine line and the casme2-scale workload on disk."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def _mer(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stages", *args], check=True, cwd=PROJECT)


def casme2_scale(workdir: Path, jobs: int = 2) -> dict[str, Path]:
    """Generate (once) the casme2-scale demo copy, its aligned cache and samples table."""
    workdir.mkdir(parents=True, exist_ok=True)
    params = workdir / "params.yaml"
    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
    settings["demo"].update(preset="casme2-scale", format="casme2")
    params.write_text(yaml.safe_dump(settings, sort_keys=False))
    demo, aligned, samples = workdir / "demo", workdir / "aligned.h5", workdir / "samples.csv"
    root, coding = demo / "casme2" / "CASME2_RAW_selected", demo / "casme2" / "CASME2-coding-20140508.xlsx"
    if not demo.exists():
        print("generating the casme2-scale demo copy (once) ...", flush=True)
        _mer("demo-data", "--out", str(demo), "--params", str(params), "--jobs", str(jobs))
    if not aligned.exists():
        print("aligning it (once) ...", flush=True)
        _mer("align", "--dataset", "casme2", "--root", str(root), "--out", str(aligned), "--params", str(params), "--jobs", str(jobs))
    if not samples.exists():
        _mer("annotate", "--dataset", "casme2", "--root", str(root), "--coding", str(coding), "--classes", "casme2-5",
             "--out", str(samples), "--params", str(params))
    return {"params": params, "root": root, "coding": coding, "aligned": aligned, "samples": samples}
