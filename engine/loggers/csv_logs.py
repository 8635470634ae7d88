"""Lightning's `lightning.pytorch.loggers.csv_logs` import path: `CSVLogger` from `hooks.csv_logger`."""

from hooks.csv_logger import CSVLogger

__all__ = ["CSVLogger"]
