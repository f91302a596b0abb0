"""Check that this installation reproduces the committed data stages byte for byte.

Copies the project (its git-tracked and not-ignored files, no caches) into a temporary folder, runs
`dvc repro` of every `dynimg@DS` stage there (so demo_data, align@DS, annotate@DS and dynimg@DS run,
with the committed params.yaml), and compares the md5 of every output of those stages, as DVC
records it in the new dvc.lock, with the committed dvc.lock. Both lock files are read with DVC's own
lock-file loader. Exits non-zero and names each output that differs.

    python -m tests.check_data_stages [--keep]

CI (`.ci/run`) runs it after the tests; on the demo preset it takes about 3 minutes on 2 cores
(README "Reproducibility"). Training is not checked here: see `train.cpu_kernels`.
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


def lock_outs(root: Path) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} of the data stages in root/dvc.lock, through DVC's loader."""
    from dvc.dvcfile import Lockfile
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = Lockfile(repo, str(root / "dvc.lock")).load()["stages"]
    return {
        name: {out["path"]: out["md5"] for out in stage.get("outs", [])}
        for name, stage in stages.items()
        if name == DATA_STAGES[0] or name.startswith(DATA_STAGES[1:])
    }


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
    args = parser.parse_args()
    expected = lock_outs(PROJECT)
    targets = sorted(name for name in expected if name.startswith("dynimg@"))
    if not targets:
        print(f"{PROJECT / 'dvc.lock'} records no dynimg stage", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="mer-data-stages-"))
    try:
        copy_project(folder)
        env = {**os.environ, "PYTHONPATH": str(folder)}  # `mer` runs the copy's code
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        started = time.perf_counter()
        # --no-commit: DVC hashes the outputs into dvc.lock without copying them into its cache
        done = subprocess.run(["dvc", "repro", "--no-commit", *targets], cwd=folder, env=env)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(f"dvc repro {' '.join(targets)} failed (exit {done.returncode})", file=sys.stderr)
            return 1
        found = lock_outs(folder)
        problems = []
        for stage, outs in sorted(expected.items()):
            for path, md5 in sorted(outs.items()):
                got = found.get(stage, {}).get(path)
                if got != md5:
                    problems.append(f"{stage}: {path}: md5 {got} here, {md5} in the committed dvc.lock")
        checked = sum(len(outs) for outs in expected.values())
        if problems:
            print(f"{len(problems)} of {checked} data-stage outputs differ from dvc.lock:", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(f"the {checked} outputs of {len(expected)} data stages match dvc.lock ({seconds:.0f} s of dvc repro)")
        return 0
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
