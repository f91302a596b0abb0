"""Dynamic-image speed: the kernel beside its peers on frames in memory, and the stage end to end.

Prints, in one run with the machine line:
  compute only (frames in memory, one thread), microseconds per clip frame for every phase at once:
    kernel   - `clip_dynamic_images`, the stage's kernel (frames four at a time into two phases per
               pass; pooled at the DI size where it divides the crop);
    loop     - a naive per-frame float32 loop: per phase, acc += a_t * frame (one reused float32 frame,
               no allocation per frame), resized at the end;
    port     - the NumPy port most MER repositories copy (per channel, float64 broadcast of every frame
               times its coefficient, then a sum), re-implemented here from the published algorithm;
    targets: kernel >= 3x faster than the loop and >= 10x faster than the port;
  DI compression, per image (one thread, CPU): the DI cache's chunks as the stage makes them
    (`encode_image`: libdeflate, level 1) vs HDF5's own deflate filter (zlib, level 1, what the stage
    used before), with the stored size of each as a share of the raw bytes;
  end to end, one process: reading every clip's aligned frames (the I/O floor) vs regenerating every
    DI as the stage does, frames hashed (xxh3-128, the aligned cache's read-time checksum) and checked
    as they are read; target: verified regeneration <= 1.5x the read. Beside it, its floor: each
    clip read whole, hashed and made into DIs while its frames are still in the cache, with none of
    h5py's per-clip lookups and attribute reads (what is left when all bookkeeping is gone);
  the stage's work (`build_dynamic_images`) with --jobs 2 vs --jobs 1; target >= 1.8x. Beside it, two
    processes running the --jobs 1 work, each alone and then both at the same time, in turn (best of
    --repeat rounds): the ceiling of any split over two processes on this machine (they share the
    memory bus and the L3 cache; no pool, no writer).
Every figure is the best of --repeat runs, wall-clock and CPU time (process_time: all threads of this
process; with --jobs 2 the workers' CPU time is not counted there). End to end and for the stage, the
runs compared in one ratio are taken in turn, round after round, so that a slow spell of the machine
falls on all of them; compute only, each method runs back to back, as the stage runs its kernel. On
a loaded machine read the CPU times; the targets are stated for a quiet one.

Usage: python -m benchmarks.bench_dynimg [--preset demo|casme2-scale] [--clips N] [--repeat 5]
       [--aligned FILE --samples FILE]   (an existing aligned cache instead of generating one)
Default: the `demo` preset (casme2 part), all its clips; a few minutes on 2 cores, most of it making the
demo copy and its aligned cache once (kept in --workdir).
"""

from __future__ import annotations

import os

# one native thread: the kernel is compared with single-threaded loops, and the stage's workers get one each
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import xxhash  # noqa: E402

from benchmarks.workload import best_of, best_of_each, casme2_scale, machine_line, split_ceiling_line, two_at_once  # noqa: E402
from pipeline.config import load_section  # noqa: E402
from pipeline.dynimg.dataset import DynamicImageSettings, build_dynamic_images  # noqa: E402
from pipeline.dynimg.phases import phase_frames  # noqa: E402
from pipeline.dynimg.rank_pooling import clip_dynamic_images, pool_factors, rank_pooling_coefficients, to_uint8  # noqa: E402
from pipeline.io.aligned_cache import VerifiedFrames  # noqa: E402
from pipeline.io.dynamic_image_cache import IMAGE_STORAGE, encode_image  # noqa: E402
from pipeline.io.samples import read_samples  # noqa: E402
from pipeline.parallel import limit_native_threads  # noqa: E402

Clip = tuple[np.ndarray, np.ndarray, dict]  # frames, frame numbers, sample row


def _windows(s: dict, settings: DynamicImageSettings) -> dict[str, tuple[int, int]]:
    return {
        name: phase_frames(b, s["onset"], s["apex"], s["offset"], settings.min_phase_frames)
        for name, b in settings.phases.items()
    }


def kernel_clip(frames, numbers: np.ndarray, s: dict, settings: DynamicImageSettings) -> dict:
    return clip_dynamic_images(
        frames,
        numbers,
        s["onset"],
        s["apex"],
        s["offset"],
        settings.phases,
        settings.variant,
        settings.size,
        settings.normalize == "per_channel",
        settings.min_phase_frames,
    )[0]


