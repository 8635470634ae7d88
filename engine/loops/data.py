"""Dataloader helpers for the loops: batch limits, sizing, sampler epochs, batch transfer."""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from engine.errors import MisconfigurationException

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer

__all__ = ["as_loader_list", "num_batches", "set_sampler_epoch", "without_shuffle", "has_len", "maybe_seed_workers"]


def has_len(loader: Any) -> bool:
    """True when `len(loader)` works (an IterableDataset without __len__ has none)."""
    try:
        len(loader)
    except (TypeError, NotImplementedError):
        return False
    return True


def as_loader_list(loaders: Any, what: str) -> list[Any]:
    """One loader, a list/tuple of loaders, or a dict of loaders (in order) -> a list."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    if not hasattr(loaders, "__iter__"):
        raise MisconfigurationException(
            f"{what} must be an iterable such as a torch DataLoader, got {type(loaders).__name__}")
    return [loaders]


def num_batches(loader: Any, limit: int | float, what: str) -> int | float:
    """How many batches to draw from `loader` under `limit_*_batches` (int: at most that many; float: a fraction)."""
    if not has_len(loader):
        if isinstance(limit, float) and limit not in (0.0, 1.0):
            raise MisconfigurationException(
                f"limit_{what}_batches={limit}: a fraction needs a dataloader with a length, but the {what} "
                "dataloader has none (IterableDataset); pass an int number of batches instead")
        if isinstance(limit, int):
            return limit
        return 0 if limit == 0.0 else math.inf
    n = len(loader)
    if isinstance(limit, int):
        return min(n, limit)
    batches = int(n * limit)
    if limit > 0 and batches == 0 and n > 0:
        raise MisconfigurationException(
            f"limit_{what}_batches={limit} of a {what} dataloader with {n} batches gives {n} * {limit} < 1 batch; "
            f"increase limit_{what}_batches or pass an int")
    return batches


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call `set_epoch(epoch)` on the loader's sampler and batch sampler's sampler when they have one."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _rebuild(loader: DataLoader, **changes: Any) -> DataLoader:
    kwargs = dict(dataset=loader.dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                  collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                  timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                  persistent_workers=loader.persistent_workers)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    if loader.batch_size is None:  # a custom batch_sampler
        kwargs.pop("batch_size")
        kwargs.pop("drop_last")
    kwargs.update(changes)
    return DataLoader(**kwargs)


def without_shuffle(loader: Any) -> Any:
    """overfit_batches: the same first batches every epoch, so a shuffled DataLoader gets a SequentialSampler."""
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler) and loader.batch_size:
        warnings.warn("You requested to overfit but enabled train dataloader shuffling; statetrain replaces the "
                      "sampler with a SequentialSampler", UserWarning, stacklevel=3)
        return _rebuild(loader, sampler=SequentialSampler(loader.dataset))
    return loader


def maybe_seed_workers(loader: Any, trainer: "Trainer") -> Any:
    """With seed_everything(workers=True), give a multi-worker DataLoader without worker_init_fn a seeded one."""
    if (os.environ.get("PL_SEED_WORKERS") == "1" and isinstance(loader, DataLoader) and loader.num_workers > 0
            and loader.worker_init_fn is None and not isinstance(loader.dataset, IterableDataset)):
        from functools import partial

        from engine.seed import worker_init_function

        sampler = loader.sampler if loader.batch_size is not None else None
        changes: dict[str, Any] = {"worker_init_fn": partial(worker_init_function, rank=trainer.global_rank)}
        if sampler is not None:
            changes["sampler"] = sampler
        else:
            changes["batch_sampler"] = loader.batch_sampler
        return _rebuild(loader, **changes)
    return loader


def check_not_empty(loaders: Sequence[Any], what: str) -> None:
    """A dataloader of length 0 is a mistake: say which one and why it may be empty."""
    for i, dl in enumerate(loaders):
        if has_len(dl) and len(dl) == 0:
            ds = getattr(dl, "dataset", None)
            detail = ""
            if ds is not None and has_len(ds):
                detail = (f" (dataset of {len(ds)} samples, batch_size={getattr(dl, 'batch_size', None)}, "
                          f"drop_last={getattr(dl, 'drop_last', None)})")
            suffix = f" #{i}" if len(loaders) > 1 else ""
            raise MisconfigurationException(
                f"the {what} dataloader{suffix} has length 0{detail}; it yields no batch. Give it data, lower "
                "batch_size or set drop_last=False")
