"""Which CPU kernels training runs (train setting `cpu_kernels`).

torch's CPU libraries each pick instruction sets for the processor they run on, so the same
training gives different bytes on an AVX2 and on an AVX-512 machine. `portable` (the default) pins
every one of them to code that gives the same results on any x86-64 processor:

    ATen (torch's own kernels)   ATEN_CPU_CAPABILITY=default: the baseline build, no AVX2/AVX-512 variants
    MKL (matrix products)        MKL_CBWR=COMPATIBLE: conditional numerical reproducibility on the
                                 SSE2 code path, on Intel and compatible processors; MKL_DYNAMIC=FALSE
    oneDNN (convolutions)        not used: torch.backends.mkldnn.enabled = False, so convolutions run
                                 ATen's own (im2col + MKL per image), LEARNet's one MKL product per
                                 layer over the batch (models/gemm_conv.py); ONEDNN_MAX_CPU_ISA=SSE41
                                 (and its older name DNNL_MAX_CPU_ISA) caps whatever still reaches it
    NNPACK (forward convolutions not used: torch.backends.nnpack.set_flags(False). Its x86-64 code
      of batches >= 16)          needs AVX2: torch uses it where the processor has AVX2 and ATen's
                                 own elsewhere, so batches of 16 and more came out different on an
                                 older processor

`native` lets each library pick the fastest code for this processor (1.5-1.8x faster here; README
"Reproducibility"). Both need a fixed `threads` for bytes that do not depend on the machine.

The libraries read these variables once, when they first run a kernel, so `apply_cpu_kernels` must
run before torch computes anything in the process: `train_cache` calls it first, every fold calls it
again (worker processes inherit the variables when they start), and it refuses a process whose ATen
kernels were already chosen otherwise.
"""

from __future__ import annotations

import os

from pipeline.config.sections import CPU_KERNELS
from pipeline.errors import MerError

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
}


def apply_cpu_kernels(mode: str) -> str:
    """Pin (`portable`) or release (`native`) torch's CPU kernels in this process and in the processes
    it starts from now on; returns ATen's CPU capability in use. Raises MerError when `portable` comes
    too late: torch already ran kernels of another capability in this process."""
    if mode not in CPU_KERNELS:
        raise MerError(f"cpu_kernels must be one of {CPU_KERNELS}, got {mode!r}")
    import torch

    if mode == "native":
        for name in PORTABLE_ENV:
            os.environ.pop(name, None)
        torch.backends.mkldnn.enabled = True
        torch.backends.nnpack.set_flags(True)
        return torch.backends.cpu.get_cpu_capability()
    os.environ.update(PORTABLE_ENV)
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise MerError(
            f"cpu_kernels: portable, but torch already runs its {capability} CPU kernels in this process "
            "(they are chosen once, when torch first computes something); train in a new process (`mer train`), "
            "start Python with "
            + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
            + ", or set cpu_kernels: native"
        )
    return capability