def resized(image: np.ndarray, size: int | None) -> np.ndarray:
    """The DI at `size` x `size` (INTER_AREA), or as it is when size is None (the aligned size)."""
    if size is None or image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def loop_clip(frames: np.ndarray, numbers: np.ndarray, s: dict, settings: DynamicImageSettings) -> dict:
    """The naive per-frame float32 loop: per phase, frame by frame, acc += a_t * frame; resized at the end."""
    position = {int(n): i for i, n in enumerate(numbers)}
    images = {}
    for name, (first, last) in _windows(s, settings).items():
        weights = rank_pooling_coefficients(last - first + 1, settings.variant).astype(np.float32)
        acc = np.zeros(frames.shape[1:], np.float32)
        frame = np.empty(frames.shape[1:], np.float32)  # reused: no allocation (and page faults) per frame
        for a_t, number in zip(weights, range(first, last + 1)):
            np.copyto(frame, frames[position[number]])
            frame *= a_t
            acc += frame
        images[name] = to_uint8(resized(acc, settings.size))
    return images


def port_clip(frames: np.ndarray, numbers: np.ndarray, s: dict, settings: DynamicImageSettings) -> dict:
    """The NumPy port of approximate rank pooling (Bilen et al.; hbilen/dynamic-image-nets) that MER
    repositories copy: each channel split out as a (T,H,W,1) float64 stack, multiplied by the (T,1,1,1)
    coefficients a_t = sum_{k=t..T} (2k - T - 1) / k by broadcasting, summed over frames, channels merged."""
    position = {int(n): i for i, n in enumerate(numbers)}
    images = {}
    for name, (first, last) in _windows(s, settings).items():
        clip = frames[position[first] : position[last] + 1]
        T = len(clip)
        coefficients = np.array([sum((2 * k - T - 1) / k for k in range(t, T + 1)) for t in range(1, T + 1)])
        channels = []
        for c in range(clip.shape[-1]):
            stack = clip[..., c : c + 1].astype(np.float64)
            channels.append((stack * coefficients.reshape(T, 1, 1, 1)).sum(axis=0).squeeze())
        image = cv2.merge(channels).astype(np.float32)
        images[name] = to_uint8(resized(image, settings.size))
    return images


def zlib_filter_chunk(image: np.ndarray) -> bytes:
    """The chunk HDF5's own deflate filter (zlib) stores for one image, in an in-memory file: the
    peer of `encode_image`."""
    with h5py.File(f"bench-{os.getpid()}", "w", driver="core", backing_store=False) as handle:
        dataset = handle.create_dataset("image", data=image[None], chunks=(1, *image.shape), **IMAGE_STORAGE)
        return dataset.id.read_direct_chunk((0,) * dataset.ndim)[1]


def compression(images: list[np.ndarray], repeat: int) -> dict[str, tuple[float, float]]:
    """{method: (CPU seconds per image, stored bytes / raw bytes)} for the stage's encoder and zlib's filter."""
    raw = sum(image.nbytes for image in images)
    result = {}
    for label, encode in (("libdeflate", encode_image), ("zlib", zlib_filter_chunk)):
        chunks = [encode(image) for image in images]
        seconds = best_of(repeat, lambda e=encode: [e(image) for image in images])[1]
        result[label] = (seconds / len(images), sum(map(len, chunks)) / raw)
    return result


def read_frames(handle: h5py.File, samples: list[dict]) -> None:
    for s in samples:
        handle[f"{s['subject']}/{s['clip']}/frames"][()]


def regenerate(handle: h5py.File, samples: list[dict], settings: DynamicImageSettings, verify: bool) -> None:
    for s in samples:
        if verify:
            frames = VerifiedFrames(handle, s["subject"], s["clip"])
            kernel_clip(frames, frames.frame_numbers, s, settings)
            if frames.problem():
                raise SystemExit(frames.problem())
        else:
            group = handle[f"{s['subject']}/{s['clip']}"]
            kernel_clip(group["frames"], group["frame_numbers"][()], s, settings)


