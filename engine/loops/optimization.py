"""The optimisation step pipeline: one code path for automatic and manual optimisation, in phases.

Per micro-batch:

    [wrap train_step
        forward   [wrap forward / provide forward]      training_step(batch, batch_idx)
        loss      the loss from its output (checked; None skips backward; the step still runs)
        zero_grad BeforeZeroGrad, optimizer_zero_grad   (first micro-batch of a window: policy.zero_grad_due)
        backward  [wrap backward / provide backward]    BeforeBackward, provider | module.backward | loss.backward,
                                                        AfterBackward
    ]
    when the step is due (policy.step_due):
        step      [wrap optimizer_step / provide optimizer_step]  module.optimizer_step(closure) or optimizer.step;
                  inside, the closure:  unscale [provide] -> BeforeOptimizerStep -> clip [provide, or the module's
                  configure_gradient_clipping when it overrides it]
        counted   global_step += 1, OptimizerStepped

Under manual optimisation `self.manual_backward(loss)` is the backward phase and `opt.step()` the step phase (the
LightningOptimizer's step function is `StepPipeline.manual_step`). Wrappers and providers receive the run's one
`PhaseContext` (which optimizer, which batch, whether this micro-batch steps), mutated in place, never allocated
per step. What runs is planned once per bus version (`StepPipeline.refresh`): a step with nobody listening is the
plain `optimizer.zero_grad(); loss.backward(); optimizer.step()`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from engine import events as ev
from engine.bus import entered
from engine.errors import MisconfigurationException
from engine.loops.data import overridden
from engine.loops.policy import step_due, zero_grad_due

if TYPE_CHECKING:  # pragma: no cover
    from engine.loops.context import RunContext
    from engine.loops.fit import FitLoop

__all__ = ["PhaseContext", "StepPipeline", "SkipStep", "MockOptimizer"]

_NO_WRAP = nullcontext()


class SkipStep(Exception):
    """Raised from the optimizer closure to abandon the current optimizer step (control.skip_step)."""


class MockOptimizer(torch.optim.Optimizer):
    """Stands in when configure_optimizers returns None: step only runs the closure."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Callable | None = None) -> Any:  # type: ignore[override]
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


class PhaseContext:
    """What a phase's wrappers and providers are told; one object per run, updated in place before each phase.

    `optimizer`: the torch optimizer of this step; `optimizer_idx`: its index in `trainer.optimizers`;
    `batch_idx`: the batch in the epoch; `will_step`: whether this micro-batch ends with an optimizer step (False on
    the first micro-batches of an accumulation window: a DDP `no_sync` wrapper skips the gradient sync then);
    `accumulate`: micro-batches per step; `grad_norm`: the total gradient norm when a clip provider measured it."""

    __slots__ = ("run", "optimizer", "optimizer_idx", "batch_idx", "will_step", "accumulate", "grad_norm", "loss")

    def __init__(self, run: "RunContext") -> None:
        self.run = run
        self.optimizer: Any = None
        self.optimizer_idx = 0
        self.batch_idx = 0
        self.will_step = True
        self.accumulate = 1
        self.grad_norm: Tensor | None = None
        self.loss: Tensor | None = None

    def __repr__(self) -> str:
        return (f"PhaseContext(optimizer={type(self.optimizer).__name__}, batch_idx={self.batch_idx}, "
                f"will_step={self.will_step}, accumulate={self.accumulate})")


