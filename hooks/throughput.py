"""ThroughputMonitor: training batches and samples per second over a rolling window, written to the loggers.

Every training batch appends (elapsed time, batches, samples) to a window of the last `window_size` batches; on the
batches where the trainer writes step logs (`trainer.should_update_logs`, and not mid-accumulation) it logs
`train/time`, `train/batches`, `train/samples` and, once the window is full (as Lightning's Throughput), the rates
`train/batches_per_sec`, `train/samples_per_sec` and their per-device forms `train/device/...`. Validation time inside
fit is left out of the training time. No device sync per batch: on CUDA it synchronizes only at the logging batches.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Callable

import torch

from hooks.callback import Callback

__all__ = ["ThroughputMonitor"]


class ThroughputMonitor(Callback):
    """Logs training throughput; samples come from `batch_size_fn(batch)`, else from the Timestamp's samples_seen."""

    def __init__(self, batch_size_fn: Callable[[Any], int] | None = None, window_size: int = 100,
                 separator: str = "/") -> None:
        if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 2:
            raise ValueError(f"ThroughputMonitor(window_size={window_size!r}): expected an int >= 2 (rates are "
                             "computed between the first and last batch of the window)")
        if batch_size_fn is not None and not callable(batch_size_fn):
            raise TypeError(f"ThroughputMonitor(batch_size_fn={batch_size_fn!r}): expected a function batch -> int")
        self.batch_size_fn = batch_size_fn
        self.window_size = window_size
        self.separator = separator
        self._time: deque[float] = deque(maxlen=window_size)
        self._batches: deque[int] = deque(maxlen=window_size)
        self._samples: deque[int] = deque(maxlen=window_size)
        self._t0 = 0.0
        self._val_t0: float | None = None
        self._n_batches = 0
        self._n_samples = 0
        self._samples_seen = 0
        self._cuda = False

    def _reset(self, trainer: Any) -> None:
        self._time.clear()
        self._batches.clear()
        self._samples.clear()
        self._n_batches = self._n_samples = 0
        self._samples_seen = trainer.timestamp.samples_seen
        device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        self._cuda = getattr(device, "type", None) == "cuda" and torch.cuda.is_available()
        self._t0 = perf_counter()

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self._reset(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        log_now = trainer.should_update_logs and not self._accumulating(trainer, batch_idx)
        if log_now and self._cuda:
            torch.cuda.synchronize()  # only here: perf_counter must see the queued work finished
        elapsed = perf_counter() - self._t0
        if self.batch_size_fn is not None:
            self._n_samples += int(self.batch_size_fn(batch))
        else:
            seen = trainer.timestamp.samples_seen
            self._n_samples += seen - self._samples_seen
            self._samples_seen = seen
        self._n_batches += 1
        self._time.append(elapsed)
        self._batches.append(self._n_batches)
        self._samples.append(self._n_samples)
        if log_now:
            trainer.log_metrics(self.compute(trainer))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val_t0 = perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._val_t0 is not None:  # validation inside fit does not count as training time
            self._t0 += perf_counter() - self._val_t0
            self._val_t0 = None

    # -- metrics --------------------------------------------------------------------------------------------------
    def compute(self, trainer: Any = None) -> dict[str, float]:
        """The metrics at the latest batch: totals, and rates once the window holds `window_size` batches."""
        sep = self.separator
        prefix = f"train{sep}"
        if not self._time:
            return {}
        metrics: dict[str, float] = {
            f"{prefix}time": self._time[-1],
            f"{prefix}batches": self._batches[-1],
            f"{prefix}samples": self._samples[-1],
        }
        if len(self._time) == self.window_size:
            span = self._time[-1] - self._time[0]
            if span > 0:
                world = getattr(trainer, "world_size", 1) or 1
                batches_per_sec = (self._batches[-1] - self._batches[0]) / span
                samples_per_sec = (self._samples[-1] - self._samples[0]) / span
                metrics[f"{prefix}device{sep}batches_per_sec"] = batches_per_sec
                metrics[f"{prefix}device{sep}samples_per_sec"] = samples_per_sec
                metrics[f"{prefix}batches_per_sec"] = batches_per_sec * world
                metrics[f"{prefix}samples_per_sec"] = samples_per_sec * world
        return metrics

    @staticmethod
    def _accumulating(trainer: Any, batch_idx: int) -> bool:
        """Mid gradient accumulation: the optimizer step (and its time) is still to come."""
        n = getattr(trainer, "accumulate_grad_batches", 1) or 1
        return n > 1 and (batch_idx + 1) % n != 0 and not trainer.is_last_batch
