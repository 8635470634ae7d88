"""The DDP sync handler: what distributed training changes in the loop, so the machine is the same on 1 or N ranks.

- `wrap_train_step`: DDP's `no_sync()` around the forward and backward of a micro-batch that does not end with an
  optimizer step (the gradients stay local and are all-reduced once, on the window's last micro-batch).
- `provide_resolve_control`: the pending control requests (stop, skip epoch, validate now, save now) are agreed
  across ranks (any rank asking means every rank does it) in one all-reduce of a few flags, at the end of every
  training batch, at the end of every epoch, and at the start of the batch after a validation (where monitors such
  as EarlyStopping decide) — never more than one collective per training step, and every rank calls it at the same
  points, so no rank waits alone.
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

    def wrap_train_step(self, context: Any) -> Any:
        """no_sync on the non-final micro-batches of an accumulation window (DDP decides in the forward whether
        the backward syncs, so the wrap spans forward and backward)."""
        model = self.run.model
        if context.will_step or not hasattr(model, "no_sync"):
            return _NO_WRAP
        return model.no_sync()

    def on_validation_ended(self, event: Any) -> None:
        self.validated = True

    def provide_resolve_control(self, point: str, control: Any) -> None:
        """Agree the pending requests across ranks at `point` (a decision point of the fit machine)."""
        if point == "batch_start" and not self.validated:
            return  # already agreed at the previous batch's end; nothing decides in between but a validation
        self.validated = False
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        flags = torch.tensor([float(getattr(control, f)) for f in _FLAGS], device=self.run.strategy.root_device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.collectives += 1
        agreed = flags.tolist()  # one host sync per agreement, like the collective itself
        for name, value in zip(_FLAGS, agreed):
            if value and not getattr(control, name):
                action = {"stop_requested": control.request_stop, "skip_epoch_requested": control.skip_epoch,
                          "validate_requested": control.validate_now, "save_requested": control.save_now}[name]
                action(reason=f"another rank asked at {point}", by="DDPSync")
