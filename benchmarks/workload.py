"""Shared by the benchmark scripts: the machine line and the casme2-scale workload on disk."""

from __future__ import annotations

import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

import h5py
import yaml

from pipeline.io.hdf5 import FAST_CHECKSUM

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


def _has_fast_checksum(aligned: Path) -> bool:
    """Whether the aligned cache was written with the frames' fast checksum (older ones are read
    with the slower sha256 check, which would time another code path)."""
    with h5py.File(aligned, "r") as handle:
        subject = next(iter(handle))
        clip = next(iter(handle[subject]))
        return FAST_CHECKSUM in handle[subject][clip]["frames"].attrs


def casme2_scale(workdir: Path, jobs: int = 2, preset: str = "casme2-scale") -> dict[str, Path]:
    """Generate (once) the `preset` demo copy (casme2-scale by default), its aligned cache and samples table."""
    workdir.mkdir(parents=True, exist_ok=True)
    params = workdir / "params.yaml"
    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
    settings["demo"].update(preset=preset, format="casme2")
    params.write_text(yaml.safe_dump(settings, sort_keys=False))
    demo, aligned, samples = workdir / "demo", workdir / "aligned.h5", workdir / "samples.csv"
    root, coding = demo / "casme2" / "CASME2_RAW_selected", demo / "casme2" / "CASME2-coding-20140508.xlsx"
    if not demo.exists():
        print("generating the casme2-scale demo copy (once) ...", flush=True)
        _mer("demo-data", "--out", str(demo), "--params", str(params), "--jobs", str(jobs))
    if aligned.exists() and not _has_fast_checksum(aligned):
        print(f"{aligned} predates the frames' {FAST_CHECKSUM}: aligning again", flush=True)
        aligned.unlink()
    if not aligned.exists():
        print("aligning it (once) ...", flush=True)
        _mer(
            "align",
            "--dataset",
            "casme2",
            "--root",
            str(root),
            "--out",
            str(aligned),
            "--params",
            str(params),
            "--jobs",
            str(jobs),
        )
    if not samples.exists():
        _mer(
            "annotate",
            "--dataset",
            "casme2",
            "--root",
            str(root),
            "--coding",
            str(coding),
            "--classes",
            "casme2-5",
            "--out",
            str(samples),
            "--params",
            str(params),
        )
    return {"params": params, "root": root, "coding": coding, "aligned": aligned, "samples": samples}


def best_of_each(repeat: int, runs: Mapping[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """(wall, cpu) seconds of each `run()` in this process, each the best of `repeat` runs, the runs
    taken in turn (first one in a round, then the next, ...: a slow spell of a shared machine then
    falls on all of them alike instead of on whichever ran during it)."""
    walls: dict[str, list[float]] = {label: [] for label in runs}
    cpus: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeat):
        for label, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            walls[label].append(time.perf_counter() - wall)
            cpus[label].append(time.process_time() - cpu)
    return {label: (min(walls[label]), min(cpus[label])) for label in runs}


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, float]:
    """(wall, cpu) seconds of `run()` in this process, each the best of `repeat` runs."""
    return best_of_each(repeat, {"run": run})["run"]


def _alone_and_together(
    prepare: Callable[..., Callable[[], object]], args: tuple, index: int, rounds: int, barrier, results
) -> None:
    alone, together = [], []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            work = prepare(Path(scratch), *args)
            for _ in range(rounds):
                for turn in range(2):  # one copy works, the other waits at the barrier
                    barrier.wait(timeout=600)  # a sibling killed outright times it out instead of hanging this one
                    if turn == index:
                        alone.append(best_of(1, work)[0])
                    barrier.wait(timeout=600)
                together.append(best_of(1, work)[0])  # both leave the last barrier at once
    except BaseException:
        barrier.abort()  # the sibling stops waiting at once
        raise
    results.put((index, (min(alone), min(together))))


def two_at_once(
    prepare: Callable[..., Callable[[], object]], *args: object, rounds: int = 1
) -> list[tuple[float, float]]:
    """(alone, together) wall seconds of two spawned processes each running `prepare(scratch, *args)()`,
    best of `rounds`: in each round each copy alone while the other waits, then both at the same
    time (`prepare` loads and warms up, and returns the work to time; `scratch` is a folder of its
    own for what the work writes). Both figures come from the same two processes, taken in turn, so
    that neither the parent's state (its pools, its heap) nor a slow minute falls on one side only:
    the ratio is what the two cores give two copies of one process's work once they share the memory
    bus and the L3 cache. No split of that work over two processes can do better."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    children = [
        context.Process(target=_alone_and_together, args=(prepare, args, index, rounds, barrier, results))
        for index in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    if any(child.exitcode for child in children):
        raise SystemExit(f"two_at_once: a child process failed (exit codes {[child.exitcode for child in children]})")
    timings = dict(results.get() for _ in children)
    return [timings[index] for index in range(2)]


def split_ceiling_line(copies: list[tuple[float, float]]) -> str:
    """What `two_at_once` found, as the benchmarks print it: each copy's seconds alone and at once,
    and the ceiling that gives any split of the work over two processes (two copies' work in their
    mean time at once, against one copy's in its mean time alone)."""
    alone, together = [a for a, _ in copies], [t for _, t in copies]
    ceiling = 2 * sum(alone) / sum(together)
    return (
        f"two copies of the jobs-1 work (two processes, no pool), each alone then both at once, in turn: "
        f"alone {alone[0]:.2f} and {alone[1]:.2f} s, at once {together[0]:.2f} and {together[1]:.2f} s,\n"
        f"  so no split over two processes gets jobs1 / jobs2 above {ceiling:.2f} on this machine"
    )


def _hwm_bytes(pid: int) -> int:
    """VmHWM (the kernel's exact peak resident set) of one process, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class TreeMemory:
    """Memory of a running process and all its descendants (e.g. joblib/loky workers), sampled.

    `peak`: the peak of the summed RSS over the tree (shared library pages count once per process);
    `per_label`: the same peak per value `label` had while sampling (e.g. the DVC stage running);
    `main_hwm` / `worker_hwm`: the kernel's exact peak RSS (VmHWM) of the root process and of the
    largest descendant, as last read while they were alive.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil  # a dependency of dask.distributed, hence installed with the project

        self._psutil, self.root = psutil, psutil.Process(pid)
        self.interval, self.peak, self.label, self.per_label = interval, 0, None, {}
        self.main_hwm, self.worker_hwm, self.processes = 0, 0, {pid}
        self._stop = threading.Event()

    def sample(self) -> None:
        psutil = self._psutil
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for process in tree:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
            self.processes.add(process.pid)
            hwm = _hwm_bytes(process.pid)
            if process.pid == self.root.pid:
                self.main_hwm = max(self.main_hwm, hwm)
            else:
                self.worker_hwm = max(self.worker_hwm, hwm)
        self.peak = max(self.peak, total)
        if self.label is not None:
            self.per_label[self.label] = max(self.per_label.get(self.label, 0), total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
