"""DeviceStatsMonitor: CPU stats through psutil written to a real logger file; CUDA stats when a GPU is there."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

import engine as pl
from engine.callbacks import DeviceStatsMonitor

pytest.importorskip("psutil")


def _rows(logger: Any) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_cpu_stats_are_logged_around_train_and_val_batches(kit: Any, tmp_path: Path) -> None:
    logger = pl.CSVLogger(tmp_path, name="stats")
    trainer = kit.trainer(max_epochs=1, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                          enable_progress_bar=False, callbacks=[DeviceStatsMonitor()], num_sanity_val_steps=0,
                          accelerator="cpu")
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2), kit.loader(2, batch_size=2))
    rows = _rows(logger)
    keys = set().union(*rows)
    for hook in ("on_train_batch_start", "on_train_batch_end", "on_validation_batch_start",
                 "on_validation_batch_end"):
        for stat in ("cpu_vm_percent", "cpu_percent", "cpu_swap_percent"):
            assert f"DeviceStatsMonitor.{hook}/{stat}" in keys
    values = [float(r["DeviceStatsMonitor.on_train_batch_end/cpu_vm_percent"]) for r in rows
              if r.get("DeviceStatsMonitor.on_train_batch_end/cpu_vm_percent")]
    assert len(values) == 2 and all(0.0 < v <= 100.0 for v in values)
    steps = [int(r["step"]) for r in rows if r.get("DeviceStatsMonitor.on_train_batch_end/cpu_vm_percent")]
    assert steps == [0, 1]  # trainer.batches_stepped: Lightning counts the batch after on_train_batch_end


def test_cpu_stats_false_on_cpu_logs_nothing(kit: Any, tmp_path: Path) -> None:
    logger = pl.CSVLogger(tmp_path, name="stats")
    trainer = kit.trainer(max_epochs=1, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                          enable_progress_bar=False, callbacks=[DeviceStatsMonitor(cpu_stats=False)],
                          limit_val_batches=0, accelerator="cpu")
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    path = Path(logger.log_dir) / "metrics.csv"
    assert not path.exists() or not any(k.startswith("DeviceStatsMonitor") for r in _rows(logger) for k in r)


def test_needs_a_logger_and_psutil(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[DeviceStatsMonitor()])
    with pytest.raises(pl.MisconfigurationException, match=r"Trainer\(logger=False\)"):
        trainer.fit(kit.Model(), kit.loader(4))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psutil" else real(name, *a))
    trainer = kit.trainer(max_epochs=1, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[DeviceStatsMonitor()], accelerator="cpu")
    with pytest.raises(ModuleNotFoundError, match="psutil"):
        trainer.fit(kit.Model(), kit.loader(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_stats_are_logged(kit: Any, tmp_path: Path) -> None:
    logger = pl.CSVLogger(tmp_path, name="stats")
    trainer = kit.trainer(max_epochs=1, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                          enable_progress_bar=False, callbacks=[DeviceStatsMonitor()], limit_val_batches=0,
                          accelerator="gpu", devices=1)
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    keys = set().union(*_rows(logger))
    assert "DeviceStatsMonitor.on_train_batch_end/allocated_bytes.all.current" in keys
