"""The fit machine: the state functions of `trainer.fit`, the FitLoop they run on, and the machine that wires them.

Each state function takes the FitLoop (the fit's context) and returns the next state. The decisions come from
`engine.loops.policy`, the optimisation step from `engine.loops.optimization`, the data from `engine.loops.data`,
the run state from the `RunContext` (`loop.run`). In pseudocode, with the events each state fires (callbacks first,
then the module's hook):

    setup:          configure_callbacks, prepare_data, Setup, configure_model, [checkpoint: weights, datamodule,
                    handlers], configure_optimizers, FitStarted, [checkpoint: run state, optimizers, schedulers,
                    data position], zero_grad                  -> validation (sanity) | epoch_start | teardown
                                                                  | batch | epoch_end (resume)
    epoch_start:    [first: train_dataloader, TrainStarted] set_epoch, EpochStarted, iter(loader)
                                                               -> batch | epoch_end | teardown
    batch:          [decision point batch_start] next(loader), transfer hooks, BatchStarted, training_step
                                                               -> backward | batch | validation | epoch_end | teardown
    backward:       BeforeZeroGrad, optimizer_zero_grad, BeforeBackward, backward, AfterBackward
                                          -> optimizer_step (step due) | batch | validation | epoch_end
    optimizer_step: optimizer_step(closure -> BeforeOptimizerStep, configure_gradient_clipping), OptimizerStepped,
                    then the batch's end: counters advanced, BatchEnded, step metrics, [decision point batch_end]
                                                               -> batch | validation | epoch_end
    validation:     [sanity: SanityCheckStarted, eval machine, SanityCheckEnded, RNG restored]
                    [else: on_validation_model_zero_grad, eval machine]; BatchCompleted
                                                               -> batch | epoch_end | epoch_start | teardown
    epoch_end:      EpochEnded (non-monitors, module, monitors), epoch metrics, EpochCompleted, epoch += 1,
                    [decision point epoch_end]                 -> epoch_start | teardown
    teardown:       TrainEnded, FitEnded, Teardown             -> done

The LR schedulers are stepped by a handler (`hooks.lr_scheduler`) of OptimizerStepped / BatchCompleted /
EpochCompleted, attached for the fit through `RunContext.fit_handlers`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from torch import Tensor

from engine import events as ev
from engine.errors import MisconfigurationException
from engine.loops import policy
from engine.loops.data import loader_generators, num_batches, resume_iterator, set_sampler_epoch
from engine.loops.evaluate import EvalLoop, accepts_batch_idx
from engine.loops.optimization import SkipStep
from engine.machine import DONE, Machine
from engine.seed import collect_rng_states, set_rng_states
from engine.state import Stage, TrainerFn

if TYPE_CHECKING:  # pragma: no cover
    from engine.loops.context import RunContext

__all__ = ["FitLoop", "SkipStep", "build_fit_machine", "FIT_STATES"]

FIT_STATES = ("setup", "epoch_start", "batch", "backward", "optimizer_step", "validation", "epoch_end", "teardown")


class FitLoop:
    """The context of one `trainer.fit` run: what the state functions read and write.

    Per-step slots a custom state may read or replace: `batch`, `batch_idx`, `loss` (before backward),
    `outputs` (the dict given to on_train_batch_end), `optimizer`. `run` is the RunContext (progress, control,
    results, pipeline); `trainer` the Trainer, for Lightning-style code.
    """

    def __init__(self, run: "RunContext") -> None:
        self.run = run
        self.trainer = run.trainer
        self.module = run.module
        self.progress = run.progress
        self.pipeline = run.pipeline
        self.batch: Any = None
        self.loss: Tensor | None = None
        self.outputs: Any = None
        self.optimizer: Any = None
        self.extra: dict | None = None
        self._iter: Any = None
        self._pending: Any = None
        self.pass_batch_idx = accepts_batch_idx(self.module.training_step)
        self.step_fn = self.module.training_step  # the strategy's wrapper once setup ran
        self.step_limit = policy.step_limit(run.settings)
        self.resume_next: str | None = None  # where setup sends a resumed fit
        self.pending_grads: dict[str, Tensor] | None = None
        self._resume_rng: dict | None = None  # RNG states to restore right after the first resumed fetch
        # a second `fit` on this Trainer continues from the counters the first left (Lightning's fit loop keeps them)
        self.continued = run.progress.epoch > 0 or run.progress.global_step > 0
        self.last_val_time = 0.0  # time-based val_check_interval: when training started or validation last ended
        self.since_last_val = self._since_last_val if run.settings.val_check_time_interval is not None else None

    # -- views of the progress ------------------------------------------------------------------------------------
    @property
    def batch_idx(self) -> int:
        """Index of the current batch in the epoch (advanced when the batch ends, before BatchEnded fires)."""
        return self.progress.batch_idx

    @batch_idx.setter
    def batch_idx(self, value: int) -> None:
        self.progress.batch_idx = value

    @property
    def is_last_batch(self) -> bool:
        return self.progress.is_last_batch

    @property
    def sanity_done(self) -> bool:
        return self.progress.sanity_done

    @property
    def train_started(self) -> bool:
        return self.progress.train_started

    def state_dict(self) -> dict[str, Any]:
        """Where the fit is (progress, control, machine position, results): see `RunContext.state_dict`."""
        return self.run.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run.load_state_dict(state)

    # -- the wall clock of a time-based val_check_interval (read only when that flag is set) ---------------------------
    def _since_last_val(self) -> float:
        """Seconds since training started or validation last ended."""
        return time.monotonic() - self.last_val_time

    def restart_val_clock(self) -> None:
        """Training (re)starts or a validation ended: the time-based val_check_interval counts from now."""
        if self.since_last_val is not None:
            self.last_val_time = time.monotonic()

    # -- pieces a custom state can reuse ----------------------------------------------------------------------------
    def fetch(self) -> bool:
        """Draw the next batch into `self.batch` (moved to the device); False when the epoch's data is exhausted."""
        p, sources = self.progress, self.run.sources
        idx = p.batch_idx
        n = sources.num_training_batches
        if idx >= n:
            return False
        if self._pending is not None:
            batch, self._pending = self._pending, None
        else:
            try:
                batch = next(self._iter)
            except StopIteration:
                return False
            if self._resume_rng is not None:  # a resumed epoch: its data position is reached, now its RNG
                from engine.checkpoint import set_rng_state

                set_rng_state(self._resume_rng)
                self._resume_rng = None
        if sources.train_sized:
            p.is_last_batch = idx + 1 >= n
        elif idx + 1 >= n:
            p.is_last_batch = True
        else:  # unknown length: look one batch ahead to know whether this is the last one
            try:
                self._pending = next(self._iter)
                p.is_last_batch = False
            except StopIteration:
                p.is_last_batch = True
        transfer = self.run.transfer
        direct = transfer.direct  # type: ignore[union-attr]
        self.batch = direct(batch) if direct is not None else transfer(batch, 0)  # type: ignore[misc]
        return True

    def begin_batch(self) -> bool:
        """Fetch the next batch and fire BatchStarted (Timestamp advanced, `self.log` pointed at it);
        False when the epoch is over (data exhausted, limit reached, or skip_epoch requested)."""
        run = self.run
        control = run.control
        pipeline = self.pipeline
        if pipeline.resolve_control is not None:
            run.resolve_control("batch_start")
        if control.skip_epoch_requested or (control.stop_requested
                                            and policy.can_stop_early(self.progress, run.settings)):
            return False
        if not self.fetch():
            return False
        control.skip_step_requested = False  # a request from an earlier batch does not carry over
        if pipeline.version != run.bus.version:
            pipeline.refresh()
        batch = self.batch
        p = self.progress
        p.count_batch(batch)
        run.train_results.set_batch(batch)  # run.results points at it from epoch_start and after validation
        hs = pipeline.batch_started
        if hs:
            run.bus.call(hs, ev.BatchStarted(run, p.timestamp(), batch, p.batch_idx))
        # module code run by any state of this batch may self.log (written directly: nn.Module.__setattr__ is slow)
        self.module.__dict__["_current_fx_name"] = "training_step"
        return not control.skip_epoch_requested

    def call_step(self, name: str = "training_step", *args: Any) -> Any:
        """Call the module's method `name` with (batch, batch_idx) (or `args`) in training_step's `self.log`
        context, e.g. `loop.call_step("discriminator_step")` in a custom GAN state."""
        module = self.module
        module.__dict__["_current_fx_name"] = "training_step"
        if not args:
            args = (self.batch, self.batch_idx)
        return getattr(module, name)(*args)

    def training_step(self) -> Any:
        """Run the module's training_step on `self.batch` (the forward phase); returns what it returned."""
        module = self.module
        module.__dict__["_current_fx_name"] = "training_step"
        args = (self.batch, self.progress.batch_idx) if self.pass_batch_idx else (self.batch,)
        pipeline = self.pipeline
        if pipeline.wrap_forward or pipeline.provide_forward is not None:
            return pipeline.forward(self.step_fn, args)
        return self.step_fn(*args)

    def backward(self, loss: Tensor) -> None:
        """BeforeBackward, backward (provider, module override or loss.backward()), AfterBackward."""
        self.pipeline.backward(loss)

    def zero_grad(self, optimizer: Any) -> None:
        """BeforeZeroGrad then the module's optimizer_zero_grad (default optimizer.zero_grad())."""
        self.pipeline.zero_grad(optimizer, self.progress.batch_idx)

    def closure(self) -> Tensor | None:
        """The optimizer closure (see `StepPipeline.closure`)."""
        return self.pipeline.closure()

    def loss_of(self, out: Any) -> Tensor | None:
        """The loss from training_step's return (Tensor or dict with 'loss'); None: no backward, the step still runs."""
        if type(out) is Tensor and out.requires_grad and not out.ndim:  # the usual case: a scalar loss
            self.extra = None
            self.outputs = None
            return out
        name = type(self.module).__name__
        if isinstance(out, Tensor):
            loss, extra = out, None
        elif isinstance(out, dict):
            if "loss" not in out:
                raise MisconfigurationException(
                    f"{name}.training_step returned a dict without the key 'loss' (keys: {sorted(map(str, out))}); "
                    "with automatic optimization put the loss under 'loss', e.g. `return {'loss': loss, ...}`")
            loss = out["loss"]
            extra = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in out.items() if k != "loss"}
            if not isinstance(loss, Tensor):
                raise MisconfigurationException(
                    f"{name}.training_step returned {{'loss': {type(loss).__name__}}}; the loss must be a Tensor "
                    "computed from the model's outputs")
        elif out is None:  # Lightning: warn, skip backward; zero_grad and the optimizer step still run and count
            if self.run.world_size > 1:
                raise RuntimeError(
                    f"{name}.training_step returned None: skipping the `training_step` by returning None in "
                    "distributed training is not supported (the processes would disagree on the step); rewrite the "
                    "training logic so every process returns a loss")
            self.run.warn_once("training_step_none", "`training_step` returned `None`. If this was on purpose, "
                               "ignore this warning...")
            self.extra = None
            self.loss = None
            self.outputs = {}
            return None
        else:
            raise MisconfigurationException(
                f"{name}.training_step returned {type(out).__name__} ({_short(out)}); expected a loss Tensor, a dict "
                "with the key 'loss', or None to skip the batch")
        if loss.numel() != 1:
            raise MisconfigurationException(
                f"{name}.training_step returned a loss of shape {tuple(loss.shape)}; the loss must be a scalar "
                "tensor. Reduce it first, e.g. `loss.mean()`")
        if not loss.requires_grad:
            raise MisconfigurationException(
                f"{name}.training_step returned a loss that does not require grad, so backward cannot reach the "
                "model's parameters. Was it computed under torch.no_grad(), detached, converted with .item(), or "
                "computed from data only?")
        self.extra = extra
        self.outputs = None  # built on demand in finish_batch when someone listens
        return loss

    def manual_outputs(self, out: Any) -> Any:
        """What on_train_batch_end receives under manual optimization."""
        if isinstance(out, Tensor):
            return {"loss": out.detach()}
        if isinstance(out, dict):
            return {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in out.items()}
        if out is None:
            return {}
        raise MisconfigurationException(
            f"{type(self.module).__name__}.training_step returned {type(out).__name__} ({_short(out)}); "
            "under manual optimization return a Tensor, a dict, or None")

    def finish_batch(self) -> str:
        """After the step: counters advanced, BatchEnded, step metrics, then decide: validation, next batch, or
        epoch end."""
        run, p = self.run, self.progress
        idx = p.batch_idx
        p.batch_idx = idx + 1
        p.total_batch_idx += 1
        hs = self.pipeline.batch_ended
        if hs:
            if self.outputs is None:  # built only when someone listens
                self.outputs = {} if self.loss is None else {"loss": self.loss.detach(), **(self.extra or {})}
            run.bus.call(hs, ev.BatchEnded(run, p.timestamp(), self.outputs, self.batch, idx))
        results = run.train_results
        # Readers of callback/progress-bar metrics see the running values live (LoggedMetrics reads the attached
        # collection); they are merged for good only when written, before validation and at the epoch's end.
        stepped = self.pipeline.context.will_step
        if stepped and run.loggers and policy.should_update_logs(p, run.settings, run.control.stop_requested):
            out = run.metrics.update_step(results, write_logs=True)
            if out:
                run.log_metrics(out)
        results.batch_end()
        if self.pipeline.resolve_control is not None:
            run.resolve_control("batch_end")
        control = run.control
        if control.validate_requested:
            control.validate_requested = False
            if run.val_on:
                return "validation"
        elif run.val_on and policy.should_validate(p, run.settings, run.sources.val_check_batch,
                                                   control.stop_requested, self.since_last_val):
            return "validation"
        self.batch_completed()
        return self.after_batch()

    def batch_completed(self) -> None:
        """The batch is over, with any validation it triggered: BatchCompleted, then count it."""
        run, p = self.run, self.progress
        stepped = self.pipeline.context.will_step
        hs = run.bus.table.get(ev.BatchCompleted)
        if hs:
            run.bus.call(hs, ev.BatchCompleted(run, p.timestamp(), p.batch_idx - 1, stepped))
        if stepped:  # the loggers' x-axis counts batches that stepped (Lightning's _batches_that_stepped)
            p.batches_stepped += 1

    def after_batch(self) -> str:
        """Where to go once a batch (and any validation after it) is done; a boundary for checkpoints."""
        p, control = self.progress, self.run.control
        if p.is_last_batch or control.skip_epoch_requested:
            nxt = "epoch_end"
        elif control.stop_requested or p.global_step >= self.step_limit:
            nxt = "epoch_end" if self.done(mid_epoch=True) else "batch"
        else:
            nxt = "batch"
        run = self.run
        if run.boundary_writes or run.stop_signal is not None:
            run.reach_boundary(nxt, epoch_done=False)
        return nxt

    # -- the phases of a fit ----------------------------------------------------------------------------------------
    def setup_fit(self) -> None:
        """Everything before the first epoch: hooks, optimizers, FitStarted, zero_grad."""
        run = self.run
        run.announce("fit")
        p = self.progress
        carried = (p.epoch, p.global_step, p.batches_seen, p.samples_seen, p.total_batch_idx, p.batches_stepped)
        p.reset()
        if self.continued:  # a fit after a fit on this Trainer goes on from its counters (Lightning)
            (p.epoch, p.global_step, p.batches_seen, p.samples_seen, p.total_batch_idx,
             p.batches_stepped) = carried
        run.train_results = run.new_results(training=True)
        run.eval_results = run.new_results(training=False)
        run.setup_common(TrainerFn.FITTING)
        self.step_fn = run.step_method("training_step")
        ckpt = run.resume_from
        if ckpt is not None:
            from engine.loops.resume import restore_modules

            restore_modules(run, ckpt)
        self.pipeline.setup(self)
        run.attach_fit_handlers()
        self.optimizer = self.pipeline.optimizer
        run.fire_simple(ev.FitStarted)
        self.restart_val_clock()
        if ckpt is not None:
            from engine.loops.resume import restore_training

            self.resume_next = restore_training(self, ckpt)
        run.log_hyperparams()
        run.call_module("zero_grad")
        if self.pending_grads:
            from engine.loops.resume import restore_grads

            restore_grads(self)

    def done(self, mid_epoch: bool) -> bool:
        """max_steps, max_epochs (at epoch end), or an honoured stop request; tells the user why at epoch end."""
        run, p, s = self.run, self.progress, self.run.settings
        stop = run.control.stop_requested
        reason = policy.training_done(p, s, stop, mid_epoch)
        if reason:
            if not mid_epoch and run.strategy.is_global_zero:
                from engine.log import log

                what = {"max_steps": f"`max_steps={s.max_steps}` reached",
                        "max_epochs": f"`max_epochs={s.max_epochs}` reached",
                        "stop": "`trainer.should_stop` was set"}[reason]
                log.info(f"`Trainer.fit` stopped: {what}.")
            return True
        if policy.stop_blocked(p, s, stop):
            run.warn_once("min_epochs", f"Trainer was signaled to stop but min_epochs={s.min_epochs} or "
                          f"min_steps={s.min_steps} is not met; training continues")
        return False

    def start_epoch(self) -> str:
        run, p = self.run, self.progress
        run.results = run.train_results
        run.metrics.attach(run.train_results)
        sources = run.sources
        if not p.train_started:
            sources.load_train()
            self.restart_val_clock()
            p.train_started = True
            run.fire_simple(ev.TrainStarted)
        if self.done(mid_epoch=False):  # e.g. should_stop set in on_train_start
            return "teardown"
        if policy.should_reload(p.epoch, sources.last_train_reload, run.settings.reload_dataloaders_every_n_epochs):
            sources.load_train()
            self.restart_val_clock()  # Lightning restarts it whenever the train data is set up
        p.start_epoch()
        self._pending = None
        run.control.skip_epoch_requested = False
        set_sampler_epoch(sources.train_dataloader, p.epoch)
        run.fire_simple(ev.EpochStarted)
        self.record_epoch_rng()
        self._iter = iter(sources.train_dataloader)
        return "batch"

    def record_epoch_rng(self) -> None:
        """The RNG states the epoch's data order is drawn from (global and the loader's own generators), for an
        exact mid-epoch resume."""
        from engine.checkpoint import rng_state

        state = rng_state()
        state["generators"] = [g.get_state() for g in loader_generators(self.run.sources.train_dataloader)]
        self.run.epoch_rng = state

    def resume_epoch(self, data: dict[str, Any] | None, rng: dict[str, Any] | None) -> None:
        """Re-enter the epoch the checkpoint was written in: its data order re-created from the RNG states of its
        start, the consumed batches skipped by index, the checkpoint's RNG restored before the next batch."""
        from engine.checkpoint import set_rng_state

        run, p = self.run, self.progress
        run.results = run.train_results
        run.metrics.attach(run.train_results)
        loader = run.sources.train_dataloader
        self._pending = None
        set_sampler_epoch(loader, p.epoch)
        epoch_rng = data.get("epoch_rng") if data else None
        if epoch_rng is None:
            run.warn_once("resume_no_rng", "resuming mid-epoch without the epoch's RNG states (a checkpoint from "
                          "Lightning or written without them): the epoch's remaining batches come from a fresh "
                          "iterator, so they may differ from the interrupted run's")
            self._iter = resume_iterator(loader, 0)
            return
        set_rng_state(epoch_rng)
        for g, state in zip(loader_generators(loader), epoch_rng.get("generators", [])):
            g.set_state(state)
        run.epoch_rng = epoch_rng
        self._iter = resume_iterator(loader, int(data["batch_idx"]))  # type: ignore[index]
        self._resume_rng = rng

    def sanity_check(self) -> None:
        """Validation on num_sanity_val_steps batches with the RNG isolated; its metrics are discarded."""
        run = self.run
        states = collect_rng_states()
        run.metrics.reset()
        run.sanity_checking = True
        run.status.stage = Stage.SANITY_CHECK
        try:
            run.fire_simple(ev.SanityCheckStarted)
            loaders = run.sources.load_val("sanity_check")
            steps = run.settings.num_sanity_val_steps
            limits = [num_batches(dl, run.settings.limit_val_batches, "val") for dl in loaders]
            run.sources.num_sanity_val_batches = [lim if steps == -1 else min(steps, lim) for lim in limits]
            EvalLoop(run, "sanity_check", loaders, run.sources.num_sanity_val_batches, in_fit=True).run()
            run.fire_simple(ev.SanityCheckEnded)
        finally:
            run.sanity_checking = False
            run.status.stage = Stage.TRAIN
            run.metrics.reset()
            set_rng_states(states)

    def validate(self) -> None:
        """Validation inside the epoch: on_validation_model_zero_grad, the eval machine, then back to training."""
        run = self.run
        run.metrics.update_step(run.train_results, write_logs=False)  # keep the train step values visible
        if self.pipeline.context.will_step:  # not inside an accumulation window: its gradients are kept (Lightning)
            run.call_module("on_validation_model_zero_grad")
        run.status.stage = Stage.VALIDATE
        loaders = run.sources.load_val("validate")
        run.sources.num_val_batches = [num_batches(dl, run.settings.limit_val_batches, "val") for dl in loaders]
        EvalLoop(run, "validate", loaders, run.sources.num_val_batches, in_fit=True).run()
        run.status.stage = Stage.TRAIN
        run.results = run.train_results
        run.metrics.attach(run.train_results)
        self.batch_completed()

    def end_epoch(self) -> None:
        """EpochEnded with epoch metrics visible, epoch metrics to the loggers, EpochCompleted, then epoch += 1."""
        run, p = self.run, self.progress
        results = run.results = run.train_results
        run.metrics.attach(results)
        run.metrics.update_step(results, write_logs=False)  # the last step values stay in callback_metrics
        results.epoch_end_reached()
        hs = run.bus.table.get(ev.EpochEnded)
        if hs:
            run.bus.call(hs, ev.EpochEnded(run, p.timestamp()))
        out = run.metrics.update_epoch(results, write_logs=bool(run.loggers))
        if out:  # Lightning writes train epoch metrics at the step of the epoch's last batch
            run.log_metrics({**out, "epoch": p.epoch}, step=max(p.batches_stepped - 1, 0))
        results.reset()
        run.fire_simple(ev.EpochCompleted)
        p.epoch += 1
        p.batch_in_epoch = 0
        p.batch_idx = 0
        if self.pipeline.resolve_control is not None:
            run.resolve_control("epoch_end")

    def teardown_fit(self) -> None:
        run = self.run
        if self.progress.train_started:
            run.fire_simple(ev.TrainEnded)
        run.strategy.teardown()
        run.metrics.attach(None)
        run.metrics.teardown()
        run.fire_simple(ev.FitEnded)
        run.teardown_common(TrainerFn.FITTING)


