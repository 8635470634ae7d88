"""Steps the LR schedulers from configure_optimizers at the points Lightning steps them.

- interval='step' (non-plateau): after each optimizer step when (batch_idx + 1) % frequency == 0;
- interval='epoch' (non-plateau): after the optimizer step of the epoch's last batch, when
  (current_epoch + 1) % frequency == 0 (before on_train_batch_end and validation, as Lightning);
- ReduceLROnPlateau with interval='step': after the batch and any validation it triggered;
- ReduceLROnPlateau with interval='epoch': after on_train_epoch_end, reading `monitor` from callback_metrics.
Each step goes through `LightningModule.lr_scheduler_step(scheduler, metric)`. Manual optimization steps nothing.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from engine.errors import MisconfigurationException

if TYPE_CHECKING:  # pragma: no cover
    from engine.optim import LRSchedulerConfig
    from engine.trainer import Trainer

__all__ = ["LRSchedulerStepper"]


class LRSchedulerStepper:
    """Called by the fit loop at its three scheduler points; holds no state of its own beyond the configs."""

    def __init__(self, trainer: "Trainer", configs: list["LRSchedulerConfig"]) -> None:
        self.trainer = trainer
        self.step_configs = [c for c in configs if c.interval == "step" and not c.reduce_on_plateau]
        self.epoch_configs = [c for c in configs if c.interval == "epoch" and not c.reduce_on_plateau]
        self.plateau_step = [c for c in configs if c.interval == "step" and c.reduce_on_plateau]
        self.plateau_epoch = [c for c in configs if c.interval == "epoch" and c.reduce_on_plateau]

    def after_optimizer_step(self, batch_idx: int, is_last_batch: bool) -> None:
        for c in self.step_configs:
            if (batch_idx + 1) % c.frequency == 0:
                self._step(c, None)
        if is_last_batch:
            epoch = self.trainer.current_epoch
            for c in self.epoch_configs:
                if (epoch + 1) % c.frequency == 0:
                    self._step(c, None)

    def after_batch(self, batch_idx: int) -> None:
        for c in self.plateau_step:
            if (batch_idx + 1) % c.frequency == 0:
                self._step_plateau(c)

    def after_epoch(self) -> None:
        epoch = self.trainer.current_epoch
        for c in self.plateau_epoch:
            if (epoch + 1) % c.frequency == 0:
                self._step_plateau(c)

    def _step_plateau(self, c: "LRSchedulerConfig") -> None:
        metrics = self.trainer.callback_metrics
        if c.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "(none)"
            if c.strict:
                raise MisconfigurationException(
                    f"ReduceLROnPlateau conditioned on metric {c.monitor!r}, which is not in "
                    f"trainer.callback_metrics (available: {available}); log it with self.log({c.monitor!r}, ...) "
                    "or set 'strict': False in the scheduler config")
            warnings.warn(f"ReduceLROnPlateau: metric {c.monitor!r} not found (available: {available}); "
                          "skipping this scheduler step", RuntimeWarning, stacklevel=2)
            return
        self._step(c, metrics[c.monitor])

    def _step(self, c: "LRSchedulerConfig", metric: Any) -> None:
        self.trainer._call_module("lr_scheduler_step", c.scheduler, metric)
