"""Every feature of statetrain as a handler: one handler, one file."""

from hooks.callback import Callback
from hooks.lr_scheduler import LRSchedulerStepper
from hooks.model_summary import ModelSummary

__all__ = ["Callback", "LRSchedulerStepper", "ModelSummary"]
