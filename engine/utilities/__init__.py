"""Lightning's `lightning.pytorch.utilities` import path: rank-zero helpers, seeding, `AttributeDict`, data moves."""

from engine.datamodule import move_data_to_device
from engine.hparams import AttributeDict
from engine.utilities.rank_zero import (
    rank_zero_debug, rank_zero_deprecation, rank_zero_info, rank_zero_only, rank_zero_warn,
)
from engine.utilities.seed import isolate_rng, reset_seed, seed_everything

__all__ = [
    "AttributeDict", "isolate_rng", "move_data_to_device", "rank_zero_debug", "rank_zero_deprecation",
    "rank_zero_info", "rank_zero_only", "rank_zero_warn", "reset_seed", "seed_everything",
]
