"""The typed steering object: how handlers ask the machine to stop, skip, validate or save.

Handlers never flip private loop flags; they call these methods, and every request is recorded with who asked and
when (and fired as `ControlRequested` when someone listens), so a trace shows why a run did what it did. The
machine reads the pending requests only at its declared decision points (`engine.loops.policy.DECISION_POINTS`),
after `RunContext.resolve_control(point)`, the one call a sync handler turns into a collective.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

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
                 "save_requested", "history", "notify", "_now")

    _PENDING = ("stop_requested", "skip_epoch_requested", "skip_step_requested", "validate_requested",
                "save_requested")

    def __init__(self, now: Callable[[], Timestamp], notify: Callable[[ControlRequest], None] | None = None) -> None:
        self._now = now
        self.notify = notify  # called with each recorded request (the run fires ControlRequested through it)
        self.history: list[ControlRequest] = []
        self.reset()

    def state_dict(self) -> dict[str, Any]:
        """The pending requests and the history, as plain data."""
        return {"pending": {k: getattr(self, k) for k in self._PENDING},
                "history": [{"action": r.action, "by": r.by, "timestamp": list(r.timestamp), "reason": r.reason}
                            for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""
        for k, v in state.get("pending", {}).items():
            if k not in self._PENDING:
                raise KeyError(f"Control.load_state_dict: unknown pending request {k!r}; expected one of "
                               f"{list(self._PENDING)}")
            setattr(self, k, bool(v))
        self.history = [ControlRequest(r["action"], r["by"], Timestamp(*r["timestamp"]), r.get("reason", ""))
                        for r in state.get("history", [])]

    def reset(self) -> None:
        """Clear pending requests (a new run starts); the history is kept per run by the trainer."""
        self.stop_requested = False
        self.skip_epoch_requested = False
        self.skip_step_requested = False
        self.validate_requested = False
        self.save_requested = False

    def _record(self, action: str, reason: str, by: str | None) -> None:
        request = ControlRequest(action, by or _caller(), self._now(), reason)
        self.history.append(request)
        if self.notify is not None:
            self.notify(request)

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
