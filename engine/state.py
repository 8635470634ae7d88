"""Run counters (an immutable Timestamp) and the trainer's run status.

The machine alone advances the Timestamp; every event carries the one current when it fired.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Timestamp", "RunStatus", "Stage"]


class Timestamp(NamedTuple):
    """Where a run is: epochs completed, batch index in the current epoch, optimizer steps, batches and samples seen."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    batches_seen: int = 0
    samples_seen: int = 0

    def __str__(self) -> str:
        return f"epoch={self.epoch} batch={self.batch_in_epoch} step={self.global_step}"


class Stage:
    """The names of run stages (Lightning's `trainer.state.stage` values)."""

    TRAIN = "train"
    SANITY_CHECK = "sanity_check"
    VALIDATE = "validate"
    TEST = "test"
    PREDICT = "predict"


class RunStatus:
    """Lightning's `trainer.state`: status (initializing|running|finished|interrupted), fn and stage."""

    __slots__ = ("status", "fn", "stage")

    def __init__(self) -> None:
        self.status = "initializing"
        self.fn: str | None = None
        self.stage: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def __repr__(self) -> str:
        return f"RunStatus(status={self.status!r}, fn={self.fn!r}, stage={self.stage!r})"