class StepPipeline:
    """The optimizers of a fit and the step built from them, planned per bus version."""

    def __init__(self, run: "RunContext") -> None:
        self.run = run
        self.context = PhaseContext(run)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lightning_optimizers: list[Any] = []
        self.lr_scheduler_configs: list[Any] = []
        self.optimizer: Any = None
        self.automatic = True
        self.context.accumulate = run.settings.accumulate_grad_batches
        self.version = -1
        self.closure_calls = 0
        self.resolve_control: Callable | None = None
        self._open: AbstractContextManager | None = None  # the train_step wrappers, open across forward..backward
        self.loop: "FitLoop | None" = None

    # -- setup ------------------------------------------------------------------------------------------------------
    def setup(self, loop: "FitLoop") -> None:
        """configure_optimizers, the LightningOptimizer wrappers, and what the module overrides."""
        from engine.module import LightningModule
        from engine.optim import LightningOptimizer, parse_optimizers

        run, module = self.run, loop.module
        self.loop = loop
        returned = run.call_module("configure_optimizers")
        opts, scheds, _monitor = parse_optimizers(returned, automatic_optimization=module.automatic_optimization)
        self.optimizers = list(opts)
        self.lr_scheduler_configs = list(scheds)
        self.automatic = module.automatic_optimization
        step_fn = self.provided_step if self.automatic else self.manual_step
        self.lightning_optimizers = [LightningOptimizer(o, step_fn=step_fn) for o in self.optimizers]
        self.optimizer = self.optimizers[0] if self.optimizers else MockOptimizer()
        self.context.optimizer = self.optimizer
        self.context.accumulate = run.settings.accumulate_grad_batches
        if not self.automatic and self.context.accumulate != 1:
            raise MisconfigurationException(
                f"Trainer(accumulate_grad_batches={self.context.accumulate}): automatic gradient accumulation is not "
                f"supported for manual optimization ({type(module).__name__}.automatic_optimization is False); "
                "accumulate in training_step yourself, stepping the optimizer every N batches")
        self.zero_grad_overridden = overridden(module, LightningModule, "optimizer_zero_grad") and bool(self.optimizers)
        self.step_overridden = overridden(module, LightningModule, "optimizer_step")
        # optimizers that re-evaluate the closure (LBFGS) must get it; the others may be stepped after it ran
        self.closure_free = bool(self.optimizers) and not isinstance(self.optimizer, torch.optim.LBFGS)
        self.clip_hook = (overridden(module, LightningModule, "configure_gradient_clipping")
                          or overridden(module, LightningModule, "clip_gradients"))
        self.clip_on = self.automatic and bool(self.clip_hook or run.settings.gradient_clip_val)
        # without an overridden hook, the Trainer's values (validated by the config) go straight to the provider
        self.clip_args = (run.settings.gradient_clip_val, run.config.gradient_clip_algorithm or "norm")
        self.backward_overridden = overridden(module, LightningModule, "backward")
        self.version = -1
        self.refresh()

    def refresh(self) -> None:
        """Re-read listeners, wrappers and providers from the bus (called when its version changed)."""
        from engine.loops.context import with_context

        bus, ctx = self.run.bus, self.context
        table, wrappers, providers = bus.table, bus.wrappers, bus.providers
        self.version = bus.version
        self.batch_started = table.get(ev.BatchStarted)
        self.before_zero_grad = table.get(ev.BeforeZeroGrad)
        self.before_backward = table.get(ev.BeforeBackward)
        self.after_backward = table.get(ev.AfterBackward)
        self.before_optimizer_step = table.get(ev.BeforeOptimizerStep)
        self.optimizer_stepped = table.get(ev.OptimizerStepped)
        self.batch_ended = table.get(ev.BatchEnded)
        self.wrap_train_step = wrappers.get("train_step")
        self.wrap_forward = wrappers.get("forward")
        self.wrap_backward = wrappers.get("backward")
        self.wrap_optimizer_step = wrappers.get("optimizer_step")

        def provider(action: str) -> Callable | None:
            found = providers.get(action)
            return None if found is None else with_context(found[1], ctx)

        self.provide_forward = provider("forward")
        self.provide_unscale = provider("unscale")
        self.provide_clip = provider("clip")
        self.provide_step = provider("optimizer_step")
        self.resolve_control = provider("resolve_control")
        backward = provider("backward")
        if backward is not None:
            self.backward_fn: Callable = backward
        elif self.backward_overridden:
            self.backward_fn = self._module_backward
        else:
            self.backward_fn = Tensor.backward
        # the plan: which phases can run as the plain torch calls
        self.plain_zero_grad = not self.before_zero_grad and not self.zero_grad_overridden
        self.plain_backward = not (self.before_backward or self.after_backward or self.wrap_backward)
        self.before_step_needed = bool(self.before_optimizer_step or self.clip_on or self.provide_unscale)
        self.direct_step = self.closure_free and self.provide_step is None and not self.step_overridden
        # whether anyone reads the phase context (else the loop skips updating it per micro-batch)
        self.context_used = bool(wrappers or providers or self.context.accumulate != 1)

    def set_accumulation(self, n: int) -> None:
        """Micro-batches per optimizer step from now on (GradientAccumulationScheduler calls it at epoch starts)."""
        self.context.accumulate = int(n)
        self.version = -1  # re-plan: whether the phase context is read depends on it

    def window_open(self) -> bool:
        """Whether the fit stands inside an accumulation window (gradients summed, no step yet)."""
        acc = self.context.accumulate
        p = self.run.progress
        return acc > 1 and p.batch_idx % acc != 0 and not p.is_last_batch

    def clip(self, optimizer: Any, value: float | None, algorithm: str | None) -> None:
        """The clip phase (what `LightningModule.clip_gradients` calls): the clip provider does it."""
        if self.version != self.run.bus.version:
            self.refresh()
        if self.provide_clip is None:
            raise MisconfigurationException(
                "clip_gradients: no handler provides gradient clipping in this run (it is attached for fits that "
                "clip: Trainer(gradient_clip_val=...), an overridden configure_gradient_clipping, or manual "
                "optimization)")
        self.provide_clip(optimizer, value, algorithm)

    def _module_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        self.run.call_module("backward", loss, *args, **kwargs)

    # -- phases -----------------------------------------------------------------------------------------------------
    def begin_micro_batch(self, batch_idx: int, is_last_batch: bool) -> None:
        """Point the phase context at this micro-batch and open the train_step wrappers."""
        ctx = self.context
        ctx.batch_idx = batch_idx
        ctx.grad_norm = None  # measured again if this micro-batch steps (a stale norm would be read as this one's)
        acc = ctx.accumulate
        ctx.will_step = acc == 1 or step_due(batch_idx, acc, is_last_batch)
        wraps = self.wrap_train_step
        if wraps:
            self._open = entered(wraps, ctx)
            self._open.__enter__()

    def end_micro_batch(self) -> None:
        """Close the train_step wrappers opened by `begin_micro_batch` (after backward, or when there is none)."""
        cm = self._open
        if cm is not None:
            self._open = None
            cm.__exit__(None, None, None)

    def abandon(self, exc: BaseException) -> None:
        """The run failed: close any wrapper still open, telling it the exception."""
        cm = self._open
        if cm is not None:
            self._open = None
            try:
                cm.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException:  # the run's own exception is the one the user sees
                pass

    def forward(self, step: Callable, args: tuple) -> Any:
        """The module's step under the forward wrappers, or through the forward provider."""
        wraps = self.wrap_forward
        provide = self.provide_forward
        if wraps:
            with entered(wraps, self.context):
                return step(*args) if provide is None else provide(step, *args)
        return step(*args) if provide is None else provide(step, *args)

    def zero_grad(self, optimizer: Any, batch_idx: int) -> None:
        """BeforeZeroGrad then the module's optimizer_zero_grad (default optimizer.zero_grad())."""
        run = self.run
        hs = self.before_zero_grad
        if hs:
            run.bus.call(hs, ev.BeforeZeroGrad(run, run.progress.timestamp(), optimizer))
        if self.zero_grad_overridden:
            run.call_module("optimizer_zero_grad", run.progress.epoch, batch_idx, self.lightning_optimizers[0])
        else:
            optimizer.zero_grad()

    def zero_grad_due(self, batch_idx: int) -> bool:
        return zero_grad_due(batch_idx, self.context.accumulate)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """BeforeBackward, backward (provider, module override or loss.backward()) under its wrappers,
        AfterBackward."""
        run = self.run
        self.context.loss = loss
        hs = self.before_backward
        if hs:
            run.bus.call(hs, ev.BeforeBackward(run, run.progress.timestamp(), loss))
        wraps = self.wrap_backward
        if wraps:
            with entered(wraps, self.context):
                self.backward_fn(loss, *args, **kwargs)
        else:
            self.backward_fn(loss, *args, **kwargs)
        hs = self.after_backward
        if hs:
            run.bus.call(hs, ev.AfterBackward(run, run.progress.timestamp()))

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """`self.manual_backward(loss)`: the backward phase, with the module's `backward` as the default."""
        if self.version != self.run.bus.version:
            self.refresh()
        fn = self.backward_fn
        if fn is Tensor.backward:  # under manual optimization the module's backward is always called
            self.backward_fn = self._module_backward
        try:
            self.backward(loss, *args, **kwargs)
        finally:
            self.backward_fn = fn

    def before_step(self, optimizer: Any) -> None:
        """Inside the closure, gradients final: unscale [provide] -> BeforeOptimizerStep -> clip [provide, or the
        module's configure_gradient_clipping] (Lightning's order)."""
        run = self.run
        if self.provide_unscale is not None:
            self.provide_unscale(optimizer)
        hs = self.before_optimizer_step
        if hs:
            run.bus.call(hs, ev.BeforeOptimizerStep(run, run.progress.timestamp(), optimizer))
        if self.clip_on:  # the module's hook; its default clip_gradients calls the clip provider (`clip`)
            if not self.clip_hook and self.provide_clip is not None:
                self.provide_clip(optimizer, *self.clip_args)
                return
            lopt = self.lightning_optimizers[0] if self.lightning_optimizers else optimizer
            run.call_module("configure_gradient_clipping", lopt, gradient_clip_val=run.settings.gradient_clip_val,
                            gradient_clip_algorithm=run.config.gradient_clip_algorithm)

    def closure(self) -> Tensor | None:
        """The optimizer closure: the first call returns the loss the batch/backward states computed; later calls
        (LBFGS re-evaluations) re-run training_step, zero_grad and backward. Each call then runs `before_step`,
        as Lightning's wrapped closure does."""
        loop = self.loop
        assert loop is not None
        self.closure_calls += 1
        if self.closure_calls > 1:
            loss = loop.loss_of(loop.training_step())
            if loss is not None:
                self.zero_grad(self.optimizer, loop.batch_idx)
                self.backward(loss)
            loop.loss = loss
        self.before_step(self.optimizer)
        if self.run.control.skip_step_requested:  # asked for while gradients were final: abort before the update
            raise SkipStep
        return None if loop.loss is None else loop.loss.detach()

    def provided_step(self, optimizer: Any, closure: Callable | None, **kwargs: Any) -> Any:
        """The optimizer step under automatic optimization (the optimizer_step provider may replace it)."""
        provide = self.provide_step
        if provide is not None:
            return provide(optimizer, closure, **kwargs)
        return optimizer.step(closure=closure, **kwargs)

    def step(self) -> bool:
        """The optimizer step of automatic optimization; False when it was skipped (control.skip_step)."""
        run, loop = self.run, self.loop
        assert loop is not None
        control = run.control
        if control.skip_step_requested:  # asked for before the step began (e.g. in on_after_backward)
            control.skip_step_requested = False
            return False
        self.closure_calls = 0
        optimizer = self.optimizer
        wraps = self.wrap_optimizer_step
        try:
            with entered(wraps, self.context) if wraps else _NO_WRAP:  # no call at all on the usual step
                if self.step_overridden:
                    lopt = self.lightning_optimizers[0] if self.lightning_optimizers else optimizer
                    run.call_module("optimizer_step", run.progress.epoch, loop.batch_idx, lopt, self.closure)
                elif self.direct_step:
                    # what optimizer.step(closure) would do on its first closure call, then the plain step
                    self.closure_calls = 1
                    if self.before_step_needed:
                        self.before_step(optimizer)
                        if control.skip_step_requested:
                            raise SkipStep
                    optimizer.step()
                else:
                    self.provided_step(optimizer, self.closure)
        except SkipStep:
            control.skip_step_requested = False
            return False
        if self.closure_calls == 0:
            raise MisconfigurationException(
                f"{type(loop.module).__name__}.optimizer_step did not call the optimizer closure; call "
                "`optimizer.step(closure=optimizer_closure)` (or `optimizer_closure()`) inside it")
        run.progress.global_step += 1  # what `stepped` does, without the call on the hot path
        hs = self.optimizer_stepped
        if hs:
            run.bus.call(hs, ev.OptimizerStepped(run, run.progress.timestamp(), optimizer))
        return True

    def stepped(self, optimizer: Any) -> None:
        """An optimizer step happened: global_step += 1, OptimizerStepped."""
        run = self.run
        run.progress.global_step += 1
        hs = self.optimizer_stepped
        if hs:
            run.bus.call(hs, ev.OptimizerStepped(run, run.progress.timestamp(), optimizer))

    def manual_step(self, optimizer: Any, closure: Callable | None, **kwargs: Any) -> Any:
        """`opt.step()` under manual optimization: the closure, `before_step`, the step (provided or plain) under
        the optimizer_step wrappers; counts global_step."""
        if self.version != self.run.bus.version:
            self.refresh()
        ctx = self.context
        ctx.optimizer = optimizer
        ctx.optimizer_idx = next((i for i, o in enumerate(self.optimizers) if o is optimizer), 0)

        def wrapped() -> Any:
            result = closure() if closure is not None else None
            self.before_step(optimizer)
            return result

        with entered(self.wrap_optimizer_step, ctx):
            result = self.provided_step(optimizer, wrapped, **kwargs)
        self.stepped(optimizer)
        return result

    # -- state ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizers' and schedulers' states (Lightning's `optimizer_states` / `lr_schedulers`)."""
        return {"optimizer_states": [o.state_dict() for o in self.optimizers],
                "lr_schedulers": [c.scheduler.state_dict() for c in self.lr_scheduler_configs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state.get("optimizer_states", [])):
            o.load_state_dict(s)
        for c, s in zip(self.lr_scheduler_configs, state.get("lr_schedulers", [])):
            c.scheduler.load_state_dict(s)
