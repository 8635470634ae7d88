"""Error and warning types raised by statetrain; each message names the culprit and the fix.

`user_stacklevel()` is the `stacklevel` every framework warning passes to `warnings.warn`, so the warning points at
the user's line (the first frame outside engine/, hooks/, strategies/, pydantic and the torch/stdlib plumbing between
them), never at statetrain's internals. It lives here, beside the types, because this module imports nothing of
ours: any module can use it without an import cycle.
"""

from __future__ import annotations

import os
import sys

__all__ = ["MisconfigurationException", "IllegalTransition", "HandlerError", "OptimizationConfigError", "LoggerError",
           "CheckpointError", "PossibleUserWarning", "user_stacklevel"]


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


class PossibleUserWarning(UserWarning):
    """A warning that may be a false positive (Lightning's class: silence it with a `warnings` filter)."""


def _internal_prefixes() -> tuple[str, ...]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prefixes = [os.path.join(root, name) + os.sep for name in ("engine", "hooks", "strategies")]
    for name in ("pydantic", "pydantic_core", "torch", "contextlib", "functools"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = os.path.abspath(path)
        # a package: everything under its directory; a stdlib module: that one file
        prefixes.append(os.path.dirname(path) + os.sep if path.endswith("__init__.py") else path)
    return tuple(prefixes)


_PREFIXES: dict[str, tuple[str, ...]] = {}


def user_stacklevel(extra: int = 0) -> int:
    """The `stacklevel` that makes `warnings.warn`, called by the caller of this function, point at the first frame
    outside the framework (engine/, hooks/, strategies/, and the pydantic, torch, contextlib and functools frames
    between them). `extra` counts wrapper frames between the caller and `warnings.warn` (e.g. a `warn_once`)."""
    key = ",".join(name for name in ("pydantic", "pydantic_core", "torch") if name in sys.modules)
    prefixes = _PREFIXES.get(key)
    if prefixes is None:
        prefixes = _PREFIXES[key] = _internal_prefixes()
    frame = sys._getframe(1)  # the caller; warnings.warn is called `extra` frames below it
    level = 1 + extra
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(prefixes):
        frame = frame.f_back
        level += 1
    return level
