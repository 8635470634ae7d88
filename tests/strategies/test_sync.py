"""The DDP sync handler in one process with a real one-rank gloo group: how many collectives a fit costs, and
that a stop request is kept and acted on at the agreed point."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from strategies.sync import DDPSync


@pytest.fixture()
def group():
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=10))
    yield
    dist.destroy_process_group()


class Model(pl.LightningModule):
    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.stop_at = stop_at

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.stop_at is not None and self.trainer.global_step == self.stop_at:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=4)


def fit(model: Model, val: bool, **kwargs) -> tuple[pl.Trainer, DDPSync]:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
    sync = DDPSync(trainer.context)
    trainer.add_handler(sync)
    trainer.fit(model, loader(), loader(8) if val else None)
    return trainer, sync


def test_at_most_one_collective_per_step_plus_one_per_epoch_and_validation(group) -> None:
    trainer, sync = fit(Model(), val=False, max_epochs=2)
    assert trainer.global_step == 8
    assert sync.collectives == 8 + 2  # batch ends + epoch ends
    trainer, sync = fit(Model(), val=True, max_epochs=2, val_check_interval=2)
    assert sync.collectives == 8 + 2 + 2  # + the batch start after each mid-epoch validation


def test_a_stop_request_survives_the_agreement(group) -> None:
    trainer, sync = fit(Model(stop_at=3), val=False, max_epochs=5)
    assert trainer.global_step == 3


def test_no_sync_is_not_entered_without_a_ddp_module(group) -> None:
    trainer, _ = fit(Model(), val=False, max_epochs=1, accumulate_grad_batches=2)
    assert trainer.global_step == 2


def test_a_strategy_with_its_own_no_sync_is_entered_on_non_final_micro_batches() -> None:
    """FSDP offers `strategy.no_sync(model)` (set_requires_gradient_sync); the handler prefers it to DDP's."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    entered: list[object] = []

    class Strategy:
        @contextmanager
        def no_sync(self, model):
            entered.append(model)
            yield

    model = object()
    sync = DDPSync(SimpleNamespace(strategy=Strategy(), model=model))
    with sync.wrap_train_step(SimpleNamespace(will_step=False)):
        pass
    with sync.wrap_train_step(SimpleNamespace(will_step=True)):
        pass
    assert entered == [model]  # once: the final micro-batch syncs
