"""DeviceStatsMonitor: logs the device's statistics around every training/validation/test batch (Lightning's).

On CUDA the values are `torch.cuda.memory_stats(device)`; on the CPU they are `cpu_vm_percent`, `cpu_percent` and
`cpu_swap_percent` from psutil (an optional package: without it, CPU stats raise a clear error at setup).
`cpu_stats=True` adds the CPU stats on an accelerator, `cpu_stats=False` turns them off on the CPU. Keys are
`DeviceStatsMonitor.<hook>/<stat>` (the logger's group separator), at the x-axis step `trainer.batches_stepped`;
nothing is read unless the trainer writes step logs at that batch (`trainer.should_update_logs`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from engine.errors import MisconfigurationException
from hooks.callback import Callback

__all__ = ["DeviceStatsMonitor", "get_cpu_stats", "get_device_stats"]

_PSUTIL_HINT = "install it with `pip install psutil`"


def _psutil_available() -> bool:
    return importlib.util.find_spec("psutil") is not None


def get_cpu_stats() -> dict[str, float]:
    """Virtual memory, CPU and swap use of the machine, in percent (Lightning's CPU accelerator stats)."""
    if not _psutil_available():
        raise ModuleNotFoundError(f"Fetching CPU device stats requires `psutil` to be installed; {_PSUTIL_HINT}.")
    import psutil

    return {"cpu_vm_percent": psutil.virtual_memory().percent, "cpu_percent": psutil.cpu_percent(),
            "cpu_swap_percent": psutil.swap_memory().percent}


def get_device_stats(device: torch.device) -> dict[str, Any]:
    """The statistics of `device`: CUDA memory stats on a GPU, psutil's CPU figures on the CPU, {} otherwise."""
    if device.type == "cuda" and torch.cuda.is_available():
        return dict(torch.cuda.memory_stats(device))
    if device.type == "cpu":
        return get_cpu_stats()
    return {}


class DeviceStatsMonitor(Callback):
    """`Trainer(callbacks=[DeviceStatsMonitor()])`: needs a logger; `cpu_stats` as described in the module doc."""

    def __init__(self, cpu_stats: bool | None = None) -> None:
        if cpu_stats is not None and not isinstance(cpu_stats, bool):
            raise MisconfigurationException(f"DeviceStatsMonitor(cpu_stats={cpu_stats!r}): expected None, True or "
                                            "False")
        self._cpu_stats = cpu_stats

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException("Cannot use `DeviceStatsMonitor` callback with `Trainer(logger=False)`. "
                                            "Pass a logger (e.g. `logger=CSVLogger(...)`) or remove the callback.")
        device = trainer.strategy.root_device
        wants_cpu = (self._cpu_stats is None and device.type == "cpu") or self._cpu_stats is True
        if wants_cpu and not _psutil_available():
            raise ModuleNotFoundError(
                f"`DeviceStatsMonitor` cannot log CPU stats as `psutil` is not installed; {_PSUTIL_HINT}, or pass "
                "DeviceStatsMonitor(cpu_stats=False).")

    def _log_stats(self, trainer: Any, key: str) -> None:
        if not trainer.should_update_logs:
            return
        device = trainer.strategy.root_device
        if self._cpu_stats is False and device.type == "cpu":
            return
        stats = get_device_stats(device)
        if self._cpu_stats and device.type != "cpu":
            stats.update(get_cpu_stats())
        prefix = f"{type(self).__qualname__}.{key}"
        for logger in trainer.loggers:
            sep = getattr(logger, "group_separator", "/")
            logger.log_metrics(metrics={f"{prefix}{sep}{k}": v for k, v in stats.items()},
                               step=trainer.batches_stepped)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._log_stats(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._log_stats(trainer, "on_train_batch_end")

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._log_stats(trainer, "on_validation_batch_start")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._log_stats(trainer, "on_validation_batch_end")

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._log_stats(trainer, "on_test_batch_start")

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._log_stats(trainer, "on_test_batch_end")
