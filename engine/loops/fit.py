"""The fit machine: the state functions of `trainer.fit` and the machine that wires them.

Each function takes the FitLoop (the run's context) and returns the next state. In pseudocode, with the events
each state fires (callbacks first, then the module's hook):

    setup:          configure_callbacks, prepare_data, Setup, configure_model, configure_optimizers, FitStarted,
                    zero_grad                                  -> validation (sanity) | epoch_start | teardown
    epoch_start:    [first: train_dataloader, TrainStarted] set_epoch, EpochStarted, iter(loader)
                                                               -> batch | epoch_end | teardown
    batch:          next(loader), transfer hooks, BatchStarted, training_step
                                                               -> backward | batch | validation | epoch_end | teardown
    backward:       BeforeZeroGrad, optimizer_zero_grad, BeforeBackward, backward, AfterBackward
                                                               -> optimizer_step
    optimizer_step: optimizer_step(closure -> BeforeOptimizerStep, configure_gradient_clipping), OptimizerStepped,
                    step-interval schedulers, BatchEnded, step metrics
                                                               -> batch | validation | epoch_end
    validation:     [sanity: SanityCheckStarted, eval machine, SanityCheckEnded, RNG restored]
                    [else: on_validation_model_zero_grad, eval machine, plateau step schedulers]
                                                               -> batch | epoch_end | epoch_start | teardown
    epoch_end:      epoch metrics, EpochEnded (non-monitors, module, monitors), plateau epoch schedulers
                                                               -> epoch_start | teardown
    teardown:       TrainEnded, FitEnded, Teardown             -> done
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from engine import events as ev
from engine.bus import entered
from engine.loops.data import set_sampler_epoch
from engine.loops.evaluate import accepts_batch_idx
from engine.machine import DONE, Machine

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer

__all__ = ["FitLoop", "SkipStep", "build_fit_machine", "FIT_STATES"]

FIT_STATES = ("setup", "epoch_start", "batch", "backward", "optimizer_step", "validation", "epoch_end", "teardown")


class Hot:
    """The per-step listeners and phase wrappers, taken from the bus and refreshed at the start of a batch when the
    bus changed (a handler attached in the middle of a batch takes effect from the next batch)."""

    __slots__ = ("version", "batch_started", "before_zero_grad", "before_backward", "after_backward",
                 "before_optimizer_step", "optimizer_stepped", "batch_ended", "wrap_forward", "wrap_backward",
                 "wrap_optimizer_step", "step_provider")

    def __init__(self) -> None:
        self.version = -1

    def refresh(self, bus: Any) -> None:
        table, wrappers = bus.table, bus.wrappers
        self.version = bus.version
        self.batch_started = table.get(ev.BatchStarted)
        self.before_zero_grad = table.get(ev.BeforeZeroGrad)
        self.before_backward = table.get(ev.BeforeBackward)
        self.after_backward = table.get(ev.AfterBackward)
        self.before_optimizer_step = table.get(ev.BeforeOptimizerStep)
        self.optimizer_stepped = table.get(ev.OptimizerStepped)
        self.batch_ended = table.get(ev.BatchEnded)
        self.wrap_forward = wrappers.get("forward")
        self.wrap_backward = wrappers.get("backward")
        self.wrap_optimizer_step = wrappers.get("optimizer_step")
        provider = bus.providers.get("optimizer_step")
        self.step_provider = None if provider is None else provider[1]


class SkipStep(Exception):
    """Raised from the optimizer closure to abandon the current optimizer step (control.skip_step)."""


class FitLoop:
    """The context of one `trainer.fit` run: what the state functions read and write.

    Per-step slots a custom state may read or replace: `batch`, `batch_idx`, `loss` (before backward),
    `outputs` (the dict given to on_train_batch_end), `optimizer`.
    """

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.module = trainer.lightning_module
        self.batch: Any = None
        self.batch_idx = 0
        self.loss: Tensor | None = None
        self.outputs: Any = None
        self.optimizer: Any = None
        self.train_started = False
        self.sanity_done = False
        self.total_batch_idx = 0
        self.is_last_batch = False
        self._iter: Any = None
        self._pending: Any = None
        self._closure_calls = 0
        self._extra: dict | None = None
        self.hot = Hot()
        self.hot.refresh(trainer.bus)
        self.pass_batch_idx = accepts_batch_idx(self.module.training_step)
        self.last_train_reload = -1
        self.warned_log_interval = False

    # -- pieces a custom state can reuse ----------------------------------------------------------------------------
    def fetch(self) -> bool:
        """Draw the next batch into `self.batch` (moved to the device); False when the epoch's data is exhausted."""
        t = self.trainer
        idx = self.batch_idx
        if idx >= t.num_training_batches:
            return False
        if self._pending is not None:
            batch, self._pending = self._pending, None
        else:
            try:
                batch = next(self._iter)
            except StopIteration:
                return False
        if t._train_sized:
            self.is_last_batch = idx + 1 >= t.num_training_batches
        else:  # unknown length: look one batch ahead to know whether this is the last one
            if idx + 1 >= t.num_training_batches:
                self.is_last_batch = True
            else:
                try:
                    self._pending = next(self._iter)
                    self.is_last_batch = False
                except StopIteration:
                    self.is_last_batch = True
        self.batch = t._transfer_batch(batch, 0)
        return True

    def begin_batch(self) -> bool:
        """Fetch the next batch and fire BatchStarted (Timestamp advanced, `self.log` pointed at it);
        False when the epoch is over (data exhausted, limit reached, or skip_epoch requested)."""
        t = self.trainer
        control = t.control
        if control.skip_epoch_requested or (control.stop_requested and t._can_stop_early(t.current_epoch)):
            return False
        if not self.fetch():
            return False
        t._begin_train_batch(self)
        return not t.control.skip_epoch_requested

    def call_step(self, name: str = "training_step", *args: Any) -> Any:
        """Call the module's method `name` with (batch, batch_idx) (or `args`) in training_step's `self.log`
        context, e.g. `loop.call_step("discriminator_step")` in a custom GAN state."""
        module = self.module
        module.__dict__["_current_fx_name"] = "training_step"
        if not args:
            args = (self.batch, self.batch_idx)
        return getattr(module, name)(*args)

    def training_step(self) -> Any:
        """Run the module's training_step on `self.batch`; returns what it returned."""
        module = self.module
        module.__dict__["_current_fx_name"] = "training_step"
        args = (self.batch, self.batch_idx) if self.pass_batch_idx else (self.batch,)
        wraps = self.hot.wrap_forward
        if wraps:
            with entered(wraps):
                return module.training_step(*args)
        return module.training_step(*args)

    def backward(self, loss: Tensor) -> None:
        """BeforeBackward, backward (provider, module override or loss.backward()), AfterBackward."""
        t, hot = self.trainer, self.hot
        hs = hot.before_backward
        if hs:
            t.bus.call(hs, ev.BeforeBackward(t, t.timestamp, loss))
        with entered(hot.wrap_backward):
            t._backward_fn(loss)
        hs = hot.after_backward
        if hs:
            t.bus.call(hs, ev.AfterBackward(t, t.timestamp))

    def zero_grad(self, optimizer: Any) -> None:
        """BeforeZeroGrad then the module's optimizer_zero_grad (default optimizer.zero_grad())."""
        t = self.trainer
        hs = self.hot.before_zero_grad
        if hs:
            t.bus.call(hs, ev.BeforeZeroGrad(t, t.timestamp, optimizer))
        if t._zero_grad_overridden:
            self.module.__dict__["_current_fx_name"] = "optimizer_zero_grad"
            self.module.optimizer_zero_grad(t.current_epoch, self.batch_idx, t._lightning_optimizers[0])
        else:
            optimizer.zero_grad()

    def closure(self) -> Tensor | None:
        """The optimizer closure: first call returns the loss already computed by the batch/backward states;
        later calls (LBFGS re-evaluations) re-run training_step, zero_grad and backward. Each call then fires
        BeforeOptimizerStep and configure_gradient_clipping, as Lightning's wrapped closure does."""
        self._closure_calls += 1
        if self._closure_calls > 1:
            loss = self.trainer._check_training_output(self.training_step(), self)
            if loss is not None:
                self.zero_grad(self.optimizer)
                self.backward(loss)
            self.loss = loss
        t = self.trainer
        t._before_optimizer_step(self.optimizer)
        if t.control.skip_step_requested:  # asked for while gradients were final: abort the step before it updates
            raise SkipStep
        return None if self.loss is None else self.loss.detach()

    def finish_batch(self) -> str:
        """After the step: BatchEnded, step metrics, then decide: validation, next batch, or epoch end."""
        t = self.trainer
        hs = self.hot.batch_ended
        if hs:
            if self.outputs is None:  # built only when someone listens
                self.outputs = {} if self.loss is None else {"loss": self.loss.detach(), **(self._extra or {})}
            t.bus.call(hs, ev.BatchEnded(t, t.timestamp, self.outputs, self.batch, self.batch_idx))
        t._after_train_batch(self)
        self.batch_idx += 1
        self.total_batch_idx += 1
        if (t._val_on or t.control.validate_requested) and t._should_validate(self):
            return "validation"
        if t._lr is None:
            t._batches_stepped += 1  # what _after_batch_validation does when there is no scheduler to step
        else:
            t._after_batch_validation(self)
        return self.after_batch()

    def after_batch(self) -> str:
        """Where to go once a batch (and any validation after it) is done."""
        t = self.trainer
        control = t.control
        if self.is_last_batch or control.skip_epoch_requested or control.stop_requested or (
                t._global_step >= t._step_limit):
            return "epoch_end" if self.is_last_batch or t._training_done(mid_epoch=True) or (
                control.skip_epoch_requested) else "batch"
        return "batch"


