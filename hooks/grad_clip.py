"""Gradient clipping as a handler: it provides the step pipeline's `clip` phase (Trainer(gradient_clip_val=...,
gradient_clip_algorithm='norm'|'value'), and the module's `clip_gradients` / `configure_gradient_clipping`).

The pipeline calls the module's `configure_gradient_clipping` after BeforeOptimizerStep (and after a precision
handler unscaled the gradients); its default calls `clip_gradients`, which checks the values as Lightning does and
calls this provider. By norm, the total gradient norm before clipping (a tensor: no host sync) is left on the phase
context as `context.grad_norm` for other handlers and the trace.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GradientClipping", "clipping_for"]


class GradientClipping:
    """Clip the gradients of an optimizer's parameters by total norm or by value."""

    def provide_clip(self, optimizer: Any, value: float | None, algorithm: str | None, context: Any = None) -> None:
        if not value:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        if (algorithm or "norm") == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, value)
            if context is not None:
                if type(norm) is not torch.Tensor and hasattr(norm, "to_local"):  # FSDP's DTensor: replicated
                    norm = norm.to_local()  # already the total norm on every rank; no collective
                context.grad_norm = norm


def clipping_for(run: Any) -> GradientClipping | None:
    """The clipping handler for a fit (a `RunContext.fit_handlers` factory): when the Trainer clips, when the module
    overrides its clipping hooks, or under manual optimization (where `self.clip_gradients` may be called)."""
    pipeline = run.pipeline
    if "clip" in run.bus.providers:  # another handler clips (e.g. a precision handler of its own)
        return None
    if run.settings.gradient_clip_val or pipeline.clip_hook or not pipeline.automatic:
        return GradientClipping()
    return None
