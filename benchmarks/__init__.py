"""Speed and memory benchmarks (README "Performance")."""

from pipeline.cpu_dispatch import pin_cpu_dispatch

# numpy, OpenCV and OpenBLAS choose their SIMD code once, when they load: time what `mer` runs.
pin_cpu_dispatch()
