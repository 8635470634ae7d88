"""Run counters (an immutable Timestamp), the trainer's run status and Lightning's str-valued enums.

The machine alone advances the Timestamp; every event carries the one current when it fired. `TrainerFn`,
`RunningStage` and `TrainerStatus` are also importable as `engine.trainer.states` (Lightning's path).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

__all__ = ["Timestamp", "RunStatus", "TrainerState", "Stage", "TrainerFn", "RunningStage", "TrainerStatus"]


class Timestamp(NamedTuple):
    """Where a run is: epochs completed, batch index in the current epoch, optimizer steps, batches and samples seen."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    batches_seen: int = 0
    samples_seen: int = 0

    def __str__(self) -> str:
        return f"epoch={self.epoch} batch={self.batch_in_epoch} step={self.global_step}"


class _StrEnum(str, Enum):
    """A str-valued enum equal to its value, case-insensitively (Lightning's `LightningEnum`):
    `"fit" == TrainerFn.FITTING`."""

    def __eq__(self, other: object) -> bool:
        other = other.value if isinstance(other, Enum) else str(other)
        return self.value.lower() == other.lower()

    def __hash__(self) -> int:  # equal members and strings land in the same dict slot
        return hash(self.value.lower())

    @classmethod
    def from_str(cls, value: str) -> "_StrEnum | None":
        """The member whose name or value is `value` (any case), or None."""
        return next((m for k, m in cls.__members__.items() if value.lower() in (k.lower(), m.value.lower())), None)

    def __str__(self) -> str:  # the plain value in messages and f-strings (Lightning prints `TrainerFn.FITTING`)
        return self.value

    __format__ = str.__format__

    def __reduce_ex__(self, protocol: Any) -> Any:  # pickles (and torch.save's weights_only load) as the plain string
        return str, (self.value,)


class TrainerFn(_StrEnum):
    """The entry point that runs (`trainer.state.fn`, and the `stage` given to `setup`/`teardown`)."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(_StrEnum):
    """What runs now (`trainer.state.stage`): fit runs sanity_check, train and validate; the others their own."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"
    # statetrain's short names (aliases of the members above)
    TRAIN = "train"
    SANITY_CHECK = "sanity_check"
    VALIDATE = "validate"
    TEST = "test"
    PREDICT = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str:
        return "val" if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING) else self.value


Stage = RunningStage  # the name the loops use


class TrainerStatus(_StrEnum):
    """`trainer.state.status`."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


def _member(enum: type[_StrEnum], value: Any) -> Any:
    if value is None or isinstance(value, enum):
        return value
    return enum(value)


class RunStatus:
    """Lightning's `trainer.state`: status (a TrainerStatus), fn (a TrainerFn) and stage (a RunningStage); plain
    strings assigned are turned into the members, so `trainer.state.fn == "fit"` and `is TrainerFn.FITTING` hold."""

    __slots__ = ("_status", "_fn", "_stage")

    def __init__(self) -> None:
        self._status: TrainerStatus = TrainerStatus.INITIALIZING
        self._fn: TrainerFn | None = None
        self._stage: RunningStage | None = None

    @property
    def status(self) -> TrainerStatus:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        self._status = TrainerStatus(value)

    @property
    def fn(self) -> TrainerFn | None:
        return self._fn

    @fn.setter
    def fn(self, value: str | None) -> None:
        self._fn = _member(TrainerFn, value)

    @property
    def stage(self) -> RunningStage | None:
        return self._stage

    @stage.setter
    def stage(self, value: str | None) -> None:
        self._stage = _member(RunningStage, value)

    @property
    def finished(self) -> bool:
        return self._status is TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self._status.stopped

    def __repr__(self) -> str:
        fn = None if self._fn is None else self._fn.value
        stage = None if self._stage is None else self._stage.value
        return f"RunStatus(status={self._status.value!r}, fn={fn!r}, stage={stage!r})"


TrainerState = RunStatus  # Lightning's name for `trainer.state`
