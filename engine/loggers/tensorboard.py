"""Lightning's `lightning.pytorch.loggers.tensorboard` import path: `TensorBoardLogger` from `hooks.tensorboard`."""

from hooks.tensorboard import TensorBoardLogger

__all__ = ["TensorBoardLogger"]
