"""The instruction sets numpy, OpenCV and OpenBLAS may use, pinned so that outputs do not depend on the processor.

numpy, OpenCV (and the Intel IPP inside its wheel) and OpenBLAS each pick, when they load, the
fastest code for the processor they run on, and their AVX2, AVX-512 and SSE paths round differently:
on an AVX2-only machine the demo frames (numpy's AVX-512 `exp`/`sin`/`power`), the aligned crops and
the dynamic images came out with other bytes than on an AVX-512 one, so every downstream md5 in
`dvc.lock` differed. `pin_cpu_dispatch` caps each library at what every x86-64-v2 processor has
(SSE4.2; numpy 2 needs it anyway), through the switch each library documents:

    numpy     NPY_DISABLE_CPU_FEATURES  its x86-64-v2 baseline build only (no X86_V3/V4 dispatch)
    OpenCV    OPENCV_CPU_DISABLE        no AVX, FP16, AVX2 or AVX-512 dispatch
    IPP       OPENCV_IPP=sse42          Intel IPP's SSE4.2 code path
    OpenBLAS  OPENBLAS_CORETYPE         the Nehalem kernels (SSE)

They are read once, when each library loads, so `pin_cpu_dispatch` must run before numpy or cv2
is imported: the `mer` command calls it first (stages/cli.py), and so do the test and benchmark
packages; worker processes inherit the variables. The features switched off add to those the
environment already switches off, and `MER_CPU_DISPATCH=native` leaves every library free to
use everything the processor has (faster; bytes that depend on the processor). torch's kernels are
pinned separately, in the training processes (`train.cpu_kernels`, pipeline/train/kernels.py).
numba (the DI kernel) is not capped: its code adds in a fixed order without FMA, exact on any
processor (pipeline/dynimg/rank_pooling.py). Nor is libdeflate (the DI cache's compression): its
processor-specific code only fills tables and sums checksums, so its output depends on its version alone.
`python -m tests.check_data_stages --processor x86-64-v3` runs the stages as a processor without
AVX-512 would, to check that the bytes match.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

from pipeline.errors import MerError

MODES = ("portable", "native")  # MER_CPU_DISPATCH
# Variable -> (separator, features to switch off): merged with any already listed there.
DISABLED_FEATURES = {
    # numpy >= 2.4 dispatches to X86_V3/X86_V4 groups, older releases to single features: both listed
    "NPY_DISABLE_CPU_FEATURES": (
        " ",
        (
            *("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR"),
            *("AVX", "F16C", "FMA3", "AVX2", "AVX512F", "AVX512CD", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL"),
        ),
    ),
    "OPENCV_CPU_DISABLE": (",", ("AVX", "FP16", "AVX2", "AVX512-SKX")),
}
CAPS = {"OPENCV_IPP": "sse42", "OPENBLAS_CORETYPE": "Nehalem"}  # set as they are


def _pinned_here(mode: str) -> bool:
    """Whether `mode` pins anything on this machine (x86-64 only: other processors run other builds)."""
    return mode == "portable" and platform.machine().lower() in ("x86_64", "amd64")


def pin_cpu_dispatch(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Pin numpy's, OpenCV's, IPP's and OpenBLAS's code paths in `environ` (x86-64 only); returns
    the variables changed. MerError for an unknown MER_CPU_DISPATCH."""
    mode = environ.get("MER_CPU_DISPATCH", "portable")
    if mode not in MODES:
        raise MerError(f"environment variable MER_CPU_DISPATCH={mode!r}: allowed: portable (default) or native")
    if not _pinned_here(mode):
        return {}
    changed = dict(CAPS)
    for name, (separator, features) in DISABLED_FEATURES.items():
        present = [f for f in environ.get(name, "").replace(",", " ").split() if f]
        changed[name] = separator.join(dict.fromkeys([*present, *features]))
    changed = {name: value for name, value in changed.items() if environ.get(name) != value}
    environ.update(changed)
    return changed


def dispatch_state() -> str:
    """What numpy, OpenCV, IPP and OpenBLAS run in this process; RuntimeError when MER_CPU_DISPATCH
    is portable but a library runs code beyond the pins (it was loaded before they were set)."""
    import cv2
    import numpy as np
    import threadpoolctl
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    numpy_paths = [target for target in __cpu_dispatch__ if __cpu_features__.get(target)]
    opencv_paths = [f.lstrip("*") for f in cv2.getCPUFeaturesLine().split() if f.startswith("*") and "?" not in f]
    ipp = cv2.ipp.getIppVersion() if cv2.ipp.useIPP() else "off"
    blas = sorted({i.get("architecture", "?") for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"})
    state = (
        f"numpy {np.__version__} SIMD beyond its baseline: {', '.join(numpy_paths) or 'none'}; "
        f"OpenCV dispatch: {', '.join(opencv_paths) or 'none'}; IPP: {ipp}; OpenBLAS kernels: {', '.join(blas) or '?'}; "
        f"numba compiles the DI kernel for: {_numba_target()} (exact whatever the processor)"
    )
    mode = os.environ.get("MER_CPU_DISPATCH", "portable")
    if _pinned_here(mode):
        opencv_off = DISABLED_FEATURES["OPENCV_CPU_DISABLE"][1]
        opencv_beyond = [p for p in opencv_paths if p.split("-")[0] in opencv_off]
        ipp_beyond = ipp != "off" and "SSE4.2" not in ipp
        blas_beyond = any(b.lower() != CAPS["OPENBLAS_CORETYPE"].lower() for b in blas)
        if numpy_paths or opencv_beyond or ipp_beyond or blas_beyond:
            raise RuntimeError(f"not pinned ({state}): numpy or cv2 was loaded before pin_cpu_dispatch ran")
    return f"{mode}: {state}"


def _numba_target() -> str:
    """The processor numba compiles for (NUMBA_CPU_NAME, else this machine's)."""
    from numba.core import config

    if config.CPU_NAME:
        return config.CPU_NAME
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()
