"""Check that this installation reproduces the committed data stages byte for byte.

Copies the project (its git-tracked and not-ignored files, no caches) into a temporary folder, runs
`dvc repro` of every `dynimg@DS` stage there (so demo_data, align@DS, annotate@DS and dynimg@DS run,
with the committed params.yaml), and compares the md5 of every output of those stages, as DVC
records it in the new dvc.lock, with the committed dvc.lock. Both lock files are read with DVC's own
lock-file loader. Exits non-zero and names each output that differs.

    python -m tests.check_data_stages [--keep] [--processor x86-64-v2] [--train CELL ...]

`--processor` runs the stages as on an older x86-64 processor: the libraries that pick instruction
sets at run time are told this machine lacks the newer ones (numpy's, OpenCV's and IPP's SIMD
dispatch, OpenBLAS's kernel, the processor numba compiles the DI kernel for, glibc's math-function
variants). `mer` pins the first four itself (pipeline/cpu_dispatch.py) and torch's in training
(`train.cpu_kernels`), so this checks that every process applies those pins and that what stays
unpinned (numba's code, glibc) leaves the bytes alone. `--train
CELL` (e.g. `casme2-learnet-baseline-0`) also trains that cell of the experiment and compares its
run folder and curve.

CI (`.ci/run`) runs it after the tests; on the demo preset the data stages take about 3 minutes on
2 cores (README "Reproducibility").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("demo_data", "align@", "annotate@", "dynimg@")

# What each library would find on an older processor, set through the switches each documents:
# numpy's SIMD dispatch (NPY_DISABLE_CPU_FEATURES), OpenCV's (OPENCV_CPU_DISABLE), IPP's
# (OPENCV_IPP) and libjpeg-turbo's (JSIMD_FORCESSE2), OpenBLAS's kernel (OPENBLAS_CORETYPE), the
# processor numba compiles the DI kernel for (NUMBA_CPU_NAME; its cache is kept per processor) and
# glibc's choice of libm variants (GLIBC_TUNABLES glibc.cpu.hwcaps, read by the loader: only
# processes started with it see it).
_NO_AVX512 = "-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL"
PROCESSORS = {
    "native": {},
    "x86-64-v3": {  # AVX2 and FMA, no AVX-512 (Haswell to Coffee Lake, Zen 1-3)
        "OPENBLAS_CORETYPE": "Haswell",
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": "",  # the named processor's own features, not this machine's
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "OPENCV_CPU_DISABLE": "AVX512-SKX",
        "OPENCV_IPP": "avx2",
        "GLIBC_TUNABLES": f"glibc.cpu.hwcaps={_NO_AVX512}",
    },
    "x86-64-v2": {  # SSE4.2, no AVX (Nehalem to Westmere)
        "OPENBLAS_CORETYPE": "Nehalem",
        "NUMBA_CPU_NAME": "nehalem",
        "NUMBA_CPU_FEATURES": "",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
        "OPENCV_CPU_DISABLE": "AVX,FP16,AVX2,AVX512-SKX",
        "OPENCV_IPP": "sse42",
        "JSIMD_FORCESSE2": "1",  # libjpeg-turbo (inside OpenCV) without its AVX2 paths
        "GLIBC_TUNABLES": f"glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-FMA4,-F16C,{_NO_AVX512}",
    },
}


def lock_outs(root: Path, train: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} of the data stages (and the `train@CELL` stages) in root/dvc.lock,
    through DVC's loader."""
    from dvc.dvcfile import Lockfile
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = Lockfile(repo, str(root / "dvc.lock")).load()["stages"]
    return {
        name: {out["path"]: out["md5"] for out in stage.get("outs", [])}
        for name, stage in stages.items()
        if name == DATA_STAGES[0] or name.startswith(DATA_STAGES[1:]) or name in {f"train@{c}" for c in train}
    }


def differences(expected: dict[str, dict[str, str]], root: Path, train: tuple[str, ...], processor: str) -> list[str]:
    """One line per output of `expected` ({stage: {out path: md5}}) whose md5 in root/dvc.lock differs."""
    found = lock_outs(root, train)
    return [
        f"{stage}: {path}: md5 {found.get(stage, {}).get(path)} here ({processor}), {md5} in the committed dvc.lock"
        for stage, outs in sorted(expected.items())
        for path, md5 in sorted(outs.items())
        if found.get(stage, {}).get(path) != md5
    ]


def copy_project(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = PROJECT / name
        if source.is_file():  # a file deleted but not yet staged is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and print where it is")
    parser.add_argument(
        "--processor", choices=sorted(PROCESSORS), default="native", help="run as on this processor level"
    )
    parser.add_argument("--train", nargs="*", default=[], metavar="CELL", help="also train these cells and compare")
    args = parser.parse_args()
    expected = lock_outs(PROJECT, tuple(args.train))
    missing = [cell for cell in args.train if f"train@{cell}" not in expected]
    if missing:
        print(f"{PROJECT / 'dvc.lock'} records no train@{missing[0]}", file=sys.stderr)
        return 1
    targets = sorted(name for name in expected if name.startswith(("dynimg@", "train@")))
    if not targets:
        print(f"{PROJECT / 'dvc.lock'} records no dynimg stage", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="mer-data-stages-"))
    try:
        copy_project(folder)
        env = {**os.environ, **PROCESSORS[args.processor], "PYTHONPATH": str(folder)}  # `mer` runs the copy's code
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        started = time.perf_counter()
        # --no-commit: DVC hashes the outputs into dvc.lock without copying them into its cache
        done = subprocess.run(["dvc", "repro", "--no-commit", *targets], cwd=folder, env=env)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(f"dvc repro {' '.join(targets)} failed (exit {done.returncode})", file=sys.stderr)
            return 1
        problems = differences(expected, folder, tuple(args.train), args.processor)
        checked = sum(len(outs) for outs in expected.values())
        if problems:
            print(f"{len(problems)} of {checked} outputs differ from dvc.lock:", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(
            f"the {checked} outputs of {len(expected)} stages match dvc.lock, run as {args.processor} "
            f"({seconds:.0f} s of dvc repro)"
        )
        return 0
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
