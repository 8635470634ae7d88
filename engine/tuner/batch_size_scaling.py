"""The batch-size search behind `Tuner.scale_batch_size` (Lightning's `tuner.batch_size_scaling`).

Each trial sets the batch-size attribute (on the model, its hparams or the datamodule) and runs `steps_per_trial`
steps of the stage on a fresh trial Trainer, so the dataloader hooks build their loaders with the new size. An
out-of-memory RuntimeError (CUDA, cuDNN or the CPU allocator, as Lightning recognises them) counts as a failed trial;
any other error is raised. 'power' doubles until a trial fails and keeps the last size that ran; 'binsearch' doubles
until a failure, then bisects between the last success and the failure. A batch size at least the dataset's length
ends the search. The final size stays set on the model / datamodule and is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from engine.log import log
from engine.tuner.trial import garbage_collection_cuda, is_oom_error, lightning_getattr, lightning_setattr

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer

__all__ = ["scale_batch_size", "MODES"]

MODES = ("power", "binsearch")
_HOOKS = {"fit": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
          "predict": "predict_dataloader"}


class _Search:
    """The model and datamodule being tuned, the trial runner, and the attribute that holds the batch size."""

    def __init__(self, model: Any, datamodule: Any, method: str, batch_arg_name: str,
                 run_trial: Callable[[], None]) -> None:
        self.model = model
        self.datamodule = datamodule
        self.method = method
        self.name = batch_arg_name
        self.run_trial = run_trial

    def dataset_length(self) -> int | None:
        """Samples in the stage's dataset (None for iterable-style data or without a length)."""
        hook = _HOOKS[self.method]
        source = self.datamodule if self.datamodule is not None else self.model
        try:  # a probe only: a datamodule whose datasets are made in setup() has none before the first trial
            loaders = getattr(source, hook)()
            loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
            return sum(len(dl.dataset) for dl in loaders)
        except Exception:  # noqa: BLE001
            return None

    def adjust(self, factor: float = 1.0, value: int | None = None, desc: str | None = None) -> tuple[int, bool]:
        """Set the next batch size (`value`, else current * `factor`); (new size, whether it changed). A current
        size at least the dataset's length is kept and ends the search."""
        batch_size = lightning_getattr(self.model, self.name, self.datamodule)
        length = self.dataset_length()
        if length is not None and batch_size >= length:
            log.info(f"The batch size {batch_size} is greater or equal than the length of your dataset.")
            return batch_size, False
        new_size = value if value is not None else int(batch_size * factor)
        if desc:
            log.info(f"Batch size {batch_size} {desc}, trying batch size {new_size}")
        lightning_setattr(self.model, self.name, new_size, self.datamodule)
        return new_size, new_size != batch_size


def _run_power_scaling(search: _Search, new_size: int, max_trials: int) -> int:
    any_success = False
    for _ in range(max_trials):
        garbage_collection_cuda()
        try:
            search.run_trial()
        except RuntimeError as exception:
            if not is_oom_error(exception):
                raise
            garbage_collection_cuda(after_failure=True)
            new_size, _ = search.adjust(factor=0.5, desc="failed")
            if any_success:
                break
            continue
        new_size, changed = search.adjust(factor=2.0, desc="succeeded")
        if not changed:
            break
        any_success = True
    return new_size


def _run_binary_scaling(search: _Search, new_size: int, max_trials: int) -> int:
    low, high, count = 1, None, 0
    while True:
        garbage_collection_cuda()
        try:
            search.run_trial()
        except RuntimeError as exception:
            if not is_oom_error(exception):
                raise
            garbage_collection_cuda(after_failure=True)
            high = new_size
            new_size, _ = search.adjust(value=(high + low) // 2, desc="failed")
            if high - low <= 1:
                break
            continue
        count += 1
        if count > max_trials:
            break
        low = new_size
        if high:
            if high - low <= 1:
                break
            new_size, changed = search.adjust(value=(high + low) // 2, desc="succeeded")
        else:
            new_size, changed = search.adjust(factor=2.0, desc="succeeded")
        if not changed:
            break
    return new_size


def scale_batch_size(model: Any, datamodule: Any, method: str, run_trial: Callable[[], None], mode: str = "power",
                     init_val: int = 2, max_trials: int = 25, batch_arg_name: str = "batch_size") -> int:
    """Search the largest batch size whose trials run without running out of memory; returns it (and leaves it
    set on the model / datamodule). `run_trial()` runs one trial with the current size."""
    search = _Search(model, datamodule, method, batch_arg_name, run_trial)
    new_size, _ = search.adjust(value=init_val)
    if mode == "power":
        new_size = _run_power_scaling(search, new_size, max_trials)
    else:
        new_size = _run_binary_scaling(search, new_size, max_trials)
    garbage_collection_cuda()
    log.info(f"Finished batch size finder, will continue with full run using batch size {new_size}")
    return new_size


def trial_runner(trainer: "Trainer", model: Any, datamodule: Any, method: str,
                 steps_per_trial: int) -> Callable[[], None]:
    """A function running one trial of `method` for `steps_per_trial` steps on a fresh trial Trainer."""
    from engine.tuner.trial import trial_trainer

    def run() -> None:
        if method == "fit":
            t = trial_trainer(trainer, max_steps=steps_per_trial, limit_train_batches=1.0,
                              limit_val_batches=steps_per_trial)
            t.fit(model, datamodule=datamodule)
        else:
            t = trial_trainer(trainer, **{f"limit_{'val' if method == 'validate' else method}_batches":
                                          steps_per_trial})
            getattr(t, method)(model, datamodule=datamodule, **({} if method == "predict" else {"verbose": False}))

    return run
