"""A policy for a loss that is NaN or infinite (a statetrain extension; Lightning has none): so a NaN never silently
corrupts the weights. On by default as `Trainer(on_nonfinite_loss='error')`; `on_nonfinite_loss='skip'|'warn'`
changes the policy, `None` removes the check, and `callbacks=[NonFiniteLoss(...)]` replaces the default one.

    'error' (default)  raise before backward, naming the epoch, batch and global step; the weights stay finite
    'skip'             skip that batch's optimizer step (control.skip_step) and drop its gradients
    'warn'             warn and go on (the weights may become NaN)

It checks the loss in BeforeBackward: one host sync per step (on CPU about 1 µs for a scalar loss; on CUDA it waits for the step's
forward to finish, so a GPU run that wants every bit of overlap sets `on_nonfinite_loss=None`). Barebones mode and
manual optimization (no BeforeBackward from the loop unless `manual_backward` is used) leave it out or idle.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from engine.bus import PRECISION
from engine.errors import MisconfigurationException, user_stacklevel

__all__ = ["NonFiniteLoss", "NonFiniteLossError"]

_POLICIES = ("error", "skip", "warn")


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite and the policy is 'error'."""


class NonFiniteLoss:
    """See the module docstring."""

    priority = PRECISION - 50  # before any other handler sees the loss

    def __init__(self, policy: str = "error") -> None:
        if policy not in _POLICIES:
            raise MisconfigurationException(f"NonFiniteLoss(policy={policy!r}): expected one of {_POLICIES}")
        self.policy = policy
        self.skipped = 0
        self._drop = False

    @property
    def may_skip_steps(self) -> bool:
        """Under DDP the sync handler agrees skipped steps across ranks when a handler may skip one."""
        return self.policy == "skip"

    def on_before_backward(self, event: Any) -> None:
        loss = event.loss
        value = loss.detach()
        # host sync: the price of the check; a scalar's .item() costs well under a µs on a CPU, isfinite() ~7 µs
        if math.isfinite(value.item()) if value.ndim == 0 else bool(torch.isfinite(value).all()):
            return
        ts = event.timestamp
        where = f"epoch {ts.epoch}, batch {ts.batch_in_epoch} (global step {ts.global_step})"
        if self.policy == "error":
            raise NonFiniteLossError(
                f"the loss is {loss.detach().item()} at {where}: stopped before backward, the weights are still "
                "finite. Lower the learning rate, clip gradients (Trainer(gradient_clip_val=...)), check the data "
                "of that batch, or use NonFiniteLoss('skip') to skip such steps")
        if self.policy == "skip":
            self.skipped += 1
            self._drop = True
            event.control.skip_step(f"non-finite loss at {where}", by="NonFiniteLoss")
            return
        warnings.warn(f"the loss is {loss.detach().item()} at {where}; training goes on (NonFiniteLoss('warn'))",
                      RuntimeWarning, stacklevel=user_stacklevel())

    def on_after_backward(self, event: Any) -> None:
        if self._drop:  # the NaN gradients of a skipped step must not reach a later step
            self._drop = False
            for optimizer in event.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)
