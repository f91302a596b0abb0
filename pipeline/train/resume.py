"""What lets an interrupted run resume: its work folder, its lock and its run key.

Finished folds live in a work folder beside the output, `<out parent>/.<out name>.partial/`, which
exists only while a run is unfinished:

    .<name>.partial/resume.json          the run key: a sha256 of everything the numbers depend on
                                         (settings but jobs/backend/scheduler/missing_class, the torch
                                         threads per fold, a digest of the DI cache's samples, labels
                                         and the images of the phases the run reads, the sha256 of a
                                         local weights file, code and torch versions)
    .<name>.partial/folds/<fold>/        one finished fold (written under a temporary name, renamed
                                         when complete: a fold folder that exists is finished)
    .<name>.partial/timings/<fold>.json  that fold's training time

A rerun with the same key trains only the missing folds; a different key (or `fresh`) discards the
work folder first. A finished run records its key in run.json (`run_key`): a rerun with the same key
keeps the run folder as it is instead of training again (`reusable_run`), so a DI cache whose other
phases changed does not retrain a cell that does not read them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import __version__
from pipeline.atomic import atomic_output
from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import DynamicImageSet
from pipeline.train.data import fold_dir_name
from pipeline.train.models.pretrained import file_sha256
from pipeline.train.settings import TrainSettings


def work_folder(out: str | Path) -> Path:
    """The work folder of a run: `<out parent>/.<out name>.partial/` (see the module docstring)."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


@contextlib.contextmanager
def exclusive_run(out: str | Path) -> Iterator[None]:
    """Hold the lock of the run `out` (`.<out name>.partial.lock` beside it) for the block.

    Two `mer train` processes writing the same run would train into one work folder and corrupt
    each other's folds; the second is refused instead. The lock is an flock, so the system releases
    it when its holder dies, even by SIGKILL; the empty lock file stays (DVC ignores it).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = work_folder(out).with_name(f"{work_folder(out).name}.lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MerError(
                f"another `mer train` is writing {out} (it holds {path}); wait for it to finish or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dynamic_images_digest(
    di: DynamicImageSet, phases: Sequence[str], jitter_phases: Sequence[str] = ()
) -> dict[str, Any]:
    """What a run's numbers depend on in the DI cache: the samples (ids, datasets, subjects, labels),
    the label names and the images of the phases used (and the jittered DIs of `jitter_phases`, for
    the jitter mode). Not the cache's fingerprint nor its params: they change with phases the run
    does not read."""
    samples = hashlib.sha256()
    for name in ("sample_id", "dataset", "subject", "label"):
        samples.update("\x1f".join(map(str, np.asarray(di.samples[name]).tolist())).encode() + b"\x1e")
    return {
        "samples_sha256": samples.hexdigest(),
        "label_names": list(di.label_names),
        "images_sha256": {
            p: hashlib.sha256(np.ascontiguousarray(di.images[p]).tobytes()).hexdigest() for p in dict.fromkeys(phases)
        },
        **(
            {
                "jitter_sha256": {
                    p: hashlib.sha256(np.ascontiguousarray(di.jitter(p)).tobytes()).hexdigest() for p in jitter_phases
                }
            }
            if jitter_phases
            else {}
        ),
    }


def _code_digest() -> str:
    """sha256 of the code a run's files depend on: every module of `pipeline/train/` (subpackages
    included), of `pipeline/io/` (the run files' and the DI cache's formats) and the shared modules
    of `pipeline/`. A change there invalidates finished folds and finished runs."""
    digest = hashlib.sha256()
    root = Path(__file__).parents[1]
    paths = [*root.glob("*.py"), *(root / "io").rglob("*.py"), *Path(__file__).parent.rglob("*.py")]
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_key(settings: TrainSettings, inputs: Mapping[str, Any], threads: int | None) -> dict[str, Any]:
    """Everything a run's numbers depend on, and its sha256 under `key`.

    `threads` is the torch threads per fold (None: decided by each Dask worker); predictions differ
    by about 1e-5 between thread counts, so it is part of the key. A local weights file enters by its
    sha256 (`weights_sha256`): a new file under the same name trains again.
    """
    inputs = dict(inputs)
    if settings.weights and Path(settings.weights).is_file():
        inputs["weights_sha256"] = file_sha256(settings.weights)
    content = {
        "settings": {**settings.result_settings(), "threads": "worker" if threads is None else threads},
        "inputs": inputs,
        "code_sha256": _code_digest(),
        "tool_version": __version__,
        "torch_version": torch.__version__,
    }
    return {"key": hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest(), "content": content}


def reusable_run(out: str | Path, key: Mapping[str, Any]) -> bool:
    """Whether the finished run folder `out` was trained under the run key `key` (its run.json
    `run_key`): then training again would give the same files, and the folder is kept as it is."""
    try:
        previous = json.loads((Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(previous, dict) and previous.get("run_key") == key["key"]


def _changed(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two key contents."""
    names = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names += _changed(a, b, f"{prefix}{name}.")
        elif a != b:
            names.append(f"{prefix}{name}")
    return names


def open_work_folder(
    out: str | Path, key: Mapping[str, Any], folds: Sequence[str], fresh: bool = False
) -> tuple[Path, list[str], str | None]:
    """The work folder for `out` with the run key `key`: (folder, finished folds, message).

    A work folder of another key (or any, with `fresh`) is deleted first, and the message says why.
    """
    work = work_folder(out)
    message = None
    if work.exists():
        done = sorted(p.name for p in (work / "folds").glob("*") if p.is_dir() and not p.name.startswith("."))
        previous = None
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads((work / "resume.json").read_text())
        if fresh:
            reason = "--fresh"
        elif not isinstance(previous, dict) or "key" not in previous:
            reason = "it has no readable resume.json"
        elif previous["key"] != key["key"]:
            changed = _changed(previous.get("content") or {}, key["content"])
            reason = f"{', '.join(changed) or 'the run key'} changed"
        else:
            reason = None
        if reason is not None:
            shutil.rmtree(work)
            message = f"discarding {len(done)} finished fold(s) in {work}: {reason}; training every fold"
    work.mkdir(parents=True, exist_ok=True)
    with atomic_output(work / "resume.json") as tmp:
        tmp.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    finished = [fold for fold in folds if (work / "folds" / fold_dir_name(fold)).is_dir()]
    if finished:
        message = f"resuming: {len(finished)} of {len(folds)} folds already trained in {work}"
    return work, finished, message
