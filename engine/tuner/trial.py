"""What the tuner's searches share: a trial Trainer built from the user's, a snapshot of the model to put back, and
Lightning's lookup of a hyperparameter on the model, its `hparams` or the datamodule.

A search never runs on the user's Trainer. Each trial is a fresh Trainer made from `trainer.config` (the flags the
user gave) with the search's overrides: no user callbacks, a DummyLogger in place of the loggers, no checkpointing,
no progress bar, no sanity check, no trace. So the user's Trainer keeps its counters, callbacks and loggers, and the
model's weights are put back from the snapshot when the search ends, as Lightning does with its temporary checkpoint.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer

__all__ = ["ModelSnapshot", "trial_trainer", "attr_holders", "lightning_hasattr", "lightning_getattr",
           "lightning_setattr", "is_oom_error", "garbage_collection_cuda"]

# flags a trial sets whatever the user chose (the search's own overrides come on top)
_TRIAL_FLAGS: dict[str, Any] = {"callbacks": [], "enable_checkpointing": False, "enable_progress_bar": False,
                                "enable_model_summary": False, "num_sanity_val_steps": 0, "profiler": None,
                                "trace": None, "verify_trace": None}


def trial_trainer(trainer: "Trainer", **overrides: Any) -> "Trainer":
    """A new Trainer with `trainer`'s flags, the trial flags above and `overrides`."""
    from engine.loggers import DummyLogger
    from engine.trainer import Trainer

    config = trainer.config
    flags = {name: getattr(config, name) for name in type(config).model_fields}
    flags.update(_TRIAL_FLAGS)
    flags["logger"] = DummyLogger() if trainer.loggers else False
    flags.update(overrides)
    return Trainer(**flags)


class ModelSnapshot:
    """The model's weights, train/eval mode and Trainer reference (and the datamodule's Trainer reference), taken
    before a search and put back after it: Lightning's temporary checkpoint, held in CPU memory."""

    def __init__(self, model: torch.nn.Module, datamodule: Any = None) -> None:
        self.model = model
        self.datamodule = datamodule
        # kept on the CPU: a second copy of the weights on the device could itself run out of memory
        self.state = {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                      for k, v in model.state_dict().items()}
        self.training = model.training
        self.model_trainer = _trainer_of(model)
        self.datamodule_trainer = _trainer_of(datamodule) if datamodule is not None else None

    def restore(self) -> None:
        self.model.load_state_dict(self.state)
        self.model.train(self.training)
        self.model.trainer = self.model_trainer
        if self.datamodule is not None:
            self.datamodule.trainer = self.datamodule_trainer


def _trainer_of(obj: Any) -> Any:
    try:
        return obj.trainer
    except RuntimeError:  # a LightningModule not attached to a Trainer says so when asked
        return None


# -- Lightning's `utilities.parsing.lightning_{has,get,set}attr` ------------------------------------------------------
def attr_holders(model: Any, name: str, datamodule: Any = None) -> list[Any]:
    """Every place `name` is found, in Lightning's order: the model, `model.hparams`, the datamodule (or its
    hparams)."""
    holders: list[Any] = []
    if hasattr(model, name):
        holders.append(model)
    hparams = getattr(model, "hparams", None)
    if isinstance(hparams, MutableMapping) and name in hparams:
        holders.append(hparams)
    if datamodule is not None:
        dm_hparams = getattr(datamodule, "hparams", None)
        if hasattr(datamodule, name):
            holders.append(datamodule)
        elif isinstance(dm_hparams, MutableMapping) and name in dm_hparams:
            holders.append(dm_hparams)
    return holders


def lightning_hasattr(model: Any, name: str, datamodule: Any = None) -> bool:
    return bool(attr_holders(model, name, datamodule))


def lightning_getattr(model: Any, name: str, datamodule: Any = None) -> Any:
    """The value from the last holder (Lightning reads the datamodule's value first when it has one)."""
    holders = attr_holders(model, name, datamodule)
    if not holders:
        raise AttributeError(f"{name} is neither stored in the model namespace nor the `hparams` namespace/dict, "
                             "nor the datamodule.")
    holder = holders[-1]
    return holder[name] if isinstance(holder, MutableMapping) else getattr(holder, name)


def lightning_setattr(model: Any, name: str, value: Any, datamodule: Any = None) -> None:
    """Set `name` in every holder, so the model, its hparams and the datamodule agree."""
    holders = attr_holders(model, name, datamodule)
    if not holders:
        raise AttributeError(f"{name} is neither stored in the model namespace nor the `hparams` namespace/dict, "
                             "nor the datamodule.")
    for holder in holders:
        if isinstance(holder, MutableMapping):
            holder[name] = value
        else:
            setattr(holder, name, value)


# -- out of memory ------------------------------------------------------------------------------------------------
_OOM_MARKERS = (("CUDA", "out of memory"), ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.",),
                ("DefaultCPUAllocator: can't allocate memory",))


def is_oom_error(exception: BaseException) -> bool:
    """Whether `exception` (or the error it wraps) is an out-of-memory RuntimeError, as Lightning recognises one."""
    seen = 0
    while exception is not None and seen < 5:
        if isinstance(exception, torch.cuda.OutOfMemoryError):
            return True
        if isinstance(exception, RuntimeError) and len(exception.args) == 1 and isinstance(exception.args[0], str):
            text = exception.args[0]
            if any(all(m in text for m in markers) for markers in _OOM_MARKERS):
                return True
        exception = exception.__cause__  # type: ignore[assignment]
        seen += 1
    return False


def garbage_collection_cuda(after_failure: bool = False) -> None:
    """Free what a trial left: Python garbage, then the CUDA cache when there is one. Without CUDA only after a
    failed trial: a full collection costs about half a second in a large process and frees no device memory."""
    if not (after_failure or torch.cuda.is_available()):
        return
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exception:
            if not is_oom_error(exception):
                raise
