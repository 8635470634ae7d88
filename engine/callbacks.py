"""Lightning's `lightning.pytorch.callbacks` import path: the built-in callbacks, re-exported from `hooks`."""

from hooks.accumulation import GradientAccumulationScheduler
from hooks.callback import Callback
from hooks.checkpoint import ModelCheckpoint, OnExceptionCheckpoint
from hooks.device_stats import DeviceStatsMonitor
from hooks.early_stopping import EarlyStopping
from hooks.finetuning import BackboneFinetuning, BaseFinetuning
from hooks.lr_monitor import LearningRateMonitor
from hooks.model_summary import ModelSummary
from hooks.progress import ProgressBar, TQDMProgressBar
from hooks.rich_progress import RichProgressBar
from hooks.throughput import ThroughputMonitor
from hooks.stochastic_weight_averaging import StochasticWeightAveraging
from hooks.timer import Timer
from hooks.weight_averaging import EMAWeightAveraging, WeightAveraging

__all__ = ["Callback", "ProgressBar", "WeightAveraging", "EMAWeightAveraging", "StochasticWeightAveraging",
           "GradientAccumulationScheduler", "EarlyStopping",
           "ModelCheckpoint", "OnExceptionCheckpoint", "LearningRateMonitor", "ModelSummary", "TQDMProgressBar",
           "ThroughputMonitor", "Timer", "BaseFinetuning", "BackboneFinetuning", "DeviceStatsMonitor",
           "RichProgressBar"]
