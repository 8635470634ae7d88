"""Stochastic Weight Averaging (Lightning's `StochasticWeightAveraging` callback, Izmailov et al. 2018).

From epoch `swa_epoch_start` on, the optimizer's scheduler is swapped for `torch.optim.swa_utils.SWALR` (stepped
once per epoch by the fit's LR stepper) and, at the start of every epoch up to the last, the running average of the
weights is updated; when training reaches `max_epochs` the averaged weights are copied into the module. Lightning's
exact points are kept: the average is taken at epoch starts, so it holds the weights after epochs
`swa_start-1 .. max_epochs-2`, and a fit stopped before its last epoch keeps the trained weights.

Departure: for a module with batch norm, Lightning runs one extra training epoch without backward to recompute the
running statistics under the averaged weights (it fires every hook of an epoch and adds one to `current_epoch` and
`global_step`). Here the same pass (the module in train mode, `training_step` on every training batch, momentum
None so the statistics are a plain average) runs inside `on_train_end`, under `torch.no_grad()`, and fires nothing:
the batch-norm statistics are the same, the counters are not inflated.
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR

from engine.errors import MisconfigurationException, user_stacklevel
from hooks.callback import Callback
from hooks.weight_averaging import refuse_sharded

__all__ = ["StochasticWeightAveraging"]

AvgFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class StochasticWeightAveraging(Callback):
    """`StochasticWeightAveraging(swa_lrs=1e-2)`; `swa_epoch_start` is a 1-based epoch (int) or a fraction of
    `max_epochs` (float); `annealing_epochs`/`annealing_strategy` go to SWALR; `avg_fn(avg, new, n)` replaces the
    equal-weight average; `device` holds the averaged copy (None: the module's device). One optimizer, at most one
    scheduler. `validate_with_average=True` (a statetrain extension) runs validation on the averaged weights once
    averaging has begun, swapping them back for training afterwards."""

    adds_lr_schedulers = True  # SWALR is added at the SWA start even when configure_optimizers returned none

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: str = "cos", avg_fn: AvgFn | None = None,
                 device: torch.device | str | None = torch.device("cpu"), validate_with_average: bool = False) -> None:
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)) or (
                isinstance(swa_epoch_start, int) and swa_epoch_start < 1) or (
                isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1):
            raise MisconfigurationException(
                f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}): expected an int >= 1 (the epoch, "
                "1-based) or a float in [0, 1] (a fraction of max_epochs)")
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not isinstance(swa_lrs, (float, list)) or not lrs or not all(
                isinstance(lr, float) and lr > 0 for lr in lrs):
            raise MisconfigurationException(
                f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}): expected a positive float or a list of positive "
                "floats (one per parameter group)")
        if annealing_strategy not in ("cos", "linear"):
            raise MisconfigurationException(
                f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}): expected 'cos' or 'linear'")
        if avg_fn is not None and not callable(avg_fn):
            raise MisconfigurationException(f"StochasticWeightAveraging(avg_fn={avg_fn!r}): expected a callable")
        if device is not None and not isinstance(device, (torch.device, str)):
            raise MisconfigurationException(
                f"StochasticWeightAveraging(device={device!r}): expected a torch.device, a str or None")
        self._swa_epoch_start = swa_epoch_start
        self.validate_with_average = validate_with_average
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or self.avg_fn
        self._device = device
        self._average_model: nn.Module | None = None
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict | None = None
        self._initialized = False
        self._init_n_averaged = 0
        self.n_averaged: Tensor | None = None
        self._latest_update_epoch = -1
        self._max_epochs = -1
        self._has_batch_norm = False

    # -- Lightning's public helpers -------------------------------------------------------------------------------
    @property
    def swa_start(self) -> int:
        """The first averaged epoch, 0-based."""
        return max(int(self._swa_epoch_start) - 1, 0)

    @property
    def swa_end(self) -> float:
        """The last averaged epoch, 0-based (infinite with max_epochs=-1)."""
        return float("inf") if self._max_epochs == -1 else self._max_epochs - 1

    @property
    def average_model(self) -> nn.Module | None:
        """The copy of the module that holds the running average."""
        return self._average_model

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules())

    @staticmethod
    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        """The equal-weight running average."""
        return averaged + (current - averaged) / (num_averaged + 1)

    @staticmethod
    def update_parameters(average_model: nn.Module, model: nn.Module, n_averaged: Tensor, avg_fn: AvgFn) -> None:
        """Fold the model's current parameters into the average (the first update copies them)."""
        for p_avg, p_model in zip(average_model.parameters(), model.parameters()):
            dst = p_avg.detach()
            src = p_model.detach().to(dst.device)
            dst.copy_(src if n_averaged == 0 else avg_fn(dst, src, n_averaged.to(dst.device)))
        n_averaged += 1

    @staticmethod
    def transfer_weights(src: nn.Module, dst: nn.Module) -> None:
        for p_src, p_dst in zip(src.parameters(), dst.parameters()):
            p_dst.detach().copy_(p_src.to(p_dst.device))

    # -- hooks ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            refuse_sharded(trainer, type(self).__name__)
            # a plain store of tensors: the memo keeps the Trainer out of the copy
            self._average_model = deepcopy(pl_module, {id(trainer): None})
            if self._loaded_average is not None:
                self._average_model.load_state_dict(self._loaded_average)
                self._loaded_average = None

    _loaded_average: dict | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                f"StochasticWeightAveraging works with one optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException(
                f"StochasticWeightAveraging works with at most one LR scheduler; configure_optimizers returned "
                f"{len(trainer.lr_scheduler_configs)}")
        if isinstance(self._swa_epoch_start, float):
            if trainer.max_epochs == -1:
                raise MisconfigurationException(
                    "StochasticWeightAveraging(swa_epoch_start=<float>) needs a finite max_epochs; with "
                    "max_epochs=-1 give the start epoch as an int")
            self._swa_epoch_start = int(trainer.max_epochs * self._swa_epoch_start)
        self._has_batch_norm = self.pl_module_contains_batch_norm(pl_module)
        self._max_epochs = trainer.max_epochs
        if self._scheduler_state is not None:
            # resuming inside SWA: the checkpoint's scheduler state is SWALR's, restored when SWALR is re-created
            trainer.lr_scheduler_configs.clear()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if not self._initialized and self.swa_start <= epoch <= self.swa_end:
            self._initialized = True
            self._start(trainer, pl_module)
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self.update_parameters(self._average_model, pl_module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = epoch

    def _start(self, trainer: Any, pl_module: Any) -> None:
        from engine.optim import LRSchedulerConfig

        self._average_model = self._average_model.to(self._device or pl_module.device)
        optimizer = trainer.optimizers[0]
        if isinstance(self._swa_lrs, float):
            self._swa_lrs = [self._swa_lrs] * len(optimizer.param_groups)
        for lr, group in zip(self._swa_lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        self._swa_scheduler = SWALR(optimizer, swa_lr=self._swa_lrs, anneal_epochs=self._annealing_epochs,
                                    anneal_strategy=self._annealing_strategy,
                                    last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1)
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif trainer.current_epoch != self.swa_start:
            warnings.warn("StochasticWeightAveraging starts after swa_epoch_start without a checkpointed SWA state; "
                          "the average starts from the current weights", UserWarning, stacklevel=user_stacklevel())
        config = LRSchedulerConfig(self._swa_scheduler)
        configs = trainer.lr_scheduler_configs
        if configs:
            old = configs[0]
            if old.interval != "epoch" or old.frequency != 1:
                warnings.warn(f"StochasticWeightAveraging steps its scheduler every epoch; the configured scheduler "
                              f"stepped every {old.frequency} {old.interval}(s)", UserWarning, stacklevel=user_stacklevel())
            from engine.log import log

            log.info(f"Swapping scheduler `{type(old.scheduler).__name__}` for `SWALR`")
            configs[0] = config
        else:
            configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long, device=pl_module.device)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.validate_with_average and self._averaging(trainer):
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.validate_with_average and self._averaging(trainer):
            self._swap(pl_module)

    def _averaging(self, trainer: Any) -> bool:
        return not trainer.sanity_checking and self.n_averaged is not None and int(self.n_averaged) > 0

    def _swap(self, pl_module: nn.Module) -> None:
        for p_avg, p in zip(self._average_model.parameters(), pl_module.parameters()):
            kept = p.detach().clone()
            p.detach().copy_(p_avg.detach().to(p.device))
            p_avg.detach().copy_(kept.to(p_avg.device))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # current_epoch is one past the last trained epoch here
        if self._average_model is None or not (trainer.current_epoch - 1 == self.swa_end or self._max_epochs == -1):
            return
        if not self._initialized:
            return
        self.transfer_weights(self._average_model, pl_module)
        if self._has_batch_norm:
            self._update_batch_norm(trainer, pl_module)

    def _update_batch_norm(self, trainer: Any, pl_module: Any) -> None:
        """Recompute the running statistics under the averaged weights: one pass of training_step, no backward."""
        norms = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = {m: m.momentum for m in norms}
        for m in norms:
            m.running_mean = torch.zeros_like(m.running_mean)
            m.running_var = torch.ones_like(m.running_var)
            m.momentum = None
            m.num_batches_tracked *= 0
        was_training = pl_module.training
        pl_module.train()
        limit = trainer.num_training_batches
        try:
            with torch.no_grad():
                for batch_idx, batch in enumerate(trainer.train_dataloader):
                    if batch_idx >= limit:
                        break
                    batch = trainer.strategy.batch_to_device(batch)
                    trainer.context.call_module("training_step", batch, batch_idx)
        finally:
            for m, momentum in momenta.items():
                m.momentum = momentum
            pl_module.train(was_training)

    # -- checkpoint -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else int(self.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = state_dict["n_averaged"]
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        average = state_dict["average_model_state"]
        if average is not None:
            if self._average_model is not None:
                self._average_model.load_state_dict(average)
            else:
                self._loaded_average = average
