"""Precision as one handler (Lightning's `precision=` flag), attached for every stage when it is not '32-true':

    '64-true', 'bf16-true', '16-true'  the module's floating weights cast to that dtype before configure_optimizers,
                                       floating inputs converted at batch transfer (`provide_convert_input`)
    'bf16-mixed'                       training and evaluation forwards under torch.autocast(bfloat16)
    '16-mixed'                         autocast(float16) and a torch.amp.GradScaler: the loss scaled in
                                       `provide_backward`, gradients unscaled in `provide_unscale` (before
                                       BeforeOptimizerStep and clipping), `scaler.step` (skips the update when the
                                       gradients hold inf/NaN; global_step still counts, as in Lightning) and
                                       `scaler.update` in `provide_optimizer_step`; the scaler's state is saved in
                                       checkpoints. On a CPU, '16-mixed' becomes 'bf16-mixed' with Lightning's warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from engine.bus import PRECISION
from engine.errors import user_stacklevel

__all__ = ["TruePrecision", "MixedPrecision", "ScaledMixedPrecision", "precision_for", "resolve_precision",
           "DTYPES"]

DTYPES = {"64-true": torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16,
          "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """Lightning's resolution: fp16 AMP does not exist on the CPU, bf16 AMP does."""
    if precision == "16-mixed" and device.type == "cpu":
        warnings.warn("You passed `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not "
                      "supported on CPU. Using `precision='bf16-mixed'` instead.", UserWarning, stacklevel=user_stacklevel())
        return "bf16-mixed"
    return precision


def _convert(data: Any, dtype: torch.dtype) -> Any:
    if isinstance(data, Tensor):
        return data.to(dtype) if data.is_floating_point() else data
    if isinstance(data, (list, tuple)):
        converted = [_convert(d, dtype) for d in data]
        return type(data)(converted) if not hasattr(data, "_fields") else type(data)(*converted)
    if isinstance(data, dict):
        return {k: _convert(v, dtype) for k, v in data.items()}
    return data


class TruePrecision:
    """'64-true', 'bf16-true', '16-true': weights and floating inputs in that dtype."""

    priority = PRECISION

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.dtype = DTYPES[precision]

    def setup_module(self, module: torch.nn.Module) -> None:
        """Cast the floating weights in place (the Parameter objects stay, so do the optimizers built later)."""
        module.to(self.dtype)

    def provide_convert_input(self, batch: Any) -> Any:
        return _convert(batch, self.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class MixedPrecision:
    """'bf16-mixed': training and evaluation forwards under torch.autocast."""

    priority = PRECISION

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        self.dtype = DTYPES[precision]

    def setup_module(self, module: torch.nn.Module) -> None:
        return None

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype)

    def wrap_forward(self, context: Any) -> Any:
        return self._autocast()

    def wrap_eval_forward(self, context: Any) -> Any:
        return self._autocast()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class ScaledMixedPrecision(MixedPrecision):
    """'16-mixed': autocast(float16) plus a GradScaler (scale, unscale before clipping, step/update)."""

    def __init__(self, precision: str, device: torch.device, scaler: Any = None) -> None:
        super().__init__(precision, device)
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type)

    def provide_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        self.scaler.scale(loss).backward(*args, **kwargs)

    def provide_unscale(self, optimizer: Any) -> None:
        self.scaler.unscale_(optimizer)

    def provide_optimizer_step(self, optimizer: Any, closure: Callable[[], Any] | None, **kwargs: Any) -> Any:
        result = closure() if closure is not None else None  # backward, unscale, BeforeOptimizerStep, clip
        out = self.scaler.step(optimizer, **kwargs)  # no update when the unscaled gradients hold inf/NaN
        self.scaler.update()
        return result if out is None else out

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def precision_for(run: Any) -> Any:
    """The precision handler of a run (a `RunContext.stage_handlers` factory); None for '32-true'."""
    precision = run.settings.precision
    if precision == "32-true":
        return None
    device = run.strategy.root_device
    handler: Any
    if precision.endswith("-true"):
        handler = TruePrecision(precision)
    elif precision == "16-mixed":
        handler = ScaledMixedPrecision(precision, device)
    else:
        handler = MixedPrecision(precision, device)
    handler.setup_module(run.module)
    return handler
