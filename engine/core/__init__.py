"""Lightning's `lightning.pytorch.core` import path: `LightningModule` and `LightningDataModule`."""

from engine.datamodule import LightningDataModule
from engine.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
