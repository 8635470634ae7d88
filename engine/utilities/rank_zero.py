"""Lightning's `utilities.rank_zero`: run a function, a log record or a warning on global rank 0 only.

`rank_zero_only.rank` is read once at import from RANK, LOCAL_RANK, SLURM_PROCID, JSM_NAMESPACE_RANK (the first one
set; 0 when none is), as in Lightning; a launcher or strategy that learns the real rank later assigns it.
`rank_zero_info/debug` write through the standard `logging` logger of this module, as Lightning's do (visible once
the program configures logging); the framework's own messages go through `engine.log` instead.
"""

from __future__ import annotations

import logging
import warnings
from functools import wraps
from typing import Any, Callable, TypeVar

from engine.errors import user_stacklevel
from engine.log import env_rank

__all__ = ["rank_zero_debug", "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def rank_zero_only(fn: Callable[..., T], default: T | None = None) -> Callable[..., T | None]:
    """Decorator: call `fn` only where `rank_zero_only.rank == 0`; on other ranks return `default` (None)."""

    @wraps(fn)
    def wrapped_fn(*args: Any, **kwargs: Any) -> T | None:
        rank = getattr(rank_zero_only, "rank", None)
        if rank is None:
            raise RuntimeError("rank_zero_only.rank is not set: assign the process's global rank before use")
        if rank == 0:
            return fn(*args, **kwargs)
        return default

    return wrapped_fn


rank_zero_only.rank = getattr(rank_zero_only, "rank", env_rank())  # type: ignore[attr-defined]

# stacklevel defaults make the log record point at the caller of rank_zero_*: the chain is
# caller -> wrapped_fn -> rank_zero_x -> log.x. Warnings point at the first frame outside the framework (the user's
# line, also when statetrain itself warns) unless a stacklevel is given.


@rank_zero_only
def rank_zero_debug(*args: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    """`logging.debug` on rank 0 only."""
    log.debug(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_info(*args: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    """`logging.info` on rank 0 only."""
    log.info(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_warn(message: str | Warning, stacklevel: int | None = None, **kwargs: Any) -> None:
    """`warnings.warn` on rank 0 only (`category=` and the other keywords pass through)."""
    warnings.warn(message, stacklevel=user_stacklevel() if stacklevel is None else stacklevel, **kwargs)


def rank_zero_deprecation(message: str | Warning, stacklevel: int | None = None, **kwargs: Any) -> None:
    """A `DeprecationWarning` (unless `category=` says otherwise) on rank 0 only."""
    category = kwargs.pop("category", DeprecationWarning)
    rank_zero_warn(message, stacklevel=stacklevel, category=category, **kwargs)