# -- the state functions --------------------------------------------------------------------------------------------
def setup(loop: FitLoop) -> str:
    """Module and optimizers ready, FitStarted fired; sanity check next if validation is on. Resuming from a
    checkpoint, the run state is restored and the fit goes on at the state the checkpoint names."""
    loop.setup_fit()
    if loop.resume_next is not None and loop.resume_next != "epoch_start":  # mid-epoch: no sanity check
        return loop.resume_next
    if loop.continued and loop.run.resume_from is None and loop.done(mid_epoch=False):
        return "teardown"  # fit called again with max_epochs/max_steps already reached: nothing to do, and it says so
    s = loop.run.settings
    if policy.should_sanity_check(loop.run.val_on, s):
        return "validation"
    loop.progress.sanity_done = True
    if policy.fit_skipped(s):
        return "teardown"
    return "epoch_start"


def epoch_start(loop: FitLoop) -> str:
    """TrainStarted on the first epoch; then set_epoch, EpochStarted, and a fresh iterator over the train data."""
    return loop.start_epoch()


def batch(loop: FitLoop) -> str:
    """Fetch and move a batch, BatchStarted, training_step; an exhausted epoch goes to epoch_end."""
    if not loop.begin_batch():  # data exhausted, or on_train_batch_start returned -1
        return "epoch_end"
    pipeline = loop.pipeline
    if pipeline.context_used:
        pipeline.begin_micro_batch(loop.progress.batch_idx, loop.progress.is_last_batch)
    if not pipeline.automatic:
        loop.outputs = loop.manual_outputs(loop.training_step())
        pipeline.end_micro_batch()
        return loop.finish_batch()
    loop.loss = loop.loss_of(loop.training_step())
    if loop.loss is not None and pipeline.context.accumulate != 1:  # the mean over the accumulation window
        loop.loss = loop.loss / pipeline.context.accumulate
    return "backward"  # also when training_step returned None: zero_grad and the step run, backward does not


