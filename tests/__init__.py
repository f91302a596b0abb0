"""Tests, and the check of the committed data stages (`python -m tests.check_data_stages`)."""

from pipeline.cpu_dispatch import pin_cpu_dispatch

# numpy, OpenCV and OpenBLAS choose their SIMD code once, when they load: the tests run what `mer` runs.
pin_cpu_dispatch()
