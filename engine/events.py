"""The typed events of statetrain: one small frozen, slotted class per point in the run.

Every event carries a narrow read-only view of the run (`RunView`: timestamp, stage, control, metrics, ranks, and the
Trainer for Lightning callbacks) and the Timestamp current when it fired, plus exactly the data a handler needs. A
trace replay passes a stub view; `event.trainer` is then None.
Events come in Started/Ended pairs. `LIGHTNING_HOOKS` maps each event to the Lightning hook fired at the same point,
and `lightning_args()` gives that hook's arguments after `(trainer, pl_module)`; the Callback and module adapters use
both. An event nobody listens to is never constructed (see `engine.bus`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from engine.state import Timestamp

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor
    from torch.optim import Optimizer

    from engine.control import Control, ControlRequest
    from engine.trainer import Trainer

__all__ = [
    "Event", "RunView", "Setup", "Teardown", "FitStarted", "FitEnded", "SanityCheckStarted", "SanityCheckEnded",
    "TrainStarted", "TrainEnded", "EpochStarted", "EpochEnded", "BatchStarted", "BatchEnded",
    "BeforeZeroGrad", "BeforeBackward", "AfterBackward", "BeforeOptimizerStep", "OptimizerStepped",
    "ValidationStarted", "ValidationEnded", "ValidationEpochStarted", "ValidationEpochEnded",
    "ValidationBatchStarted", "ValidationBatchEnded", "TestStarted", "TestEnded", "TestEpochStarted",
    "TestEpochEnded", "TestBatchStarted", "TestBatchEnded", "PredictStarted", "PredictEnded",
    "PredictEpochStarted", "PredictEpochEnded", "PredictBatchStarted", "PredictBatchEnded",
    "ExceptionRaised", "SaveCheckpoint", "LoadCheckpoint", "StateChanged", "EvalBatchStarted", "EvalBatchEnded",
    "BatchCompleted", "EpochCompleted", "MetricsWritten", "ControlRequested",
    "CATALOGUE", "LIGHTNING_HOOKS", "handler_method_name",
]

_ev = dataclass(frozen=True, slots=True, eq=False)


class RunView(Protocol):
    """What an event tells a handler about the run, read-only. The run context implements it; a replay stubs it."""

    @property
    def trainer(self) -> "Trainer | None": ...
    @property
    def control(self) -> "Control": ...
    @property
    def timestamp(self) -> Timestamp: ...
    @property
    def stage(self) -> str | None: ...
    @property
    def callback_metrics(self) -> Mapping[str, Any]: ...
    @property
    def global_rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...


@_ev
class Event:
    """Base of all events: the run's view and the Timestamp at the moment the event fired."""

    run: "RunView"
    timestamp: Timestamp

    @property
    def trainer(self) -> "Trainer":
        """The Trainer (for Lightning-style code); None when a trace replay fires the event."""
        run = self.run
        return None if run is None else run.trainer  # type: ignore[return-value]

    @property
    def control(self) -> "Control":
        """The steering object (request stop, skip, validate now, ...)."""
        return self.run.control

    def lightning_args(self) -> tuple:
        """Positional arguments of the matching Lightning hook after `(trainer, pl_module)`."""
        return ()

    def lightning_kwargs(self) -> dict:
        """Keyword arguments of the matching Lightning hook (only `stage=` for setup/teardown)."""
        return {}


@_ev
class Setup(Event):
    """Before the run: datamodule, callbacks, then module `setup(stage)`."""

    stage: str

    def lightning_kwargs(self) -> dict:
        return {"stage": self.stage}


@_ev
class Teardown(Event):
    """After the run: `teardown(stage)` of datamodule, callbacks, then module."""

    stage: str

    def lightning_kwargs(self) -> dict:
        return {"stage": self.stage}


@_ev
class FitStarted(Event):
    """`trainer.fit` set up the model and optimizers and is about to train."""


@_ev
class FitEnded(Event):
    """`trainer.fit` finished training (after TrainEnded, before Teardown)."""


@_ev
class SanityCheckStarted(Event):
    """The pre-training validation sanity check starts."""


@_ev
class SanityCheckEnded(Event):
    """The sanity check is over; its metrics are discarded."""


@_ev
class TrainStarted(Event):
    """The first training epoch is about to start."""


