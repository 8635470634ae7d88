"""RichProgressBar: Lightning's progress bar drawn with `rich` (an optional package; without it the constructor
raises ModuleNotFoundError saying how to install it).

One task per training epoch (`Epoch N`), one per validation / test / predict dataloader run and one for the sanity
check, each with a batch counter, elapsed/remaining time and speed; the training task's line ends with
`trainer.progress_bar_metrics` (and the logger's `v_num`). Redrawn every `refresh_rate` batches, and at each epoch
end; metrics are read only then. Pass `console_kwargs` to choose where it draws (`{"file": ..., "width": ...}`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from hooks.progress import ProgressBar

__all__ = ["RichProgressBar", "RichProgressBarTheme"]


def _require_rich() -> None:
    if importlib.util.find_spec("rich") is None:
        raise ModuleNotFoundError("`RichProgressBar` requires `rich` >= 10.2.2. Install it by running "
                                  "`pip install -U rich`, or use the default TQDMProgressBar.")


@dataclass
class RichProgressBarTheme:
    """Styles of the bar's parts (rich style strings), as in Lightning."""

    description: str = ""
    progress_bar: str = "#6206E0"
    progress_bar_finished: str = "#6206E0"
    progress_bar_pulse: str = "#6206E0"
    batch_progress: str = ""
    time: str = "dim"
    processing_speed: str = "dim underline"
    metrics: str = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


class RichProgressBar(ProgressBar):
    """`Trainer(callbacks=[RichProgressBar()])`. refresh_rate: batches between redraws (0 disables the bar);
    leave: keep each finished epoch's line; theme: a RichProgressBarTheme; console_kwargs: for rich's Console."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: RichProgressBarTheme | None = None,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        _require_rich()
        if not isinstance(refresh_rate, int) or isinstance(refresh_rate, bool) or refresh_rate < 0:
            raise ValueError(f"RichProgressBar(refresh_rate={refresh_rate!r}): expected an int >= 0 (batches between "
                             "redraws; 0 disables the bar)")
        self._refresh_rate = refresh_rate
        self._leave = leave
        self.theme = theme or RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self._enabled = True
        self.progress: Any = None
        self.train_progress_bar_id: Any = None
        self.val_progress_bar_id: Any = None
        self._eval_idx: int | None = None
        self._metrics_text = ""

    # -- drawing --------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self.progress is not None or self.is_disabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        theme = self.theme
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}", style=theme.description),
            BarColumn(complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                      pulse_style=theme.progress_bar_pulse),
            TextColumn("{task.completed}/{task.total}", style=theme.batch_progress),
            TimeElapsedColumn(), TextColumn("<", style=theme.time), TimeRemainingColumn(),
            TextColumn("{task.fields[speed]}", style=theme.processing_speed),
            TextColumn("{task.fields[metrics]}", style=theme.metrics),
            console=Console(**self._console_kwargs), auto_refresh=False, transient=not self._leave)
        self.progress.start()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress = None
        self.train_progress_bar_id = self.val_progress_bar_id = None
        self._eval_idx = None

    def _format(self, metrics: dict[str, Any]) -> str:
        theme = self.theme
        parts = []
        for name, value in metrics.items():
            text = format(value, theme.metrics_format) if isinstance(value, float) else str(value)
            parts.append(f"{name}: {text}")
        return theme.metrics_text_delimiter.join(parts)

    def _speed(self, task_id: Any) -> str:
        speed = self.progress.tasks[self._index(task_id)].speed
        return f"{speed:.2f}it/s" if speed else ""

    def _index(self, task_id: Any) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task_id)

    def _update(self, task_id: Any, completed: int, *, metrics: str | None = None, force: bool = False) -> None:
        if self.progress is None or task_id is None:
            return
        if not force and completed % self._refresh_rate:
            return
        fields: dict[str, Any] = {"speed": self._speed(task_id)}
        if metrics is not None:
            fields["metrics"] = metrics
        self.progress.update(task_id, completed=completed, **fields)
        self.progress.refresh()

    def _add(self, description: str, total: Any) -> Any:
        total = None if total in (None, float("inf")) else int(total)
        return self.progress.add_task(description, total=total, speed="", metrics="")

    # -- training -------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.progress is None:
            return
        total = trainer.num_training_batches
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps - trainer.global_step)
        description = f"Epoch {trainer.current_epoch}"
        if self.train_progress_bar_id is not None and self._leave:
            self.train_progress_bar_id = None  # keep the finished epoch's line, start a new one below it
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add(description, total)
        else:
            self.progress.reset(self.train_progress_bar_id, total=None if total == float("inf") else int(total),
                                description=description, speed="", metrics=self._metrics_text)
        self.progress.refresh()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.progress is None or self.train_progress_bar_id is None:
            return
        done = batch_idx + 1
        if done % self._refresh_rate == 0:
            self._metrics_text = self._format(self.get_metrics(trainer, pl_module))
            self._update(self.train_progress_bar_id, done, metrics=self._metrics_text, force=True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.progress is None or self.train_progress_bar_id is None:
            return
        self._metrics_text = self._format(self.get_metrics(trainer, pl_module))
        completed = self.progress.tasks[self._index(self.train_progress_bar_id)].completed
        self._update(self.train_progress_bar_id, int(completed), metrics=self._metrics_text, force=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _eval_batch_start(self, description: str, totals: Any, dataloader_idx: int) -> None:
        self._start()
        if self.progress is None or (self.val_progress_bar_id is not None and dataloader_idx == self._eval_idx):
            return
        if self.val_progress_bar_id is not None:
            self.progress.remove_task(self.val_progress_bar_id)
        total = totals[dataloader_idx] if isinstance(totals, (list, tuple)) else totals
        suffix = f" DataLoader {dataloader_idx}" if isinstance(totals, (list, tuple)) and len(totals) > 1 else ""
        self.val_progress_bar_id = self._add(description + suffix, total)
        self._eval_idx = dataloader_idx

    def _eval_batch_end(self, batch_idx: int) -> None:
        self._update(self.val_progress_bar_id, batch_idx + 1)

    def _eval_end(self, standalone: bool) -> None:
        if self.progress is not None and self.val_progress_bar_id is not None:
            if not self._leave:
                self.progress.remove_task(self.val_progress_bar_id)
            self.progress.refresh()
        self.val_progress_bar_id = None
        self._eval_idx = None
        if standalone:
            self._stop()

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        sanity = trainer.sanity_checking
        self._eval_batch_start("Sanity Checking" if sanity else "Validation",
                               trainer.num_sanity_val_batches if sanity else trainer.num_val_batches, dataloader_idx)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._eval_batch_end(batch_idx)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(standalone=trainer.state.fn == "validate")

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._eval_batch_start("Testing", trainer.num_test_batches, dataloader_idx)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._eval_batch_end(batch_idx)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(standalone=True)

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._eval_batch_start("Predicting", trainer.num_predict_batches, dataloader_idx)

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._eval_batch_end(batch_idx)

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(standalone=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop()

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print above the bars (rich's console) when they are drawn, else plain print."""
        if self.progress is not None:
            self.progress.console.print(*args, sep=sep, **kwargs)
        else:
            print(*args, sep=sep, **kwargs)