def backward(loop: FitLoop) -> str:
    """BeforeZeroGrad, optimizer_zero_grad, BeforeBackward, backward, AfterBackward; the step next when due."""
    pipeline = loop.pipeline
    optimizer = loop.optimizer = pipeline.optimizer
    if loop.loss is None:  # training_step returned None: no backward (Lightning's closure skips it)
        if pipeline.zero_grad_due(loop.progress.batch_idx):
            pipeline.zero_grad(optimizer, loop.progress.batch_idx)
    elif pipeline.plain_zero_grad and pipeline.plain_backward:  # nobody listens: the plain calls (the hot path)
        if pipeline.zero_grad_due(loop.progress.batch_idx):
            optimizer.zero_grad()
        pipeline.backward_fn(loop.loss)
    else:
        if pipeline.zero_grad_due(loop.progress.batch_idx):
            pipeline.zero_grad(optimizer, loop.progress.batch_idx)
        pipeline.backward(loop.loss)  # type: ignore[arg-type]
    pipeline.end_micro_batch()
    if pipeline.resolve_control is not None:
        loop.run.resolve_control("after_backward")
    if pipeline.context.will_step:
        return "optimizer_step"
    return loop.finish_batch()  # an accumulating micro-batch: no step (policy.step_due)


def optimizer_step(loop: FitLoop) -> str:
    """optimizer_step with the closure, OptimizerStepped; then the batch's end and validation or next."""
    loop.pipeline.step()
    return loop.finish_batch()


