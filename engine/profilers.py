"""Lightning's `lightning.pytorch.profilers` import path: the profilers, re-exported from `hooks.profiler`."""

from hooks.profiler import PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler

__all__ = ["PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]
