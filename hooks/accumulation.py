"""GradientAccumulationScheduler: Lightning's callback that changes how many micro-batches make one optimizer step,
by epoch (`{0: 1, 4: 2, 8: 4}`: one step per batch for epochs 0-3, per 2 batches from epoch 4, per 4 from 8).

It sets the step pipeline's accumulation at each epoch start; the loop's policy (`policy.step_due`) does the rest:
the loss divided by N, zero_grad on the first micro-batch of a window, the step on its last (or the epoch's last).
"""

from __future__ import annotations

from typing import Any

from engine.errors import MisconfigurationException
from hooks.callback import Callback

__all__ = ["GradientAccumulationScheduler"]


class GradientAccumulationScheduler(Callback):
    """`scheduling`: {first epoch (0-based): micro-batches per optimizer step}."""

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not scheduling:
            raise TypeError("Empty dict cannot be interpreted correct")
        for epoch, factor in scheduling.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                raise MisconfigurationException(
                    f"Epoch should be an int greater than or equal to 0. Got {epoch!r}.")
            if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
                raise MisconfigurationException(
                    f"Accumulation factor should be an int greater than 0. Got {factor!r}.")
        self.scheduling = dict(sorted(scheduling.items()))
        if 0 not in self.scheduling:
            self.scheduling[0] = 1
            self.scheduling = dict(sorted(self.scheduling.items()))
        self.epochs = sorted(self.scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        factor = 1
        for first in self.epochs:
            if epoch >= first:
                factor = self.scheduling[first]
        return factor

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError("Automatic gradient accumulation and the `GradientAccumulationScheduler` is not "
                               "supported for manual optimization. Please remove the callback or switch to "
                               "automatic optimization.")
        if trainer.settings.accumulate_grad_batches != 1:
            raise ValueError("You have set `accumulate_grad_batches` and are using the "
                             "`GradientAccumulationScheduler` callback. Either remove `accumulate_grad_batches` "
                             "from the Trainer or remove the callback.")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        trainer.context.pipeline.set_accumulation(self.get_accumulate_grad_batches(trainer.current_epoch))
