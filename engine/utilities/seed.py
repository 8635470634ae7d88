"""Lightning's `utilities.seed`: `seed_everything`, `reset_seed` and the `isolate_rng` context manager."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from engine.seed import collect_rng_states, seed_everything, set_rng_states

__all__ = ["isolate_rng", "reset_seed", "seed_everything"]


def reset_seed() -> None:
    """Seed again with what the last `seed_everything` exported (PL_GLOBAL_SEED / PL_SEED_WORKERS); no-op if unset."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is None:
        return
    seed_everything(int(seed), workers=bool(int(os.environ.get("PL_SEED_WORKERS", "0"))))


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """Restore the global torch, Python and NumPy RNG states (CUDA's too, with `include_cuda`) when the block exits."""
    states = collect_rng_states()
    if not include_cuda:
        states.pop("cuda", None)
    try:
        yield
    finally:
        set_rng_states(states)