def read_hash_compute(handle: h5py.File, samples: list[dict], numbers: list[np.ndarray], settings) -> None:
    """The floor of a verified regeneration through h5py: each clip's frames read whole (as
    `read_frames` does), hashed (xxh3-128) and made into DIs while they are still in the cache, with
    no lookup or attribute read beyond the read's own and no stored digest compared."""
    for s, clip_numbers in zip(samples, numbers):
        frames = handle[f"{s['subject']}/{s['clip']}/frames"][()]
        xxhash.xxh3_128(memoryview(frames).cast("B")).digest()
        kernel_clip(frames, clip_numbers, s, settings)


def compute_only(clips: list[Clip], settings: DynamicImageSettings, repeat: int) -> dict[str, float]:
    """Seconds (CPU, best of `repeat`) of each method over the clips held in memory, each method's runs
    back to back as the stage runs its kernel (with the port's float64 arrays made and freed between
    two kernel runs, the kernel took 1.6x longer)."""
    methods = {"kernel": kernel_clip, "loop": loop_clip, "port": port_clip}
    return {
        label: best_of(repeat, lambda m=method: [m(f, n, s, settings) for f, n, s in clips])[1]
        for label, method in methods.items()
    }


def stage_run(work: dict[str, Path], settings: DynamicImageSettings, out: Path, jobs: int) -> Callable[[], object]:
    """The dynimg stage's work (`build_dynamic_images`) on the workload, writing `out`."""
    return functools.partial(
        build_dynamic_images, [str(work["aligned"])], work["samples"], out, settings, {"bench": True}, jobs=jobs
    )


