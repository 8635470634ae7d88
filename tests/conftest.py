"""Shared tiny models and fixtures for the end-to-end engine tests: real torch on the CPU, a few ms per fit.

Test files get everything through the `kit` fixture (tests/ is not a package): `kit.Model` (a LightningModule to
subclass), `kit.Recorder` (a callback that records what happened), `kit.loader(n, ...)`, `kit.trainer(**flags)`.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl

__all__: list[str] = []


def make_dataset(n: int, seed: int = 0, in_dim: int = 4) -> TensorDataset:
    """`n` samples of (x: in_dim floats, y: 1 float, idx: the sample's index) from a fixed generator."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, in_dim, generator=g), torch.randn(n, 1, generator=g), torch.arange(n))


def make_loader(n: int, batch_size: int = 2, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over `make_dataset(n, seed)`; shuffle=True draws its order from the global torch RNG."""
    return DataLoader(make_dataset(n, seed), batch_size=batch_size, shuffle=shuffle)


class TinyModel(pl.LightningModule):
    """Linear(4, 1) regression; logs val_loss / test_loss; remembers the sample indices each training step saw."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.lr = lr
        self.seen: list[tuple[int, list[int]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if len(batch) > 2:
            self.seen.append((self.current_epoch, batch[2].tolist()))
        return self._loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Recorder(pl.Callback):
    """Records the run as tuples; `stop_at=(epoch, batch_idx)` sets trainer.should_stop after that batch,
    `stop_at_epoch_end=epoch` after that epoch's on_train_epoch_end."""

    def __init__(self, stop_at: tuple[int, int] | None = None, stop_at_epoch_end: int | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at
        self.stop_at_epoch_end = stop_at_epoch_end

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self.events.append(("sanity_start",))

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self.events.append(("sanity_end",))

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.events.append(("epoch_start", trainer.current_epoch))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.events.append(("batch", trainer.current_epoch, batch_idx, trainer.global_step, trainer.is_last_batch))
        if self.stop_at == (trainer.current_epoch, batch_idx):
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.events.append(("epoch_end", trainer.current_epoch, trainer.global_step))
        if self.stop_at_epoch_end == trainer.current_epoch:
            trainer.should_stop = True

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.events.append(("val_start", trainer.current_epoch, trainer.global_step, trainer.sanity_checking))

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.events.append(("val_batch", batch_idx))

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self.events.append(("test_batch", batch_idx))

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self.events.append(("predict_batch", batch_idx))

    # -- views ----------------------------------------------------------------------------------------------------
    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e[0] == name)

    def epoch_ends(self) -> list[tuple[int, int]]:
        """(epoch, global_step) at each on_train_epoch_end."""
        return [e[1:] for e in self.events if e[0] == "epoch_end"]

    def val_runs(self, sanity: bool = False) -> list[tuple[int, int, int]]:
        """(epoch, global_step, batches) per validation run; sanity=True lists the sanity-check runs instead."""
        runs: list[list] = []
        current: list | None = None
        for e in self.events:
            if e[0] == "val_start":
                current = [e[1], e[2], 0, e[3]]
                runs.append(current)
            elif e[0] == "val_batch" and current is not None:
                current[2] += 1
        return [tuple(r[:3]) for r in runs if r[3] == sanity]


def make_trainer(**flags: Any) -> pl.Trainer:
    """A Trainer without the model summary printout (pass enable_model_summary=True to get it back)."""
    flags.setdefault("enable_model_summary", False)
    return pl.Trainer(**flags)


@pytest.fixture()
def kit() -> types.SimpleNamespace:
    """The shared tiny building blocks (see the module docstring)."""
    return types.SimpleNamespace(Model=TinyModel, Recorder=Recorder, dataset=make_dataset, loader=make_loader,
                                 trainer=make_trainer)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Tests flip global torch switches (deterministic, anomaly, RNG); put them back whatever happens."""
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    anomaly = torch.is_anomaly_enabled()
    rng = torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(det, warn_only=det_warn)
    torch.autograd.set_detect_anomaly(anomaly)
    torch.set_rng_state(rng)


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty directory: default loggers write under default_root_dir = cwd."""
    monkeypatch.chdir(tmp_path)
