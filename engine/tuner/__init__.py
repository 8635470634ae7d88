"""Lightning's `lightning.pytorch.tuner` import path: `Tuner` (learning-rate finder and batch-size finder)."""

from engine.tuner.tuning import Tuner

__all__ = ["Tuner"]
