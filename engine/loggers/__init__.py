"""Lightning's `lightning.pytorch.loggers` import path: the logger base and the built-in loggers from `hooks`."""

from engine.loggers.csv_logs import CSVLogger
from engine.loggers.logger import DummyLogger, Logger
from engine.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "DummyLogger", "Logger", "TensorBoardLogger"]