@_ev
class TrainEnded(Event):
    """Training is over (limits reached or stop requested)."""


@_ev
class EpochStarted(Event):
    """A training epoch starts (`on_train_epoch_start`)."""


@_ev
class EpochEnded(Event):
    """A training epoch ended, after its end-of-epoch validation (`on_train_epoch_end`)."""


@_ev
class BatchStarted(Event):
    """A training batch was fetched and moved to the device (`on_train_batch_start`)."""

    batch: Any
    batch_idx: int

    def lightning_args(self) -> tuple:
        return (self.batch, self.batch_idx)


@_ev
class BatchEnded(Event):
    """A training batch is done: optimizer stepped, schedulers stepped (`on_train_batch_end`)."""

    outputs: Any
    batch: Any
    batch_idx: int

    def lightning_args(self) -> tuple:
        return (self.outputs, self.batch, self.batch_idx)


@_ev
class BeforeZeroGrad(Event):
    """Gradients of `optimizer` are about to be zeroed (first micro-batch of a step, after training_step)."""

    optimizer: "Optimizer"

    def lightning_args(self) -> tuple:
        return (self.optimizer,)


@_ev
class BeforeBackward(Event):
    """`loss.backward()` is about to run."""

    loss: "Tensor"

    def lightning_args(self) -> tuple:
        return (self.loss,)


@_ev
class AfterBackward(Event):
    """Gradients are computed (not yet clipped or unscaled)."""


@_ev
class BeforeOptimizerStep(Event):
    """The optimizer is about to step; gradients are final (before clipping)."""

    optimizer: "Optimizer"

    def lightning_args(self) -> tuple:
        return (self.optimizer,)


@_ev
class OptimizerStepped(Event):
    """The optimizer stepped (no Lightning hook): the place for EMA updates and step-level bookkeeping."""

    optimizer: "Optimizer"


@_ev
class _Boundary(Event):
    """Start/end of an evaluation run or epoch (validation, test, predict)."""


@_ev
class EvalBatchStarted(Event):
    """Base of the evaluation batch-start events."""

    batch: Any
    batch_idx: int
    dataloader_idx: int
    num_dataloaders: int

    def lightning_args(self) -> tuple:
        if self.num_dataloaders > 1:
            return (self.batch, self.batch_idx, self.dataloader_idx)
        return (self.batch, self.batch_idx)


@_ev
class EvalBatchEnded(Event):
    """Base of the evaluation batch-end events."""

    outputs: Any
    batch: Any
    batch_idx: int
    dataloader_idx: int
    num_dataloaders: int

    def lightning_args(self) -> tuple:
        if self.num_dataloaders > 1:
            return (self.outputs, self.batch, self.batch_idx, self.dataloader_idx)
        return (self.outputs, self.batch, self.batch_idx)


@_ev
class ValidationStarted(_Boundary):
    """A validation run starts (also inside the sanity check)."""


@_ev
class ValidationEnded(_Boundary):
    """A validation run ended; its epoch metrics are in `trainer.callback_metrics`."""


@_ev
class ValidationEpochStarted(_Boundary):
    """The validation epoch starts."""


@_ev
class ValidationEpochEnded(_Boundary):
    """The validation epoch ended (metrics not yet reduced)."""


@_ev
class ValidationBatchStarted(EvalBatchStarted):
    """A validation batch is about to run."""


@_ev
class ValidationBatchEnded(EvalBatchEnded):
    """A validation batch ran."""


@_ev
class TestStarted(_Boundary):
    """A test run starts."""


@_ev
class TestEnded(_Boundary):
    """A test run ended."""


@_ev
class TestEpochStarted(_Boundary):
    """The test epoch starts."""


@_ev
class TestEpochEnded(_Boundary):
    """The test epoch ended."""


@_ev
class TestBatchStarted(EvalBatchStarted):
    """A test batch is about to run."""


@_ev
class TestBatchEnded(EvalBatchEnded):
    """A test batch ran."""


@_ev
class PredictStarted(_Boundary):
    """A predict run starts."""


@_ev
class PredictEnded(_Boundary):
    """A predict run ended."""


@_ev
class PredictEpochStarted(_Boundary):
    """The predict epoch starts."""


@_ev
class PredictEpochEnded(_Boundary):
    """The predict epoch ended."""


