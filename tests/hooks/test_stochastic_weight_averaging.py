"""StochasticWeightAveraging: final weights equal (torch.equal) a hand-written loop doing Lightning's SWA sequence
(average at epoch starts from swa_start, SWALR swapped in and stepped once per epoch, averaged weights copied in at
the end, a batch-norm statistics pass under the averaged weights); checkpoints hold the SWA state and resume."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import SWALR
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.callbacks import StochasticWeightAveraging
from engine.errors import MisconfigurationException

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
             enable_checkpointing=False)
EPOCHS = 5


class Net(pl.LightningModule):
    def __init__(self, batch_norm: bool = False, scheduler: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), *([nn.BatchNorm1d(8)] if batch_norm else []), nn.ReLU(),
                                 nn.Linear(8, 1))
        self.scheduler = scheduler
        self.lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def on_train_epoch_start(self) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        if self.scheduler:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
        return opt


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    return DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), batch_size=4)


def hand(batch_norm: bool, scheduler: bool, swa_start: int, swa_lr: float = 0.05) -> tuple[dict, list[float]]:
    """Lightning's SWA order written out: swa_start is 0-based."""
    model = Net(batch_norm, scheduler)
    average = deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    n, lrs = 0, []
    at_val: list[torch.Tensor] = []
    for epoch in range(EPOCHS):
        if epoch == swa_start:
            for g in opt.param_groups:
                g["initial_lr"] = swa_lr
            sched = SWALR(opt, swa_lr=[swa_lr] * len(opt.param_groups), anneal_epochs=10, anneal_strategy="cos",
                          last_epoch=EPOCHS)
        if epoch >= swa_start:
            for p_avg, p in zip(average.parameters(), model.parameters()):
                p_avg.detach().copy_(p.detach() if n == 0 else p_avg + (p.detach() - p_avg) / (n + 1))
            n += 1
        lrs.append(opt.param_groups[0]["lr"])
        for x, y in loader():
            loss = nn.functional.mse_loss(model.net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        if n:
            at_val.append(average.net[0].weight.detach().clone())
    hand.at_val = at_val  # type: ignore[attr-defined]
    for p_avg, p in zip(average.parameters(), model.parameters()):
        p.detach().copy_(p_avg)
    if batch_norm:
        bn = model.net[1]
        bn.reset_running_stats()
        bn.momentum = None
        with torch.no_grad():
            for x, _ in loader():
                model.net(x)
        bn.momentum = 0.1
    return model.state_dict(), lrs


@pytest.mark.parametrize("batch_norm,scheduler", [(False, False), (True, False), (False, True)],
                         ids=["plain", "batch_norm", "swapped_steplr"])
def test_swa_matches_the_hand_written_loop(tmp_path: Path, batch_norm: bool, scheduler: bool) -> None:
    model = Net(batch_norm, scheduler)
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3)],
                         default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, loader())
    expected, lrs = hand(batch_norm, scheduler, swa_start=2)
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.lrs == lrs
    assert trainer.current_epoch == EPOCHS and trainer.global_step == EPOCHS * 6  # the BN pass counts nothing
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, SWALR)


def test_validation_on_the_averaged_weights_when_asked(tmp_path: Path) -> None:
    class Watched(Net):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                self.seen.append(self.net[0].weight.detach().clone())

    model = Watched()
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[StochasticWeightAveraging(
        swa_lrs=0.05, swa_epoch_start=3, validate_with_average=True)], default_root_dir=tmp_path,
        **{**QUIET, "num_sanity_val_steps": 1})
    trainer.fit(model, loader(), loader())
    expected, _ = hand(False, False, swa_start=2)
    seen = model.seen[1:]  # after the sanity check: one validation per epoch
    assert len(seen) == EPOCHS and len(hand.at_val) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen[2:], hand.at_val))
    for k, v in expected.items():  # training went on with the trained weights
        assert torch.equal(model.state_dict()[k], v), k


def test_float_start_is_a_fraction_of_max_epochs(tmp_path: Path) -> None:
    model = Net()
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=0.6)],
                         default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, loader())
    expected, _ = hand(False, False, swa_start=2)  # int(5 * 0.6) = 3, 1-based
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_resume_from_a_checkpoint_inside_swa_gives_the_same_weights(tmp_path: Path) -> None:
    from engine.callbacks import ModelCheckpoint

    def trainer(*extra: Any) -> pl.Trainer:
        quiet = {**QUIET, "enable_checkpointing": True}
        return pl.Trainer(max_epochs=EPOCHS, callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3),
                                                       *extra], default_root_dir=tmp_path, **quiet)

    full = Net(scheduler=True)
    trainer(ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)).fit(full, loader())
    mid = tmp_path / "ckpts" / "epoch=3-step=24.ckpt"
    ckpt = torch.load(mid, weights_only=True)
    swa_state = next(v for k, v in ckpt["callbacks"].items() if "StochasticWeightAveraging" in k)
    assert swa_state["n_averaged"] == 2 and swa_state["average_model_state"] is not None
    assert ckpt["lr_schedulers"][0]["_step_count"] > 1  # SWALR's state, not StepLR's
    resumed = Net(scheduler=True)
    trainer(ModelCheckpoint(dirpath=tmp_path / "again")).fit(resumed, loader(), ckpt_path=mid)
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert resumed.lrs == full.lrs[4:]


def test_a_fit_stopped_before_the_last_epoch_keeps_the_trained_weights(tmp_path: Path) -> None:
    model = Net()
    trainer = pl.Trainer(max_epochs=EPOCHS, max_steps=20,
                         callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)],
                         default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, loader())
    swa = trainer.callbacks[0]
    assert swa.n_averaged is not None and int(swa.n_averaged) == 3  # epochs 1, 2, 3 started inside SWA
    assert not all(torch.equal(a, b) for a, b in zip(swa.average_model.parameters(), model.parameters()))


@pytest.mark.parametrize("kwargs,match", [
    (dict(swa_lrs=0.05, swa_epoch_start=0), "swa_epoch_start=0"),
    (dict(swa_lrs=0.05, swa_epoch_start=1.5), "swa_epoch_start=1.5"),
    (dict(swa_lrs=-1.0), "swa_lrs=-1.0"),
    (dict(swa_lrs=[0.1, 2]), "list of positive floats"),
    (dict(swa_lrs=0.05, annealing_strategy="exp"), "'cos' or 'linear'"),
    (dict(swa_lrs=0.05, avg_fn=3), "avg_fn=3"),
])
def test_bad_arguments_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        StochasticWeightAveraging(**kwargs)


def test_two_optimizers_are_refused_before_training(tmp_path: Path) -> None:
    class Two(Net):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

        def training_step(self, batch: Any, batch_idx: int) -> None:
            pass

    model = Two()
    model.automatic_optimization = False
    with pytest.raises(MisconfigurationException, match="one optimizer; configure_optimizers returned 2"):
        pl.Trainer(max_epochs=1, callbacks=[StochasticWeightAveraging(swa_lrs=0.05)], default_root_dir=tmp_path,
                   **QUIET).fit(model, loader())
