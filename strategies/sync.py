"""The DDP sync handler: what distributed training changes in the loop, so the machine is the same on 1 or N ranks.

- `wrap_train_step`: DDP's `no_sync()` around the forward and backward of a micro-batch that does not end with an
  optimizer step (the gradients stay local and are all-reduced once, on the window's last micro-batch).
- `provide_resolve_control`: the pending control requests (stop, skip epoch, validate now, save now) and a SIGTERM /
  first SIGINT that reached any rank are agreed across ranks (any rank asking means every rank does it) in one
  all-reduce of a few values, at the end of every training batch, at the end of every epoch, and at the start of
  the batch after a validation (where monitors such as EarlyStopping decide) — one collective per training step,
  and every rank calls it at the same points, so no rank waits alone. A skipped optimizer step (control.skip_step,
  e.g. NonFiniteLoss('skip') on the rank whose loss is NaN) is agreed after every micro-batch's backward, before
  any rank updates its weights, and the other ranks drop that micro-batch's gradients as well; that second
  collective runs only when a handler declares `may_skip_steps` (NonFiniteLoss with policy 'skip' does).
`sync_dist=True` metrics are reduced by the result collections through `strategy.reduce` (weighted means: the
weighted sums and the batch-size totals are each summed across ranks); `self.all_gather` and
`trainer.strategy.barrier/broadcast/reduce` are the strategy's collectives.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from engine.bus import STRATEGY

__all__ = ["DDPSync"]

_FLAGS = ("stop_requested", "skip_epoch_requested", "validate_requested", "save_requested")
_NO_WRAP = nullcontext()


class DDPSync:
    """Attached to a distributed fit by the DDP strategy (`stage_handler`); detached when the run ends."""

    priority = STRATEGY

    def __init__(self, run: Any) -> None:
        self.run = run
        self.validated = False  # a validation ran since the last agreement (its monitors may have asked to stop)
        self.collectives = 0  # how many agreements ran (tests count them)
        self.may_skip: bool | None = None  # a handler declares `may_skip_steps` (decided at the first backward)

    def wrap_train_step(self, context: Any) -> Any:
        """no_sync on the non-final micro-batches of an accumulation window (DDP decides in the forward whether
        the backward syncs, so the wrap spans forward and backward); a strategy may offer its own `no_sync(model)`
        (FSDP: `set_requires_gradient_sync`)."""
        if context.will_step:
            return _NO_WRAP
        model = self.run.model
        own = getattr(self.run.strategy, "no_sync", None)
        if callable(own):
            return own(model)
        return model.no_sync() if hasattr(model, "no_sync") else _NO_WRAP

    def on_validation_ended(self, event: Any) -> None:
        self.validated = True

    def provide_resolve_control(self, point: str, control: Any) -> None:
        """Agree the pending requests across ranks at `point` (a decision point of the fit machine)."""
        if point == "after_backward":
            self._agree_skip(control)
            return
        if point == "batch_start" and not self.validated:
            return  # already agreed at the previous batch's end; nothing decides in between but a validation
        self.validated = False
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        run = self.run
        values = [float(getattr(control, f)) for f in _FLAGS]
        values.append(float(run.signal_received or 0))  # a signal number (SIGTERM 15 wins over SIGINT 2)
        flags = torch.tensor(values, device=run.strategy.root_device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.collectives += 1
        agreed = flags.tolist()  # one host sync per agreement, like the collective itself
        for name, value in zip(_FLAGS, agreed):
            if value and not getattr(control, name):
                action = {"stop_requested": control.request_stop, "skip_epoch_requested": control.skip_epoch,
                          "validate_requested": control.validate_now, "save_requested": control.save_now}[name]
                action(reason=f"another rank asked at {point}", by="DDPSync")
        if agreed[-1] and run.stop_signal is None:  # every rank stops at this boundary, with one checkpoint
            run.stop_signal = int(agreed[-1])
            run.signal_received = None

    def _agree_skip(self, control: Any) -> None:
        """After a micro-batch's backward: skip the step on every rank if any rank skips it, dropping this
        micro-batch's gradients everywhere (they hold the skipping rank's NaNs once DDP averaged them)."""
        if self.may_skip is None:
            self.may_skip = any(getattr(h, "may_skip_steps", False) for h in self.run.callbacks)
        if not self.may_skip:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        flag = torch.tensor([float(control.skip_step_requested)], device=self.run.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.collectives += 1
        if flag.item() and not control.skip_step_requested:
            control.skip_step("another rank skips this step", by="DDPSync")
            for optimizer in self.run.pipeline.optimizers:
                optimizer.zero_grad(set_to_none=True)
