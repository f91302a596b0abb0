"""Outputs that do not depend on the processor: `mer` pins numpy's, OpenCV's, IPP's and OpenBLAS's code
paths (pipeline/cpu_dispatch.py), so the demo frames and the DIs come out with the same bytes whatever
instruction sets the machine has. Other processors are played by telling each library this machine
lacks the newer instruction sets (the switches tests/check_data_stages.py --processor uses)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from pipeline.cpu_dispatch import CAPS, DISABLED_FEATURES, pin_cpu_dispatch
from pipeline.errors import MerError
from tests.check_data_stages import PROCESSORS

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="pins are for x86-64")

# Renders one demo clip (numpy's exp/sin/power, OpenCV's remap and blur, JPEG) and computes its DIs
# (the tiled kernel and the uint8 mapping); prints the md5 of every byte produced.
PROBE = """
import hashlib
import tests  # the pins, as `mer` applies them
import numpy as np
from pipeline.demo.generate import encode_jpeg
from pipeline.demo.motion import render_clip
from pipeline.demo.plan import build_plan
from pipeline.dynimg.phases import parse_phases
from pipeline.dynimg.rank_pooling import clip_dynamic_images

clip = build_plan("casme2", "demo", 0, check_faces=False).clips[0]
frames = render_clip(clip, 0)
numbers = np.asarray(clip.frame_numbers)
phases = parse_phases({"full": ["onset", "offset"], "onset_apex": ["onset", "apex"], "apex_offset": ["apex", "offset"]})
onset, apex, offset = int(numbers[0]), int(numbers[len(numbers) // 2]), int(numbers[-1])
digest = hashlib.md5(frames.tobytes())
digest.update(b"".join(encode_jpeg(f) for f in frames[:3]))
for size in (None, 112, 100):
    images = clip_dynamic_images(frames, numbers, onset, apex, offset, phases, size=size)[0]
    digest.update(b"".join(image.tobytes() for image in images.values()))
print(digest.hexdigest())
"""


def _run_probe(extra_env: dict[str, str]) -> str:
    env = _unpinned_env()
    env.update(extra_env, PYTHONPATH=PROJECT)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@x86_only
def test_demo_frames_and_dynamic_images_have_the_same_bytes_on_older_processors():
    """AVX2-only and SSE4.2-only machines (played here) give the bytes this machine gives."""
    here = _run_probe({})
    assert _run_probe(PROCESSORS["x86-64-v3"]) == here
    assert _run_probe(PROCESSORS["x86-64-v2"]) == here


def test_pins_add_to_features_already_switched_off_and_set_the_caps():
    environ = {"NPY_DISABLE_CPU_FEATURES": "AVX512F X86_V4", "OPENBLAS_CORETYPE": "SkylakeX"}
    changed = pin_cpu_dispatch(environ)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert changed == {}
        return
    numpy_off = environ["NPY_DISABLE_CPU_FEATURES"].split()
    assert numpy_off[:2] == ["AVX512F", "X86_V4"] and "X86_V3" in numpy_off
    assert len(numpy_off) == len(set(numpy_off))
    assert environ["OPENCV_CPU_DISABLE"].split(",") == list(DISABLED_FEATURES["OPENCV_CPU_DISABLE"][1])
    assert environ["OPENBLAS_CORETYPE"] == "Nehalem" and environ["OPENCV_IPP"] == "sse42"
    assert pin_cpu_dispatch(environ) == {}  # pinning twice changes nothing


def test_native_leaves_every_library_free_and_an_unknown_mode_is_refused():
    environ = {"MER_CPU_DISPATCH": "native"}
    assert pin_cpu_dispatch(environ) == {} and environ == {"MER_CPU_DISPATCH": "native"}
    with pytest.raises(MerError, match="MER_CPU_DISPATCH='fast': allowed: portable"):
        pin_cpu_dispatch({"MER_CPU_DISPATCH": "fast"})


def test_mer_refuses_an_unknown_dispatch_mode_in_one_line():
    env = {**os.environ, "MER_CPU_DISPATCH": "fast"}
    done = subprocess.run(["mer", "--version"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "Error: environment variable MER_CPU_DISPATCH='fast': allowed: portable (default) or native"
    )


def _unpinned_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (*DISABLED_FEATURES, *CAPS, "MER_CPU_DISPATCH")}


@x86_only
def test_doctor_reports_the_pinned_code_paths():
    """`mer` pins by itself: started without any of the variables, its libraries run the pinned paths."""
    env = {**_unpinned_env(), "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
    done = subprocess.run(["mer", "doctor"], capture_output=True, text=True, cwd=PROJECT, env=env)
    line = next(line for line in done.stdout.splitlines() if "CPU dispatch" in line)
    assert line.startswith("ok    CPU dispatch: portable: numpy")
    assert "SIMD beyond its baseline: none" in line and "OpenBLAS kernels: Nehalem" in line
    assert "numba compiles the DI kernel for: haswell" in line  # numba is told, not capped


@x86_only
def test_the_check_fails_where_numpy_was_loaded_before_the_pins():
    code = (
        "import numpy, cv2\n"
        "from pipeline.cpu_dispatch import dispatch_state\n"
        "try:\n    dispatch_state()\nexcept RuntimeError as exc:\n    print(exc)\nelse:\n    print('accepted')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**_unpinned_env(), "PYTHONPATH": PROJECT}, capture_output=True, text=True
    )
    with open("/proc/cpuinfo") as info:
        has_avx2 = " avx2" in info.read()
    if has_avx2:  # numpy and OpenCV then run AVX2 code unless pinned
        assert done.stdout.startswith("not pinned (numpy"), done.stdout + done.stderr
        assert "loaded before pin_cpu_dispatch ran" in done.stdout


def test_the_stage_check_compares_the_cells_it_trains(tmp_path):
    """`check_data_stages --train CELL` compares the cell's outputs too (it once looked them up in the
    data stages only and reported every one as missing): a run folder whose md5 differs is named."""
    import shutil
    from pathlib import Path

    from dvc.repo import Repo

    from tests.check_data_stages import differences, lock_outs

    cell = "casme2-learnet-baseline-0"
    expected = lock_outs(Path(PROJECT), (cell,))
    assert set(expected["train@" + cell]) == {
        "cache/runs/casme2-learnet-baseline-s0",
        "cache/plots/casme2-learnet-baseline-s0.csv",
    }
    Repo.init(str(tmp_path), no_scm=True)
    shutil.copy(Path(PROJECT) / "dvc.lock", tmp_path / "dvc.lock")
    assert differences(expected, tmp_path, (cell,), "native") == []
    run_md5 = expected["train@" + cell]["cache/runs/casme2-learnet-baseline-s0"]
    text = (tmp_path / "dvc.lock").read_text()
    (tmp_path / "dvc.lock").write_text(text.replace(run_md5, "0" * 32 + ".dir"))
    assert differences(expected, tmp_path, (cell,), "x86-64-v2") == [
        f"train@{cell}: cache/runs/casme2-learnet-baseline-s0: md5 {'0' * 32}.dir here (x86-64-v2), "
        f"{run_md5} in the committed dvc.lock"
    ]