@_ev
class PredictBatchStarted(EvalBatchStarted):
    """A predict batch is about to run."""


@_ev
class PredictBatchEnded(EvalBatchEnded):
    """A predict batch ran."""


@_ev
class ExceptionRaised(Event):
    """User or engine code raised; fired before cleanup, then the exception is re-raised."""

    exception: BaseException

    def lightning_args(self) -> tuple:
        return (self.exception,)


@_ev
class SaveCheckpoint(Event):
    """A checkpoint dict is being built; handlers may add to it in place."""

    checkpoint: dict

    def lightning_args(self) -> tuple:
        return (self.checkpoint,)


@_ev
class LoadCheckpoint(Event):
    """A checkpoint dict was loaded; handlers may read or migrate it in place."""

    checkpoint: dict

    def lightning_args(self) -> tuple:
        return (self.checkpoint,)


@_ev
class BatchCompleted(Event):
    """A training batch is over, with any validation it triggered (no Lightning hook): step-interval plateau
    schedulers and after-batch checkpoints go here. `batch_idx` is the batch's index in the epoch."""

    batch_idx: int
    stepped: bool = True  # False for a micro-batch that only accumulated gradients


@_ev
class EpochCompleted(Event):
    """A training epoch is over and its epoch metrics are final (no Lightning hook): epoch-interval plateau
    schedulers and end-of-epoch checkpoints go here; the epoch counter advances right after."""


@_ev
class MetricsWritten(Event):
    """Metrics go to the loggers: Python floats at x-axis `step` (loggers are handlers of this event)."""

    metrics: dict
    step: int


@_ev
class ControlRequested(Event):
    """A handler asked the machine to stop, skip, validate or save (fired when the request is recorded)."""

    request: "ControlRequest"


@_ev
class StateChanged(Event):
    """The machine moved from `src` to `dst` (fired only when someone listens)."""

    machine: str
    src: str
    dst: str


# Lightning hook fired at the same point as each event (module and Callback share the names).
LIGHTNING_HOOKS: dict[type[Event], str] = {
    Setup: "setup", Teardown: "teardown",
    FitStarted: "on_fit_start", FitEnded: "on_fit_end",
    SanityCheckStarted: "on_sanity_check_start", SanityCheckEnded: "on_sanity_check_end",
    TrainStarted: "on_train_start", TrainEnded: "on_train_end",
    EpochStarted: "on_train_epoch_start", EpochEnded: "on_train_epoch_end",
    BatchStarted: "on_train_batch_start", BatchEnded: "on_train_batch_end",
    BeforeZeroGrad: "on_before_zero_grad", BeforeBackward: "on_before_backward",
    AfterBackward: "on_after_backward", BeforeOptimizerStep: "on_before_optimizer_step",
    ValidationStarted: "on_validation_start", ValidationEnded: "on_validation_end",
    ValidationEpochStarted: "on_validation_epoch_start", ValidationEpochEnded: "on_validation_epoch_end",
    ValidationBatchStarted: "on_validation_batch_start", ValidationBatchEnded: "on_validation_batch_end",
    TestStarted: "on_test_start", TestEnded: "on_test_end",
    TestEpochStarted: "on_test_epoch_start", TestEpochEnded: "on_test_epoch_end",
    TestBatchStarted: "on_test_batch_start", TestBatchEnded: "on_test_batch_end",
    PredictStarted: "on_predict_start", PredictEnded: "on_predict_end",
    PredictEpochStarted: "on_predict_epoch_start", PredictEpochEnded: "on_predict_epoch_end",
    PredictBatchStarted: "on_predict_batch_start", PredictBatchEnded: "on_predict_batch_end",
    ExceptionRaised: "on_exception",
    SaveCheckpoint: "on_save_checkpoint", LoadCheckpoint: "on_load_checkpoint",
}

# Every concrete event type, in the order they are documented.
CATALOGUE: tuple[type[Event], ...] = tuple(LIGHTNING_HOOKS) + (
    OptimizerStepped, BatchCompleted, EpochCompleted, MetricsWritten, ControlRequested, StateChanged)


def handler_method_name(event_type: type[Event]) -> str:
    """`EpochEnded` -> `on_epoch_ended`: the method a handler class defines to observe an event."""
    return "on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", event_type.__name__).lower()