def validation(loop: FitLoop) -> str:
    """The sanity check (first time, RNG isolated) or a validation run inside the epoch."""
    p = loop.progress
    if not p.sanity_done:
        p.sanity_done = True
        loop.sanity_check()
        loop.restart_val_clock()
        return "teardown" if policy.fit_skipped(loop.run.settings) else "epoch_start"
    loop.validate()
    loop.restart_val_clock()
    return loop.after_batch()


def epoch_end(loop: FitLoop) -> str:
    """EpochEnded (after its validation), epoch metrics, EpochCompleted; then the next epoch or teardown."""
    loop.end_epoch()
    nxt = "teardown" if loop.done(mid_epoch=False) else "epoch_start"
    if loop.run.boundary_writes or loop.run.stop_signal is not None:
        loop.run.reach_boundary(nxt, epoch_done=True)
    return nxt


def teardown(loop: FitLoop) -> str:
    """TrainEnded (if training started), FitEnded, Teardown."""
    loop.teardown_fit()
    return DONE


def build_fit_machine() -> Machine:
    """The fit machine with exactly the user's eight states (see the module docstring)."""
    m = Machine("fit", initial="setup")
    m.add_state("setup", setup, to={"epoch_start", "validation", "teardown", "batch", "epoch_end"})
    m.add_state("epoch_start", epoch_start, to={"batch", "epoch_end", "teardown"})
    m.add_state("batch", batch, to={"backward", "batch", "validation", "epoch_end", "teardown"})
    m.add_state("backward", backward, to={"optimizer_step", "batch", "validation", "epoch_end"})
    m.add_state("optimizer_step", optimizer_step, to={"batch", "validation", "epoch_end", "teardown"})
    m.add_state("validation", validation, to={"batch", "epoch_end", "epoch_start", "teardown"})
    m.add_state("epoch_end", epoch_end, to={"epoch_start", "teardown"})
    m.add_state("teardown", teardown, to={DONE})
    return m


def _short(obj: Any, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."

