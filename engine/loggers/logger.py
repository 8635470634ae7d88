"""Lightning's `lightning.pytorch.loggers.logger` import path: the `Logger` base class from `hooks.logger` and
`DummyLogger`."""

from hooks.dummy_logger import DummyLogger
from hooks.logger import Logger

__all__ = ["DummyLogger", "Logger"]