def stage_times(work: dict[str, Path], settings: DynamicImageSettings, repeat: int) -> dict[int, float]:
    """Wall seconds of the dynimg stage's work with --jobs 1 and 2 (best of `repeat`, in turn), every
    pool warmed first."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: stage_run(work, settings, Path(tmp) / f"di-jobs{n}.h5", n) for n in (1, 2)}
        for run in runs.values():  # warm: worker processes started, page cache filled
            run()
        return {n: times[0] for n, times in best_of_each(repeat, runs).items()}


def warm_jobs1_stage(scratch: Path, work: dict[str, Path], settings: DynamicImageSettings) -> Callable[[], object]:
    """The --jobs 1 work of `stage_times`, writing into `scratch`, run once: for `two_at_once`."""
    run = stage_run(work, settings, scratch / "di.h5", 1)
    run()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default: /tmp/mer-bench-<preset>")
    parser.add_argument("--preset", choices=["demo", "casme2-scale"], default="demo")
    parser.add_argument("--aligned", type=Path, default=None, help="an existing aligned cache (with --samples)")
    parser.add_argument("--samples", type=Path, default=None)
    parser.add_argument("--clips", type=int, default=None, help="only the first N clips")
    parser.add_argument("--compute-clips", type=int, default=12, help="clips held in memory for compute-only")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.aligned:
        work = {"aligned": args.aligned, "samples": args.samples, "params": Path("params.yaml")}
        label = f"{args.aligned}"
    else:
        work = casme2_scale(args.workdir or Path(f"/tmp/mer-bench-{args.preset}"), preset=args.preset)
        label = f"{args.preset} preset (casme2)"
    settings = DynamicImageSettings.from_params(load_section(work["params"], "dynimg"))
    samples = read_samples(work["samples"])[: args.clips]
    limit_native_threads()
    print(machine_line())
    if hasattr(os, "getloadavg"):
        print(f"load average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with h5py.File(work["aligned"], "r") as handle:
        shape = handle[f"{samples[0]['subject']}/{samples[0]['clip']}/frames"].shape[1:]
        n_frames = sum(handle[f"{s['subject']}/{s['clip']}/frames"].shape[0] for s in samples)
        ky, kx = pool_factors(shape, settings.size)
        print(
            f"workload: {label}, {len(samples)} clips, {n_frames} aligned frames of {shape}, phases "
            f"{', '.join(settings.phases)}, DI size {settings.size} (pooled at {'the DI size' if ky * kx > 1 else 'the crop'})"
        )
        subset = samples[: args.compute_clips]
        clips = [
            (
                handle[f"{s['subject']}/{s['clip']}/frames"][()],
                handle[f"{s['subject']}/{s['clip']}/frame_numbers"][()],
                s,
            )
            for s in subset
        ]
        sub_frames = sum(len(f) for f, _, _ in clips)
        compute = compute_only(clips, settings, args.repeat)
        packed = compression(
            [image for f, n, s in clips for image in kernel_clip(f, n, s, settings).values()], args.repeat
        )
        read_frames(handle, samples)  # warm the page cache for everyone
        numbers = [handle[f"{s['subject']}/{s['clip']}/frame_numbers"][()] for s in samples]
        end_to_end = best_of_each(
            args.repeat,
            {
                "read": lambda: read_frames(handle, samples),
                "floor": lambda: read_hash_compute(handle, samples, numbers, settings),
                "plain": lambda: regenerate(handle, samples, settings, verify=False),
                "verified": lambda: regenerate(handle, samples, settings, verify=True),
            },
        )
        read, floor, plain, verified = (end_to_end[k] for k in ("read", "floor", "plain", "verified"))
    stage = stage_times(work, settings, args.repeat)
    jobs1, jobs2 = stage[1], stage[2]
    copies = two_at_once(warm_jobs1_stage, work, settings, rounds=args.repeat)

    us = {k: v / sub_frames * 1e6 for k, v in compute.items()}
    print(f"\ncompute only, frames in memory ({len(clips)} clips, {sub_frames} frames, one thread, CPU us per frame):")
    print(f"  kernel {us['kernel']:7.1f}   loop {us['loop']:7.1f}   port {us['port']:7.1f}")
    print(f"  loop / kernel  {compute['loop'] / compute['kernel']:6.2f}  (target >= 3)")
    print(f"  port / kernel  {compute['port'] / compute['kernel']:6.2f}  (target >= 10)")
    if ky * kx == 1:  # the weighted sums at the frames' size: one multiply and one add per phase, frame and value
        flops = sum(2 * f[0].size * sum(e - b + 1 for b, e in _windows(s, settings).values()) for f, _, s in clips)
        print(
            f"  kernel arithmetic {flops / compute['kernel'] / 1e9:5.1f} GFLOP/s (uint8 mapping and bookkeeping in the time)"
        )
    print(
        f"\nDI compression ({len(clips) * len(settings.phases)} DIs, one thread, CPU ms per image; stored / raw bytes):"
    )
    print(f"  libdeflate (the stage) {packed['libdeflate'][0] * 1e3:6.2f}  {packed['libdeflate'][1]:6.1%}")
    print(f"  HDF5's zlib filter     {packed['zlib'][0] * 1e3:6.2f}  {packed['zlib'][1]:6.1%}")
    print(f"  zlib / libdeflate      {packed['zlib'][0] / packed['libdeflate'][0]:6.2f}")
    print(f"\nend to end, one process, {len(samples)} clips (best of {args.repeat}; wall s / CPU s):")
    print(f"  read aligned frames            {read[0]:6.3f} / {read[1]:6.3f}")
    print(f"  regenerate all DIs, unverified {plain[0]:6.3f} / {plain[1]:6.3f}")
    print(f"  regenerate, xxh3-128 verified  {verified[0]:6.3f} / {verified[1]:6.3f}")
    print(f"  verified / read  wall {verified[0] / read[0]:5.2f}  CPU {verified[1] / read[1]:5.2f}  (target <= 1.5)")
    print(f"  cost of the check  wall {verified[0] - plain[0]:+.3f} s  CPU {verified[1] - plain[1]:+.3f} s")
    print(
        f"  floor: read + xxh3-128 + DIs of the frames just read, no bookkeeping {floor[0]:6.3f} / {floor[1]:6.3f}"
        f" = {floor[0] / read[0]:.2f}x the read"
    )
    print(f"\nthe stage's work (build_dynamic_images), wall s: jobs 1 {jobs1:.2f}, jobs 2 {jobs2:.2f}")
    print(f"  jobs1 / jobs2  {jobs1 / jobs2:5.2f}  (target >= 1.8; needs 2 idle cores)")
    print(f"  {split_ceiling_line(copies)}")


if __name__ == "__main__":
    main()
