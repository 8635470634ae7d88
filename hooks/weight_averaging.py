"""Weight averaging (Lightning 2.6's `WeightAveraging` and `EMAWeightAveraging` callbacks): a
`torch.optim.swa_utils.AveragedModel` of the module, updated after optimizer steps (and/or epochs) when
`should_update(step_idx=, epoch_idx=)` says so, swapped in for validation, copied into the module when training
ends, and saved in checkpoints Lightning's way (`state_dict` holds the averaged weights, `current_model_state` the
trained ones, `averaging_state` the averager's own tensors).
"""

from __future__ import annotations

import itertools
import warnings
from copy import deepcopy
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from engine.errors import MisconfigurationException, user_stacklevel
from hooks.callback import Callback

__all__ = ["WeightAveraging", "EMAWeightAveraging"]


def refuse_sharded(trainer: Any, name: str) -> None:
    """Averaging needs each parameter whole on every rank; a sharding strategy (FSDP) holds only shards."""
    if getattr(trainer.strategy, "shards_parameters", False):
        raise MisconfigurationException(
            f"{name} with strategy={type(trainer.strategy).__name__}: averaging sharded parameters is not available "
            "in statetrain; use strategy='ddp', or remove the callback")


class WeightAveraging(Callback):
    """Average the weights over training; `kwargs` go to AveragedModel (e.g. `avg_fn`, `multi_avg_fn`)."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After each optimizer step (`step_idx`: index of the last step) and each epoch (`epoch_idx`); by default
        after every step. Override it to choose."""
        return step_idx is not None

    @property
    def average_model(self) -> AveragedModel | None:
        return self._average_model

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            refuse_sharded(trainer, type(self).__name__)
            device = self._device or pl_module.device
            self._average_model = AveragedModel(model=pl_module, device=device, use_buffers=self._use_buffers,
                                                **self._kwargs)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step > self._latest_update_step and self.should_update(step_idx=step - 1):
            self._average_model.update_parameters(pl_module)  # type: ignore[union-attr]
            self._latest_update_step = step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            self._average_model.update_parameters(pl_module)  # type: ignore[union-attr]
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for avg, cur in self._pairs(pl_module):
            cur.data.copy_(avg.data)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        state = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
        checkpoint["averaging_state"] = {k: v for k, v in state.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            warnings.warn("WeightAveraging: a checkpoint is loaded outside fit; the averaging state is not restored",
                          UserWarning, stacklevel=user_stacklevel())
        elif "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            state = {"module." + k: v for k, v in checkpoint["state_dict"].items()}
            state.update(checkpoint["averaging_state"])
            self._average_model.load_state_dict(state)
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            warnings.warn("The checkpoint was not created with WeightAveraging. Both the current and the average "
                          "model will be initialized with state_dict.", UserWarning, stacklevel=user_stacklevel())
            self._average_model.module.load_state_dict(deepcopy(checkpoint["state_dict"]), strict=False)

    def _pairs(self, pl_module: Any) -> Any:
        assert self._average_model is not None
        avg = self._average_model.module
        return zip(itertools.chain(avg.parameters(), avg.buffers()),
                   itertools.chain(pl_module.parameters(), pl_module.buffers()))

    def _swap(self, pl_module: Any) -> None:
        for avg, cur in self._pairs(pl_module):
            kept = avg.data.clone()
            avg.data.copy_(cur.data)
            cur.data.copy_(kept)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average: `decay`, every `update_every_n_steps` steps from `update_starting_at_step`,
    and/or at the end of every epoch from `update_starting_at_epoch`."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=get_ema_avg_fn(decay=decay), **kwargs)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        if epoch_idx is not None:
            return self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
        return False
