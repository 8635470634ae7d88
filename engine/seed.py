"""`seed_everything`: seed Python, NumPy and torch (all devices) in one call, as Lightning does."""

from __future__ import annotations

import os
import random
import warnings

import torch

from engine.errors import user_stacklevel

__all__ = ["seed_everything", "worker_init_function", "collect_rng_states", "set_rng_states"]

_MAX, _MIN = 2**32 - 1, 0


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed every RNG and export PL_GLOBAL_SEED (and PL_SEED_WORKERS=1 with workers=True); returns the seed.

    With `verbose` it says "Seed set to N" (an INFO record of the `engine` logger), as Lightning does."""
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        if env is None:
            seed = 0
            if verbose:
                warnings.warn("No seed found, seed set to 0 (seed_everything(None) with PL_GLOBAL_SEED unset: "
                              "using seed 0)", stacklevel=user_stacklevel())
        else:
            try:
                seed = int(env)
            except ValueError:
                raise ValueError(f"seed_everything: PL_GLOBAL_SEED={env!r} is not an integer") from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        try:
            seed = int(seed)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(f"seed_everything(seed={seed!r}): expected an int in [0, 2**32 - 1]") from None
    if not (_MIN <= seed <= _MAX):
        raise ValueError(f"seed_everything(seed={seed}): out of bounds; NumPy accepts seeds in [0, {_MAX}]")
    if verbose:
        from engine.log import log

        log.info(f"Seed set to {seed}")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = f"{int(workers)}"
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)  # seeds every device too
    return seed


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Seed a DataLoader worker's torch, random and NumPy from the worker's base seed, distinct per worker and rank."""
    global_rank = rank if rank is not None else int(os.environ.get("RANK", 0))
    process_seed = torch.initial_seed()
    base_seed = process_seed - worker_id
    ss = __import__("numpy").random.SeedSequence([base_seed, worker_id, global_rank])
    np_state = ss.generate_state(4)
    import numpy as np

    np.random.seed(np_state)
    torch_ss, stdlib_ss = ss.spawn(2)
    torch.manual_seed(int(torch_ss.generate_state(1, dtype=np.uint64)[0]))
    stdlib_seed = (stdlib_ss.generate_state(2, dtype=np.uint64).astype(object) * [1 << 64, 1]).sum()
    random.seed(int(stdlib_seed))


def collect_rng_states() -> dict:
    """The global RNG states of torch (and CUDA), Python and NumPy, to restore later with `set_rng_states`."""
    states: dict = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `collect_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