# -- the state functions --------------------------------------------------------------------------------------------
def setup(loop: FitLoop) -> str:
    """Module and optimizers ready, FitStarted fired; sanity check next if validation is on."""
    t = loop.trainer
    t._setup_fit(loop)
    if t._should_sanity_check():
        return "validation"
    loop.sanity_done = True
    if t._fit_skipped():
        return "teardown"
    return "epoch_start"


def epoch_start(loop: FitLoop) -> str:
    """TrainStarted on the first epoch; then set_epoch, EpochStarted, and a fresh iterator over the train data."""
    t = loop.trainer
    t._results = t._train_results
    t._metrics.attach(t._train_results)
    if not loop.train_started:
        t._load_train_dataloader(loop)
        loop.train_started = True
        t._fire_simple(ev.TrainStarted)
    if t._training_done(mid_epoch=False):  # e.g. should_stop set in on_train_start
        return "teardown"
    if t._should_reload_train(loop):
        t._load_train_dataloader(loop)
    loop.batch_idx = 0
    loop.is_last_batch = False
    loop._pending = None
    t.control.skip_epoch_requested = False
    t._batch_in_epoch = 0
    set_sampler_epoch(t.train_dataloader, t.current_epoch)
    t._fire_simple(ev.EpochStarted)
    loop._iter = iter(t.train_dataloader)
    return "batch"


