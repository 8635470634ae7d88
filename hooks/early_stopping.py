"""EarlyStopping: stop training when a monitored metric stops improving (Lightning 2.x's callback).

`EarlyStopping(monitor, min_delta=0.0, patience=3, verbose=False, mode="min", strict=True, check_finite=True,
stopping_threshold=None, divergence_threshold=None, check_on_train_epoch_end=None, log_rank_zero_only=False)`.

When it checks: `setup` resolves `check_on_train_epoch_end=None` to "validation runs exactly once per training epoch"
(`val_check_interval == 1.0 and check_val_every_n_epoch == 1`). If so the check runs in `on_train_epoch_end` (after
the module's hook: `is_monitor = True`), otherwise after every validation run in `on_validation_end`. It never runs
during the sanity check, outside `fit`, or with `fast_dev_run`.

Each check, in this order: a non-finite value (check_finite) stops; a value better than `stopping_threshold` stops;
a value worse than `divergence_threshold` stops; a value better than the best by more than `min_delta` resets the
wait count and becomes the best; anything else adds one to the wait count and stops once it reaches `patience`.
`patience` therefore counts checks (validation runs), not epochs.

A stop is requested through `trainer.control.request_stop(reason=..., by="EarlyStopping")`, so it is recorded in
`trainer.control.history` with the reason; the engine decides when the loop actually ends (min_epochs/min_steps).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable

import torch
from torch import Tensor

from engine.errors import MisconfigurationException
from engine.log import log
from engine.utilities.rank_zero import rank_zero_warn
from hooks.callback import Callback

__all__ = ["EarlyStopping", "EarlyStoppingReason"]


class EarlyStoppingReason(Enum):
    """Why an EarlyStopping callback asked training to stop (NOT_STOPPED while it has not)."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Monitor `monitor` in `trainer.callback_metrics` and request a stop when it no longer improves.

    Attributes: `wait_count` (checks since the last improvement), `best_score` (a tensor, +inf/-inf before the first
    check), `stopped_epoch` (the epoch of the stop request, 0 if none), `stopping_reason` (an EarlyStoppingReason)
    and `stopping_reason_message` (the reason in words, None if not stopped).

    Raises MisconfigurationException for a `mode` other than "min"/"max", and RuntimeError at a check when `monitor`
    is missing from the metrics and `strict=True`.
    """

    is_monitor = True  # on_train_epoch_end runs after the module's, like Lightning's monitoring callbacks

    mode_dict: dict[str, Callable[..., Tensor]] = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 check_on_train_epoch_end: bool | None = None, log_rank_zero_only: bool = False) -> None:
        super().__init__()
        if mode not in self.mode_dict:
            raise MisconfigurationException(
                f"EarlyStopping(mode={mode!r}): `mode` can be {', '.join(self.mode_dict)}, got {mode!r}")
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # stored signed, as Lightning does: an improvement means monitor_op(current - min_delta, best)
        self.min_delta = abs(min_delta) if self.monitor_op is torch.gt else -abs(min_delta)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        inf = torch.tensor(torch.inf)
        self.best_score: Tensor = inf if self.monitor_op is torch.lt else -inf

    # -- configuration -----------------------------------------------------------------------------------------------
    @property
    def monitor_op(self) -> Callable[..., Tensor]:
        return self.mode_dict[self.mode]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # validation more (or less) often than once per training epoch: check after each validation run instead
            self._check_on_train_epoch_end = (trainer.val_check_interval == 1.0
                                              and trainer.check_val_every_n_epoch == 1)

    # -- state -------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data and a tensor only, so `torch.load(weights_only=True)` reads it back."""
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # -- where the check runs ----------------------------------------------------------------------------------------
    def _should_skip_check(self, trainer: Any) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    # -- the check ---------------------------------------------------------------------------------------------------
    def _validate_condition_metric(self, logs: dict[str, Any]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        available = "`, `".join(logs.keys())
        message = (f"Early stopping conditioned on metric `{self.monitor}` which is not available. Pass in or "
                   f"modify your `EarlyStopping` callback to use any of the following: `{available}`")
        if self.strict:
            raise RuntimeError(message)
        if self.verbose:
            rank_zero_warn(message, category=RuntimeWarning)
        return False

    def _run_early_stopping_check(self, trainer: Any) -> None:
        """Evaluate the monitored metric and, if a criterion says so, request the stop."""
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        current = torch.as_tensor(logs[self.monitor]).squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)

        reduce = getattr(trainer.strategy, "reduce_boolean_decision", None)
        if reduce is not None:  # any rank stopping stops them all
            should_stop = bool(reduce(should_stop, all=False))
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
            trainer.control.request_stop(reason=reason or "early stopping", by="EarlyStopping")
        if reason and (self.verbose or should_stop):
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        op, sign = self.monitor_op, self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (f"Monitored metric {self.monitor} = {current} is not finite. Previous best value was "
                          f"{self.best_score:.3f}. Signaling Trainer to stop.")
        if self.stopping_threshold is not None and op(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (f"Stopping threshold reached: {self.monitor} = {current} {sign} "
                          f"{self.stopping_threshold}. Signaling Trainer to stop.")
        if self.divergence_threshold is not None and op(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (f"Divergence threshold reached: {self.monitor} = {current} {sign} "
                          f"{self.divergence_threshold}. Signaling Trainer to stop.")
        if op(current - self.min_delta, self.best_score.to(current.device)):
            message = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
            return False, message
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                          f"Best score: {self.best_score:.3f}. Signaling Trainer to stop.")
        return False, None

    def _improvement_message(self, current: Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (f"Metric {self.monitor} improved by {abs(self.best_score - current):.3f} >= "
                    f"min_delta = {abs(self.min_delta)}. New best score: {current:.3f}")
        return f"Metric {self.monitor} improved. New best score: {current:.3f}"

    @staticmethod
    def _log_info(trainer: Any, message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is not None:
            if log_rank_zero_only and rank != 0:
                return
            message = f"[rank: {rank}] {message}"
        log.info(message)
