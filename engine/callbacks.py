"""Lightning's `lightning.pytorch.callbacks` import path: the built-in callbacks, re-exported from `hooks`."""

from hooks.callback import Callback
from hooks.lr_monitor import LearningRateMonitor
from hooks.model_summary import ModelSummary
from hooks.progress import TQDMProgressBar
from hooks.throughput import ThroughputMonitor
from hooks.timer import Timer

__all__ = ["Callback", "LearningRateMonitor", "ModelSummary", "TQDMProgressBar", "ThroughputMonitor", "Timer"]
