"""The fit loop's decisions as pure functions of the run state (`Progress`), the settings and the control flags.

Nothing here fires an event, logs or mutates: the state functions in `engine.loops.fit` call these at their decision
points and act on the answer, so each rule can be read, tested and changed in one place. Lightning's rules (reference
§2, §6): validation every `val_check_batch` batches of every `check_val_every_n_epoch`-th epoch; stop requests
honoured once `min_epochs`/`min_steps` are met; zero_grad on the first micro-batch of an accumulation window and the
optimizer step on its last (or on the epoch's last batch).

Time-based `val_check_interval` (Lightning 2.6): `should_validate` takes a zero-argument `since_last_val` callable
and calls it only when the batch has passed the epoch gate, so the clock is read at the check point and never for
batch-based runs; the caller restarts that clock when training starts and after each validation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import RunSettings
    from engine.loops.progress import Progress

__all__ = [
    "DECISION_POINTS", "fit_skipped", "should_sanity_check", "can_stop_early", "training_done", "stop_blocked",
    "should_validate", "should_update_logs", "zero_grad_due", "step_due", "should_reload", "step_limit"
]

# Where the fit machine resolves pending control requests (`RunContext.resolve_control(point)`): a sync handler
# turns each resolution into one collective so that every rank takes the same branch. 'after_backward' (every
# micro-batch, gradients complete) is where a skipped step is agreed, before any rank updates its weights.
DECISION_POINTS = ("batch_start", "after_backward", "batch_end", "epoch_end")


def step_limit(s: "RunSettings") -> float:
    """max_steps as a number to compare against (-1: no limit)."""
    return s.max_steps if s.max_steps != -1 else math.inf


def fit_skipped(s: "RunSettings") -> bool:
    """Nothing to train: max_epochs=0, max_steps=0 or limit_train_batches=0."""
    return s.max_epochs == 0 or s.max_steps == 0 or s.limit_train_batches == 0


def should_sanity_check(val_on: bool, s: "RunSettings") -> bool:
    return val_on and s.num_sanity_val_steps != 0


def can_stop_early(p: "Progress", s: "RunSettings") -> bool:
    """A stop request is honoured only once min_epochs and min_steps are met."""
    met_epochs = p.epoch >= s.min_epochs if s.min_epochs else True
    met_steps = p.global_step >= s.min_steps if s.min_steps else True
    return met_epochs and met_steps


def training_done(p: "Progress", s: "RunSettings", stop_requested: bool, mid_epoch: bool) -> str:
    """Why training ends now ('max_steps', 'max_epochs', 'stop'), or '' when it goes on.

    Mid-epoch only max_steps and an honoured stop request count; max_epochs is checked between epochs."""
    if s.max_steps != -1 and p.global_step >= s.max_steps:
        return "max_steps"
    if not mid_epoch and s.max_epochs != -1 and p.epoch >= s.max_epochs:
        return "max_epochs"
    if stop_requested and can_stop_early(p, s):
        return "stop"
    return ""


def stop_blocked(p: "Progress", s: "RunSettings", stop_requested: bool) -> bool:
    """A stop was requested but min_epochs/min_steps keep training going (Lightning warns once)."""
    return stop_requested and not can_stop_early(p, s)


def should_validate(p: "Progress", s: "RunSettings", val_check_batch: float, stop_requested: bool,
                    since_last_val: Callable[[], float] | None = None) -> bool:
    """Lightning's val-check rule after a training batch (batch_idx already advanced; validation is on).

    Order as in Lightning's `_should_check_val_fx`: the `check_val_every_n_epoch` gate, the last batch of a loader
    without a length, an honoured stop request, then either the wall clock (time-based val_check_interval: seconds
    since the last validation >= the interval; the epoch's end does not force a validation) or the batch count."""
    n = s.check_val_every_n_epoch
    if n is not None and (p.epoch + 1) % n != 0:
        return False
    if val_check_batch == math.inf and p.is_last_batch:
        return True
    if stop_requested and can_stop_early(p, s):
        return True
    interval = s.val_check_time_interval
    if interval is not None and since_last_val is not None:
        return since_last_val() >= interval
    if val_check_batch == math.inf:
        return False
    current = p.total_batch_idx if n is None else p.batch_idx
    return current % val_check_batch == 0


def should_update_logs(p: "Progress", s: "RunSettings", stop_requested: bool) -> bool:
    """This training batch's step metrics go to the loggers: every log_every_n_steps, or when stopping."""
    n = s.log_every_n_steps
    return bool(n) and ((p.batches_stepped + 1) % n == 0 or stop_requested)


def zero_grad_due(batch_idx: int, accumulate: int) -> bool:
    """Gradients are zeroed on the first micro-batch of an accumulation window."""
    return accumulate == 1 or batch_idx % accumulate == 0


def step_due(batch_idx: int, accumulate: int, is_last_batch: bool) -> bool:
    """The optimizer steps on the last micro-batch of a window, and on the epoch's last batch."""
    return accumulate == 1 or (batch_idx + 1) % accumulate == 0 or is_last_batch


def should_reload(epoch: int, last_reload: int, every_n_epochs: int) -> bool:
    """reload_dataloaders_every_n_epochs: reload when that many epochs passed since the last load."""
    return bool(every_n_epochs) and epoch - last_reload >= every_n_epochs
