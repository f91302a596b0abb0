"""What `train.cpu_kernels: portable` costs: training epoch time with portable vs native CPU kernels.

Workload: LEARNet at 112x112, 270 random samples, batch 32, forward + loss + backward + Adam step,
`--threads` torch threads (1: what each fold gets with jobs 2 on 2 cores). Each measurement runs in
a new process (the kernels are chosen once per process, `pipeline/train/kernels.py`), portable and
native alternating `--rounds` times; prints the median epoch time of each (after one warm-up epoch)
and the ratio, and the final loss of each (the two differ: other kernels, other rounding).

Usage: python -m benchmarks.bench_kernels [--epochs 3] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

WORKER = """
import json, statistics, sys, time
from pipeline.train.kernels import apply_cpu_kernels
mode, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
capability = apply_cpu_kernels(mode)
import torch
import torch.nn.functional as F
from pipeline.train.models import build_model
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model("learnet", 5, input_size=112)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
x, y = torch.rand(270, 3, 112, 112), torch.randint(0, 5, (270,))
times = []
for _ in range(epochs + 1):
    start = time.perf_counter()
    for i in range(0, 256, 32):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        loss.backward()
        optimizer.step()
    times.append(time.perf_counter() - start)
print(json.dumps({"capability": capability, "epoch": statistics.median(times[1:]), "loss": loss.item()}))
"""


def measure(mode: str, epochs: int, threads: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(epochs), str(threads)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process (median)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per mode, alternating")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"portable": [], "native": []}
    for _ in range(args.rounds):
        for mode in results:
            results[mode].append(measure(mode, args.epochs, args.threads))
    epoch = {mode: statistics.median(r["epoch"] for r in runs) for mode, runs in results.items()}
    for mode, runs in results.items():
        print(
            f"{mode:8s} ATen {runs[0]['capability']:8s} epoch {epoch[mode]:.3f} s (median of {args.rounds} processes), "
            f"final loss {runs[0]['loss']:.8f}"
        )
    print(f"portable / native: {epoch['portable'] / epoch['native']:.2f}x")


if __name__ == "__main__":
    main()
