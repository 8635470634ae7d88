"""Lightning's `lightning.pytorch.loggers.logger` import path: the `Logger` base class from `hooks.logger`."""

from hooks.logger import Logger

__all__ = ["Logger"]
