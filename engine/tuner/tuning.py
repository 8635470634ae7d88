"""`Tuner(trainer)`: Lightning's `tuner.tuning.Tuner`, the learning-rate finder and the batch-size finder.

Both searches run trial fits on fresh Trainers made from `trainer`'s flags (see `engine.tuner.trial`), never on
`trainer` itself, and put the model's weights back afterwards, so the user's Trainer and model are as before the
search except for the value found (the lr attribute with `update_attr=True`, the batch-size attribute).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from engine.errors import MisconfigurationException, user_stacklevel
from engine.log import log

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer
    from engine.tuner.lr_finder import LRFinder

__all__ = ["Tuner"]

_METHODS = ("fit", "validate", "test", "predict")


def _check_tuner_configuration(train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any, method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {list(_METHODS)}.")
    if method == "fit":
        if dataloaders is not None:
            raise MisconfigurationException(
                f"In tuner with method={method!r}, `dataloaders` argument should be None, please consider setting "
                "`train_dataloaders` and `val_dataloaders` instead.")
    elif train_dataloaders is not None or val_dataloaders is not None:
        raise MisconfigurationException(
            f"In tuner with `method`={method!r}, `train_dataloaders` and `val_dataloaders` arguments should be None, "
            "please consider setting `dataloaders` instead.")


class Tuner:
    """`Tuner(trainer).lr_find(model)` / `.scale_batch_size(model)` (Lightning 2.x API)."""

    def __init__(self, trainer: "Trainer") -> None:
        self._trainer = trainer

    def lr_find(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                dataloaders: Any = None, datamodule: Any = None, method: str = "fit", min_lr: float = 1e-8,
                max_lr: float = 1, num_training: int = 100, mode: str = "exponential",
                early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                attr_name: str = "") -> "LRFinder | None":
        """Run the LR range test (`num_training` steps from `min_lr` to `max_lr`) and return its `LRFinder`; with
        `update_attr`, set the suggested lr on the model's `lr` / `learning_rate` (or `attr_name`) attribute."""
        from engine.tuner.lr_finder import LRFinder, LRFinderHandler, determine_lr_attr_name
        from engine.tuner.trial import ModelSnapshot, lightning_setattr, trial_trainer

        if method != "fit":
            raise MisconfigurationException("method='fit' is the only valid configuration to run lr finder.")
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training < 1:
            raise MisconfigurationException(f"lr_find(num_training={num_training!r}): expected an int >= 1 (the "
                                            "number of learning rates to try)")
        if not 0 < min_lr < max_lr:
            raise MisconfigurationException(f"lr_find(min_lr={min_lr!r}, max_lr={max_lr!r}): expected "
                                            "0 < min_lr < max_lr")
        trainer = self._trainer
        if trainer.fast_dev_run:
            warnings.warn("Skipping learning rate finder since `fast_dev_run` is enabled.", UserWarning,
                          stacklevel=user_stacklevel())
            return None
        if update_attr:
            attr_name = determine_lr_attr_name(model, attr_name)
        finder = LRFinder(mode, min_lr, max_lr, num_training)
        handler = LRFinderHandler(finder, early_stop_threshold, progress_bar=trainer.progress_bar_callback is not None)
        snapshot = ModelSnapshot(model, datamodule)
        try:
            trial = trial_trainer(trainer, callbacks=[handler], max_steps=num_training,
                                  limit_val_batches=num_training)
            trial.fit(model, train_dataloaders, val_dataloaders, datamodule=datamodule)
            if trial.global_step != num_training:
                log.info(f"LR finder stopped early after {trial.global_step} steps due to diverging loss.")
            finder.results = {"lr": handler.lrs, "loss": handler.losses}
        finally:
            handler.close()
            snapshot.restore()
        if update_attr:
            lr = finder.suggestion()
            if lr is not None:
                lightning_setattr(model, attr_name, lr)
                for optimizer in trainer.optimizers or []:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                log.info(f"Learning rate set to {lr}")
        return finder

    def scale_batch_size(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                         dataloaders: Any = None, datamodule: Any = None, method: str = "fit",
                         mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                         batch_arg_name: str = "batch_size") -> int | None:
        """Find the largest batch size that runs `steps_per_trial` steps of `method` without running out of
        memory ('power': doubling; 'binsearch': doubling, then bisection); it is left set on the model (or its
        hparams, or the datamodule) under `batch_arg_name`, and returned."""
        from engine.tuner.batch_size_scaling import MODES, scale_batch_size, trial_runner
        from engine.tuner.trial import ModelSnapshot, attr_holders

        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        mode = mode.lower() if isinstance(mode, str) else mode
        if mode not in MODES:
            raise ValueError(f"`mode` should be either 'power' or 'binsearch' (got {mode!r})")
        trainer = self._trainer
        if trainer.world_size > 1:
            raise MisconfigurationException("Tuning the batch size is currently not supported with distributed "
                                            "strategies.")
        if train_dataloaders is not None or val_dataloaders is not None or dataloaders is not None:
            raise MisconfigurationException(
                f"The Batch size finder cannot be used with dataloaders passed directly to `.{method}()`. Please "
                "disable the feature or incorporate the dataloader into your LightningModule or LightningDataModule.")
        holders = attr_holders(model, batch_arg_name, datamodule)
        if not holders:
            raise MisconfigurationException(f"Field {batch_arg_name} not found in `model`, `datamodule`, nor their "
                                            "`hparams` attributes.")
        hparams = getattr(model, "hparams", None)
        if hasattr(model, batch_arg_name) and hparams is not None and batch_arg_name in hparams:
            warnings.warn(
                f"Field `model.{batch_arg_name}` and `model.hparams.{batch_arg_name}` are mutually exclusive! "
                f"`model.{batch_arg_name}` will be used as the initial batch size for scaling. If this is not the "
                "intended behavior, please remove either one.", UserWarning, stacklevel=user_stacklevel())
        if trainer.fast_dev_run:
            warnings.warn("Skipping batch size scaler since `fast_dev_run` is enabled.", UserWarning,
                          stacklevel=user_stacklevel())
            return None
        snapshot = ModelSnapshot(model, datamodule)
        try:
            return scale_batch_size(model, datamodule, method,
                                    trial_runner(trainer, model, datamodule, method, steps_per_trial), mode=mode,
                                    init_val=init_val, max_trials=max_trials, batch_arg_name=batch_arg_name)
        finally:
            snapshot.restore()