def batch(loop: FitLoop) -> str:
    """Fetch and move a batch, BatchStarted, training_step; an exhausted epoch goes to epoch_end."""
    t = loop.trainer
    if not loop.begin_batch():  # data exhausted, or on_train_batch_start returned -1
        return "epoch_end"
    out = loop.training_step()
    if not t._automatic:
        loop.outputs = t._manual_outputs(out)
        return loop.finish_batch()
    loop.loss = t._check_training_output(out, loop)
    if loop.loss is None:  # training_step returned None: no backward, no step
        return loop.finish_batch()
    return "backward"


def backward(loop: FitLoop) -> str:
    """BeforeZeroGrad, optimizer_zero_grad, BeforeBackward, backward, AfterBackward."""
    t, hot = loop.trainer, loop.hot
    optimizer = loop.optimizer = t._step_optimizer
    if hot.before_zero_grad or t._zero_grad_overridden:
        loop.zero_grad(optimizer)
    else:  # nothing listens and nothing is overridden: the plain calls (the hot path of every step)
        optimizer.zero_grad()
    if hot.before_backward or hot.after_backward or hot.wrap_backward:
        loop.backward(loop.loss)  # type: ignore[arg-type]
    else:
        t._backward_fn(loop.loss)
    return "optimizer_step"


def optimizer_step(loop: FitLoop) -> str:
    """optimizer_step with the closure, OptimizerStepped, schedulers, BatchEnded; then validation or next."""
    loop.trainer._optimizer_step(loop)
    return loop.finish_batch()


def validation(loop: FitLoop) -> str:
    """The sanity check (first time, RNG isolated) or a validation run inside the epoch."""
    t = loop.trainer
    if not loop.sanity_done:
        loop.sanity_done = True
        t._run_sanity_check()
        return "teardown" if t._fit_skipped() else "epoch_start"
    t._run_fit_validation(loop)
    return loop.after_batch()


def epoch_end(loop: FitLoop) -> str:
    """EpochEnded (after its validation), epoch metrics, plateau schedulers; then the next epoch or teardown."""
    t = loop.trainer
    t._end_train_epoch(loop)
    if t._training_done(mid_epoch=False):
        return "teardown"
    return "epoch_start"


def teardown(loop: FitLoop) -> str:
    """TrainEnded (if training started), FitEnded, Teardown."""
    loop.trainer._teardown_fit(loop)
    return DONE


def build_fit_machine() -> Machine:
    """The fit machine with exactly the user's eight states (see the module docstring)."""
    m = Machine("fit", initial="setup")
    m.add_state("setup", setup, to={"epoch_start", "validation", "teardown"})
    m.add_state("epoch_start", epoch_start, to={"batch", "epoch_end", "teardown"})
    m.add_state("batch", batch, to={"backward", "batch", "validation", "epoch_end", "teardown"})
    m.add_state("backward", backward, to={"optimizer_step", "batch"})
    m.add_state("optimizer_step", optimizer_step, to={"batch", "validation", "epoch_end", "teardown"})
    m.add_state("validation", validation, to={"batch", "epoch_end", "epoch_start", "teardown"})
    m.add_state("epoch_end", epoch_end, to={"epoch_start", "teardown"})
    m.add_state("teardown", teardown, to={DONE})
    return m
