"""The typed steering object: how handlers ask the machine to stop, skip, validate or save.

Handlers never flip private loop flags; they call these methods, and every request is recorded with who asked and
when, so a trace shows why a run did what it did.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from engine.state import Timestamp

__all__ = ["Control", "ControlRequest"]


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One recorded request: what was asked, by whom, at which Timestamp, and why."""

    action: str
    by: str
    timestamp: Timestamp
    reason: str = ""


def _caller() -> str:
    """Name the function that called a Control method (3 frames up: _caller, _record, the method), e.g.
    `EarlyStopping.on_epoch_ended`."""
    frame = sys._getframe(3)
    code = frame.f_code
    return getattr(code, "co_qualname", code.co_name)


class Control:
    """Pending steering requests, read by the machine at its decision points."""

    __slots__ = ("stop_requested", "skip_epoch_requested", "skip_step_requested", "validate_requested",
                 "save_requested", "history", "_now")

    def __init__(self, now: Callable[[], Timestamp]) -> None:
        self._now = now
        self.history: list[ControlRequest] = []
        self.reset()

    def reset(self) -> None:
        """Clear pending requests (a new run starts); the history is kept per run by the trainer."""
        self.stop_requested = False
        self.skip_epoch_requested = False
        self.skip_step_requested = False
        self.validate_requested = False
        self.save_requested = False

    def _record(self, action: str, reason: str, by: str | None) -> None:
        self.history.append(ControlRequest(action, by or _caller(), self._now(), reason))

    def request_stop(self, reason: str = "", by: str | None = None) -> None:
        """Stop training at the next decision point (honouring min_epochs / min_steps), like `trainer.should_stop = True`."""
        self.stop_requested = True
        self._record("stop", reason, by)

    def skip_epoch(self, reason: str = "", by: str | None = None) -> None:
        """Skip the rest of the current training epoch (Lightning: `on_train_batch_start` returning -1)."""
        self.skip_epoch_requested = True
        self._record("skip_epoch", reason, by)

    def skip_step(self, reason: str = "", by: str | None = None) -> None:
        """Skip the optimizer step of the current batch (gradients are still zeroed at the next step)."""
        self.skip_step_requested = True
        self._record("skip_step", reason, by)

    def validate_now(self, reason: str = "", by: str | None = None) -> None:
        """Run validation after the current training batch, whatever val_check_interval says."""
        self.validate_requested = True
        self._record("validate", reason, by)

    def save_now(self, reason: str = "", by: str | None = None) -> None:
        """Ask checkpoint handlers to save after the current batch."""
        self.save_requested = True
        self._record("save", reason, by)
