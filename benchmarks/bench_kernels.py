"""What `train.cpu_kernels: portable` costs, and where a portable training epoch's time goes.

Workload: LEARNet at 112x112, 270 random samples, batch 32, forward + loss + backward + Adam step,
`--threads` torch threads (1: what each fold gets with jobs 2 on 2 cores). Each measurement runs in
a new process (the kernels are chosen once per process, `pipeline/train/kernels.py`), the variants
alternating `--rounds` times; prints the median epoch time of each (after one warm-up epoch), the
ratios, and the final loss of each (they differ: other kernels, other rounding):

  portable       what training runs: MKL's reproducible SSE2 matrix products, ATen's baseline
                 kernels, LEARNet's convolutions as one matrix product per layer over the batch
                 (pipeline/train/models/gemm_conv.py)
  portable-aten  the same kernels with ATen's own convolution (slow_conv2d: a matrix product per
                 image) and ReLU, as training ran before gemm_conv
  native         every library's fastest code for this processor (oneDNN's convolutions)

and, for the portable epoch, the share of its time in the matrix products (torch profiler, one
epoch after the timed ones) and their rate: the time a portable epoch cannot go below on MKL's
reproducible path, whatever else is made faster.

Usage: python -m benchmarks.bench_kernels [--epochs 3] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.workload import machine_line

PROJECT = Path(__file__).resolve().parents[1]
VARIANTS = ("portable", "portable-aten", "native")

WORKER = """
import json, statistics, sys, time
from pipeline.train.kernels import apply_cpu_kernels
variant, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
capability = apply_cpu_kernels("native" if variant == "native" else "portable")
import torch
import torch.nn.functional as F
from pipeline.train.models import build_model
if variant == "portable-aten":
    import pipeline.train.models.learnet as learnet
    learnet.conv2d_relu = lambda x, weight, bias, stride: F.relu(F.conv2d(x, weight, bias, stride))
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model("learnet", 5, input_size=112)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
x, y = torch.rand(270, 3, 112, 112), torch.randint(0, 5, (270,))
def epoch():
    for i in range(0, 256, 32):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        loss.backward()
        optimizer.step()
    return loss
times = []
for _ in range(epochs + 1):
    start = time.perf_counter()
    loss = epoch()
    times.append(time.perf_counter() - start)
result = {"capability": capability, "epoch": statistics.median(times[1:]), "loss": loss.item()}
if variant == "portable":
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        epoch()
    events = profiled.key_averages()
    products = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm")) / 1e6
    with FlopCounterMode(display=False) as counted:
        epoch()
    result.update(products=products, profiled=sum(e.self_cpu_time_total for e in events) / 1e6,
                  flops=counted.get_total_flops())
print(json.dumps(result))
"""


def measure(variant: str, epochs: int, threads: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, variant, str(epochs), str(threads)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process (median)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(machine_line())
    results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(measure(variant, args.epochs, args.threads))
    epoch = {variant: statistics.median(r["epoch"] for r in runs) for variant, runs in results.items()}
    for variant, runs in results.items():
        print(
            f"{variant:13s} ATen {runs[0]['capability']:8s} epoch {epoch[variant]:.3f} s "
            f"(median of {args.rounds} processes), final loss {runs[0]['loss']:.8f}"
        )
    print(
        f"portable-aten / portable: {epoch['portable-aten'] / epoch['portable']:.2f}x; "
        f"portable / native: {epoch['portable'] / epoch['native']:.2f}x"
    )
    profiled = results["portable"][0]
    share = profiled["products"] / profiled["profiled"]
    print(
        f"portable epoch, profiled: matrix products {profiled['products']:.2f} s of {profiled['profiled']:.2f} s "
        f"({share:.0%}), {profiled['flops'] / 1e9:.1f} GFLOP per epoch at "
        f"{profiled['flops'] / profiled['products'] / 1e9:.1f} GFLOPS: the epoch cannot take less than "
        f"{share * epoch['portable']:.2f} s on these kernels"
    )


if __name__ == "__main__":
    main()
