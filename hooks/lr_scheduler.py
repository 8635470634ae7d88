"""Steps the LR schedulers from configure_optimizers at the points Lightning steps them, as a bus handler.

- interval='step' (non-plateau): on OptimizerStepped when (batch_idx + 1) % frequency == 0;
- interval='epoch' (non-plateau): on the OptimizerStepped of the epoch's last batch, when
  (current_epoch + 1) % frequency == 0 (before on_train_batch_end and validation, as Lightning);
- ReduceLROnPlateau with interval='step': on BatchCompleted (after the batch and any validation it triggered);
- ReduceLROnPlateau with interval='epoch': on EpochCompleted (after on_train_epoch_end), reading `monitor` from
  callback_metrics.
Each step goes through `LightningModule.lr_scheduler_step(scheduler, metric)`. The fit loop attaches it for a fit
under automatic optimization only (manual optimization steps nothing), after every other listener of those events.
It holds the live `trainer.lr_scheduler_configs` list and re-reads it at each epoch start, after the callbacks have
seen EpochStarted: a callback may swap or add a scheduler there, as Lightning's StochasticWeightAveraging does (a
callback that adds one to a fit without schedulers declares `adds_lr_schedulers = True`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable

from engine.bus import MONITOR
from engine.errors import MisconfigurationException, user_stacklevel

if TYPE_CHECKING:  # pragma: no cover
    from engine.events import BatchCompleted, EpochCompleted, OptimizerStepped
    from engine.optim import LRSchedulerConfig

__all__ = ["LRSchedulerStepper", "lr_stepper_for", "check_scheduler_api"]


class LRSchedulerStepper:
    """Holds no state of its own beyond the configs; `call(name, *args)` calls a module hook (the run's
    `call_module`, so `lr_scheduler_step` runs with its hook context)."""

    priority = MONITOR + 50  # after the callbacks, the module and the monitors have seen the event

    def __init__(self, configs: list["LRSchedulerConfig"], call: Callable[..., Any]) -> None:
        self.call = call
        self.configs = configs
        self._partition()

    def _partition(self) -> None:
        configs = self.configs
        self._seen = tuple(map(id, configs))
        self.step_configs = [c for c in configs if c.interval == "step" and not c.reduce_on_plateau]
        self.epoch_configs = [c for c in configs if c.interval == "epoch" and not c.reduce_on_plateau]
        self.plateau_step = [c for c in configs if c.interval == "step" and c.reduce_on_plateau]
        self.plateau_epoch = [c for c in configs if c.interval == "epoch" and c.reduce_on_plateau]

    def on_epoch_started(self, event: Any) -> None:
        if tuple(map(id, self.configs)) != self._seen:
            self._partition()

    def on_optimizer_stepped(self, event: "OptimizerStepped") -> None:
        batch_idx = event.timestamp.batch_in_epoch
        for c in self.step_configs:
            if (batch_idx + 1) % c.frequency == 0:
                self.call("lr_scheduler_step", c.scheduler, None)
        if self.epoch_configs and event.trainer.is_last_batch:
            epoch = event.timestamp.epoch
            for c in self.epoch_configs:
                if (epoch + 1) % c.frequency == 0:
                    self.call("lr_scheduler_step", c.scheduler, None)

    def on_batch_completed(self, event: "BatchCompleted") -> None:
        if not event.stepped:  # accumulating: step-interval schedulers count optimizer steps
            return
        for c in self.plateau_step:
            if (event.batch_idx + 1) % c.frequency == 0:
                self._step_plateau(c, event.run.callback_metrics)

    def on_epoch_completed(self, event: "EpochCompleted") -> None:
        epoch = event.timestamp.epoch
        for c in self.plateau_epoch:
            if (epoch + 1) % c.frequency == 0:
                self._step_plateau(c, event.run.callback_metrics)

    def _step_plateau(self, c: "LRSchedulerConfig", metrics: Any) -> None:
        if c.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "(none)"
            if c.strict:
                raise MisconfigurationException(
                    f"ReduceLROnPlateau conditioned on metric {c.monitor!r}, which is not in "
                    f"trainer.callback_metrics (available: {available}); log it with self.log({c.monitor!r}, ...) "
                    "or set 'strict': False in the scheduler config")
            warnings.warn(f"ReduceLROnPlateau conditioned on metric {c.monitor} which is not available but strict "
                          f"is set to `False`. Skipping learning rate update (available: {available}).",
                          RuntimeWarning, stacklevel=user_stacklevel())
            return
        self.call("lr_scheduler_step", c.scheduler, metrics[c.monitor])


def lr_stepper_for(run: Any) -> LRSchedulerStepper | None:
    """The stepper for a fit (a `RunContext.fit_handlers` factory): under automatic optimization only, when there are
    schedulers or a callback declares `adds_lr_schedulers = True` (it may add one at an epoch start)."""
    pipeline = run.pipeline
    if pipeline.automatic:
        check_scheduler_api(pipeline.lr_scheduler_configs, run.module)
    if not pipeline.automatic or not (pipeline.lr_scheduler_configs
                                      or any(getattr(cb, "adds_lr_schedulers", False) for cb in run.callbacks)):
        return None
    return LRSchedulerStepper(pipeline.lr_scheduler_configs, call=run.call_module)


def check_scheduler_api(configs: list["LRSchedulerConfig"], module: Any) -> None:
    """Under automatic optimization the Trainer steps the schedulers: one that is not a torch `LRScheduler` or
    `ReduceLROnPlateau` needs the module's `lr_scheduler_step` to say how (Lightning's check and message)."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    from engine.loops.data import overridden
    from engine.module import LightningModule

    for c in configs:
        if not isinstance(c.scheduler, (LRScheduler, ReduceLROnPlateau)) and not overridden(
                module, LightningModule, "lr_scheduler_step"):
            raise MisconfigurationException(
                f"The provided lr scheduler `{type(c.scheduler).__name__}` doesn't follow PyTorch's LRScheduler API. "
                "You should override the `LightningModule.lr_scheduler_step` hook with your own logic if you are "
                "using a custom LR scheduler.")
