"""Every feature of statetrain as a handler: one handler, one file.

Names are imported on first access, so `import hooks.tensorboard` (or any single handler) works before or after
`import engine` without import cycles, and importing one handler does not load the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Callback": "hooks.callback",
    "LRSchedulerStepper": "hooks.lr_scheduler",
    "ModelSummary": "hooks.model_summary",
    "Logger": "hooks.logger",
    "LoggerError": "hooks.logger",
    "TensorBoardLogger": "hooks.tensorboard",
    "CSVLogger": "hooks.csv_logger",
    "TQDMProgressBar": "hooks.progress",
    "ProgressBar": "hooks.progress",
    "LearningRateMonitor": "hooks.lr_monitor",
    "Timer": "hooks.timer",
    "ThroughputMonitor": "hooks.throughput",
    "Profiler": "hooks.profiler",
    "SimpleProfiler": "hooks.profiler",
    "PyTorchProfiler": "hooks.profiler",
    "PassThroughProfiler": "hooks.profiler",
    "ModelCheckpoint": "hooks.checkpoint",
    "OnExceptionCheckpoint": "hooks.checkpoint",
    "EarlyStopping": "hooks.early_stopping",
    "EarlyStoppingReason": "hooks.early_stopping",
    "GradientClipping": "hooks.grad_clip",
    "GradientAccumulationScheduler": "hooks.accumulation",
    "NonFiniteLoss": "hooks.nonfinite",
    "WeightAveraging": "hooks.weight_averaging",
    "EMAWeightAveraging": "hooks.weight_averaging",
    "StochasticWeightAveraging": "hooks.stochastic_weight_averaging",
    "TruePrecision": "hooks.precision",
    "MixedPrecision": "hooks.precision",
    "ScaledMixedPrecision": "hooks.precision",
    "DummyLogger": "hooks.dummy_logger",
    "BaseFinetuning": "hooks.finetuning",
    "BackboneFinetuning": "hooks.finetuning",
    "RichProgressBar": "hooks.rich_progress",
    "DeviceStatsMonitor": "hooks.device_stats",
    "AdvancedProfiler": "hooks.profiler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hooks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
