"""Error types raised by statetrain; each message names the culprit and the fix."""

from __future__ import annotations

__all__ = ["MisconfigurationException", "IllegalTransition", "HandlerError", "OptimizationConfigError", "LoggerError",
           "CheckpointError"]


class MisconfigurationException(ValueError):
    """Bad configuration or bad user-code output, detected before or during a run (Lightning's name)."""


class OptimizationConfigError(MisconfigurationException, RuntimeError):
    """configure_optimizers returned something the optimization mode cannot run (Lightning raises RuntimeError)."""


class IllegalTransition(RuntimeError):
    """A state function returned a state that the transition table does not allow from the current state."""

    def __init__(self, machine: str, src: str, dst: object, legal: frozenset[str] | set[str]) -> None:
        targets = ", ".join(sorted(legal)) or "(none)"
        super().__init__(
            f"machine {machine!r}: illegal transition {src!r} -> {dst!r}; legal targets from {src!r} are: {targets}. "
            f"Return one of those from the {src!r} state function, or add the edge with machine.allow({src!r}, {dst!r})."
        )
        self.src = src
        self.dst = dst
        self.legal = frozenset(legal)


class HandlerError(RuntimeError):
    """Raised when two handlers claim the same single-provider action, or a handler is malformed."""


class LoggerError(RuntimeError):
    """A logger created with strict=True could not write; raised by the Trainer once the run has ended."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read: the message names the file and what is wrong with it."""
