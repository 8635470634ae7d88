"""The run's position as data: one mutable `Progress` object, owned by the run and advanced only by the loops.

`Timestamp` (engine.state) is the immutable snapshot handlers see; `Progress` is what the loops write. Lightning's
`trainer.current_epoch`, `global_step` and `is_last_batch` are views of it. `state_dict()` holds plain ints and bools
only, so a checkpoint of it needs no pickle.

Counters, and when the fit loop advances them:

    epoch            epochs completed              +1 at the end of epoch_end
    batch_in_epoch   index of the current batch    set when a batch is fetched
    global_step      optimizer steps               +1 after each optimizer step
    batches_seen     training batches fetched      +1 when a batch is fetched
    samples_seen     samples in those batches      + batch size when a batch is fetched
    batch_idx        batches finished this epoch   +1 before BatchEnded (so BatchEnded sees the batch as done)
    total_batch_idx  batches finished in the fit   +1 with batch_idx
    batches_stepped  batches completed, validation included: the loggers' x-axis (Lightning's
                     `_batches_that_stepped`)      +1 after the batch and any validation it triggered
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from engine.state import Timestamp

__all__ = ["Progress", "batch_size_of"]

_COUNTERS = ("epoch", "batch_in_epoch", "global_step", "batches_seen", "samples_seen", "batch_idx",
             "total_batch_idx", "batches_stepped")
_FLAGS = ("train_started", "sanity_done", "is_last_batch")


class Progress:
    """Where the run is: counters, the fit's phase flags, and (set by the fit loop) the pending control requests."""

    __slots__ = _COUNTERS + _FLAGS

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Back to the start of a run (every counter 0, every flag False)."""
        for name in _COUNTERS:
            setattr(self, name, 0)
        for name in _FLAGS:
            setattr(self, name, False)

    def timestamp(self) -> Timestamp:
        """The immutable snapshot events carry."""
        return Timestamp(self.epoch, self.batch_in_epoch, self.global_step, self.batches_seen, self.samples_seen)

    def set_timestamp(self, ts: Timestamp) -> None:
        """Take the five Timestamp counters from `ts` (the others are left as they are)."""
        self.epoch, self.batch_in_epoch, self.global_step, self.batches_seen, self.samples_seen = ts

    def start_epoch(self) -> None:
        """A training epoch begins: the per-epoch position goes back to its first batch."""
        self.batch_idx = 0
        self.batch_in_epoch = 0
        self.is_last_batch = False

    def count_batch(self, batch: Any) -> None:
        """A training batch was fetched: point at it and count it and its samples."""
        self.batch_in_epoch = self.batch_idx
        self.batches_seen += 1
        first = batch[0] if type(batch) in (tuple, list) and batch else None
        if type(first) is Tensor and first.dim():  # the usual (x, y) batch, without a call
            self.samples_seen += first.size(0)
        else:
            self.samples_seen += batch_size_of(batch)

    def state_dict(self) -> dict[str, int | bool]:
        """Every counter and flag as plain Python values."""
        return {name: getattr(self, name) for name in _COUNTERS + _FLAGS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; unknown keys are an error, missing ones keep their value."""
        unknown = set(state) - set(_COUNTERS + _FLAGS)
        if unknown:
            raise KeyError(f"Progress.load_state_dict: unknown keys {sorted(unknown)}; expected a subset of "
                           f"{list(_COUNTERS + _FLAGS)}")
        for name, value in state.items():
            setattr(self, name, bool(value) if name in _FLAGS else int(value))

    def __repr__(self) -> str:
        return "Progress(" + ", ".join(f"{k}={v}" for k, v in self.state_dict().items()) + ")"


def batch_size_of(batch: Any) -> int:
    """Samples in a batch for the Timestamp: size(0) of the first tensor found (0 when there is none)."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_size_of(item)
            if n:
                return n
        return 0
    if isinstance(batch, dict):
        for item in batch.values():
            n = batch_size_of(item)
            if n:
                return n
    return 0
