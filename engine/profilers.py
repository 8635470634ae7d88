"""Lightning's `lightning.pytorch.profilers` import path: the profilers, re-exported from `hooks.profiler`."""

from hooks.profiler import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]
