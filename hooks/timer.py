"""Timer: tracks the time spent training, validating and testing, and stops training when a time budget is spent.

Lightning's `Timer(duration, interval, verbose)`; `Trainer(max_time=...)` adds one with interval='step'. The budget is
checked after every training batch ('step') or every training epoch ('epoch'), and once at fit start (a restored
state may already be over budget). The stop request honours min_epochs/min_steps like any other.
"""

from __future__ import annotations

import re
from datetime import timedelta
from time import monotonic
from typing import Any

from engine.errors import MisconfigurationException
from engine.log import log
from hooks.callback import Callback

__all__ = ["Timer", "parse_duration"]

_STAGES = ("train", "sanity_check", "validate", "test", "predict")  # Lightning's RunningStage values


def parse_duration(duration: str | timedelta | dict[str, int] | None,
                   owner: str = "Timer(duration=...)") -> float | None:
    """Seconds in a "DD:HH:MM:SS" string, a timedelta, or a dict of timedelta keyword arguments (None stays None)."""
    if duration is None:
        return None
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", duration.strip())
        if not match:
            raise MisconfigurationException(
                f"{owner}: {duration!r} is not a valid duration; expected a string in the format DD:HH:MM:SS, "
                "e.g. '00:12:00:00' for 12 hours")
        days, hours, minutes, seconds = map(int, match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    if isinstance(duration, dict):
        try:
            return timedelta(**duration).total_seconds()
        except TypeError as exc:
            raise MisconfigurationException(
                f"{owner}: {duration!r} is not a valid duration; dict keys must be timedelta arguments "
                f"(weeks, days, hours, minutes, seconds, ...): {exc}") from None
    raise MisconfigurationException(
        f"{owner}: got {type(duration).__name__} {duration!r}; expected a 'DD:HH:MM:SS' string, a "
        "datetime.timedelta or a dict such as {'hours': 12}")


def _stage(stage: str) -> str:
    value = getattr(stage, "value", stage)
    if value not in _STAGES:
        raise ValueError(f"Timer: unknown stage {stage!r}; expected one of {', '.join(_STAGES)}")
    return value


class Timer(Callback):
    """Stops training once `duration` has elapsed; `time_elapsed(stage)` etc. report seconds per stage."""

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        interval = getattr(interval, "value", interval)
        if interval not in ("step", "epoch"):
            raise MisconfigurationException(
                f"Timer(interval={interval!r}): unsupported value; expected 'step' (check after every training "
                "batch) or 'epoch' (check after every training epoch)")
        self._duration = parse_duration(duration)
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._offset = 0.0

    @property
    def duration(self) -> float | None:
        """The budget in seconds (None: only measure)."""
        return self._duration

    def start_time(self, stage: str = "train") -> float | None:
        """Clock value (time.monotonic) when `stage` last started, or None."""
        return self._start_time[_stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        """Clock value (time.monotonic) when `stage` last ended, or None."""
        return self._end_time[_stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in `stage` (its last run; training adds the time restored by load_state_dict)."""
        stage = _stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return (monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of the budget for `stage`, or None without a duration."""
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["train"] = monotonic()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["train"] = monotonic()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["validate"] = monotonic()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["validate"] = monotonic()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_time["test"] = monotonic()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_time["test"] = monotonic()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check_time_remaining(trainer)

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Training time already spent counts against the budget of the resumed run."""
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))

    def _check_time_remaining(self, trainer: Any) -> None:
        assert self._duration is not None
        over = self.time_elapsed("train") >= self._duration
        broadcast = getattr(getattr(trainer, "strategy", None), "broadcast", None)
        if broadcast is not None:
            over = broadcast(over)  # every rank stops at the same batch
        if not over or trainer.control.stop_requested:
            return
        trainer.control.request_stop("time limit reached", by="Timer")
        if self._verbose and getattr(trainer, "is_global_zero", True):
            elapsed = timedelta(seconds=int(self.time_elapsed("train")))
            log.info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")
