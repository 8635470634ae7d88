"""The learning-rate range test behind `Tuner.lr_find` (Lightning's `tuner.lr_finder`).

One trial fit of `num_training` optimizer steps. Before the first epoch the handler sets every param group's lr to
`min_lr` and puts its own scheduler in place of the model's (Lightning drops the user's schedulers for the search
too); that scheduler raises the lr after every step towards `max_lr`, exponentially or linearly, with Lightning's
exact schedule (step k uses min_lr for k = 0, then `min_lr * (max_lr / min_lr) ** ((k + 1) / num_training)`, or the
linear equivalent). After each step the loss is smoothed (running average with beta = 0.98, bias-corrected by the
global step); the search stops early once the smoothed loss exceeds `early_stop_threshold` times the best one.
`suggestion()` is the lr at the steepest descent of the smoothed loss (`torch.gradient` over the lrs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from engine.errors import MisconfigurationException
from engine.log import log
from engine.optim import LRSchedulerConfig

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from engine.events import BatchEnded, BatchStarted, EpochStarted

__all__ = ["LRFinder", "LRFinderHandler", "determine_lr_attr_name"]

MODES = ("linear", "exponential")


class _RangeLR(LRScheduler):
    """Raises the lr from each group's `initial_lr` to `end_lr` over `num_iter` steps (Lightning's schedule)."""

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int, exponential: bool) -> None:
        self.end_lr = end_lr
        self.num_iter = num_iter
        self.exponential = exponential
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        if self.last_epoch <= 0:
            return list(self.base_lrs)
        r = (self.last_epoch + 1) / self.num_iter
        if self.exponential:
            return [base * (self.end_lr / base) ** r for base in self.base_lrs]
        return [base + r * (self.end_lr - base) for base in self.base_lrs]


class LRFinder:
    """The result of `Tuner.lr_find`: `results` = {'lr': [...], 'loss': [...]} (smoothed losses, one per step),
    `suggestion()` and `plot()`."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        if mode not in MODES:
            raise MisconfigurationException(f"lr_find(mode={mode!r}): mode should be either 'linear' or "
                                            "'exponential'")
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, list[float]] = {}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The lr where the smoothed loss falls fastest, ignoring the first `skip_begin` and last `skip_end`
        points and non-finite losses; None (with an error message) when fewer than 2 points remain."""
        losses_all = self.results.get("loss", [])
        stop = len(losses_all) - skip_end
        losses = torch.tensor(losses_all[skip_begin:stop], dtype=torch.float64)
        lrs = torch.tensor(self.results.get("lr", [])[skip_begin:stop], dtype=torch.float64)
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:
            log.error("Failed to compute suggestion for learning rate because there are not enough points. Increase "
                      "the loop iteration limits or the size of your dataset/dataloader.")
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses, spacing=[lrs])[0]
        steepest = int(torch.argmin(gradients).item())
        kept = torch.arange(len(losses_all))[skip_begin:stop][finite]
        self._optimal_idx = int(kept[steepest].item())
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: "Axes | None" = None) -> "Figure | None":
        """Loss against lr (log x-axis in exponential mode); `suggest` marks the suggestion with a red point.
        Needs matplotlib."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise MisconfigurationException("To use the `plot` method, you must have Matplotlib installed. Install "
                                            "it by running `pip install -U matplotlib`.") from err
        lrs, losses = self.results["lr"], self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            self.suggestion()
            if self._optimal_idx:
                ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


class LRFinderHandler:
    """The trial fit's handler: installs the range scheduler, records the lr before and the smoothed loss after
    each optimizer step, and stops the fit when the loss diverges."""

    adds_lr_schedulers = True  # the fit attaches the scheduler stepper even when the model has no scheduler

    def __init__(self, finder: LRFinder, early_stop_threshold: float | None, beta: float = 0.98,
                 progress_bar: bool = False) -> None:
        self.finder = finder
        self.progress_bar = progress_bar  # a "Finding best initial lr" tqdm bar, as Lightning draws
        self.bar: Any = None
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.avg_loss = 0.0
        self.best_loss = 0.0
        self.scheduler: _RangeLR | None = None

    def on_epoch_started(self, event: "EpochStarted") -> None:
        if self.scheduler is not None:
            return
        trainer = event.trainer
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise MisconfigurationException(
                f"`model.configure_optimizers()` returned {len(optimizers)}, but learning rate finder only works with "
                "single optimizer")
        optimizer = optimizers[0]
        finder = self.finder
        for group in optimizer.param_groups:
            group["lr"] = finder.lr_min
            group["initial_lr"] = finder.lr_min
        self.scheduler = _RangeLR(optimizer, finder.lr_max, finder.num_training, finder.mode == "exponential")
        configs = trainer.lr_scheduler_configs
        configs[:] = [LRSchedulerConfig(self.scheduler, interval="step", opt_idx=0)]

    def _steps_now(self, trainer: Any, batch_idx: int) -> bool:
        return (batch_idx + 1) % trainer.accumulate_grad_batches == 0

    def on_batch_started(self, event: "BatchStarted") -> None:
        if self.scheduler is not None and self._steps_now(event.trainer, event.batch_idx):
            if self.progress_bar and self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(desc="Finding best initial lr", total=self.finder.num_training)
            self.lrs.append(self.scheduler.get_last_lr()[0])

    def on_batch_ended(self, event: "BatchEnded") -> None:
        trainer = event.trainer
        if self.scheduler is None or not self._steps_now(trainer, event.batch_idx):
            return
        outputs = event.outputs
        loss = outputs if isinstance(outputs, torch.Tensor) else (outputs or {}).get("loss")
        if loss is None:  # training_step returned None: a point the suggestion skips
            self.losses.append(float("nan"))
            return
        if self.bar is not None:
            self.bar.update()
        current = float(loss.item())  # host sync, once per step: the search needs the value now
        step = trainer.global_step
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * current
        smoothed = self.avg_loss / (1 - self.beta ** (step + 1))
        threshold = self.early_stop_threshold
        if threshold is not None and step > 1 and smoothed > threshold * self.best_loss:
            event.control.request_stop(reason="lr_find: the loss diverged", by="lr_find")
            self.close()
        if smoothed < self.best_loss or step == 1:
            self.best_loss = smoothed
        self.losses.append(smoothed)

    def close(self) -> None:
        """Close the progress bar (end of the search, early stop or error)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def determine_lr_attr_name(model: Any, attr_name: str = "") -> str:
    """The model attribute (or hparams key) holding the lr: `attr_name` if given, else 'lr' or 'learning_rate'."""
    from engine.tuner.trial import lightning_hasattr

    if attr_name:
        if not lightning_hasattr(model, attr_name):
            raise AttributeError(f"The attribute name for the learning rate was set to {attr_name}, but could not "
                                 "find this as a field in `model` or `model.hparams`.")
        return attr_name
    for name in ("lr", "learning_rate"):
        if lightning_hasattr(model, name):
            return name
    raise AttributeError("When using the learning rate finder, either `model` or `model.hparams` should have one of "
                         "these fields: ('lr', 'learning_rate'). If your model has a different name for the learning "
                         "rate, set it with `.lr_find(attr_name=...)`.")
