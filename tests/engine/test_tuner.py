"""Tuner: the LR range test against a hand-written one, its suggestion and plot, the batch-size search with a model
that raises a CUDA-style out-of-memory error above a size (as Lightning's own tests do), and both leaving the
model's weights and the user's Trainer as they were."""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import engine as pl
from engine.tuner import Tuner

FLAGS = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _reference_range_test(model: nn.Module, loader: DataLoader, n: int, lo: float, hi: float, exponential: bool,
                          beta: float = 0.98) -> tuple[list[float], list[float]]:
    """A plain PyTorch LR range test with Lightning's schedule and smoothing."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lo)
    lrs, losses, avg = [], [], 0.0
    for k, (x, y, _) in zip(range(n), loader):
        if k == 0:
            lr = lo
        else:
            r = (k + 1) / n
            lr = lo * (hi / lo) ** r if exponential else lo + r * (hi - lo)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg = beta * avg + (1 - beta) * loss.item()
        lrs.append(lr)
        losses.append(avg / (1 - beta ** (k + 2)))  # global step after the k-th step is k + 1
    return lrs, losses


# -- lr_find --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_lr_find_matches_a_hand_written_range_test(kit: Any, mode: str) -> None:
    model = kit.Model(lr=0.05)
    before = _state(model)
    loader = kit.loader(160, batch_size=4)
    trainer = kit.trainer(max_epochs=3, **FLAGS)
    finder = Tuner(trainer).lr_find(model, loader, num_training=30, min_lr=1e-3, max_lr=0.5, mode=mode,
                                    early_stop_threshold=None, update_attr=False)
    ref_lrs, ref_losses = _reference_range_test(_fresh(kit, before), loader, 30,
                                                1e-3, 0.5, mode == "exponential")
    assert finder.results["lr"] == pytest.approx(ref_lrs, rel=1e-12)
    assert finder.results["loss"] == pytest.approx(ref_losses, rel=1e-5)
    # weights restored, the user's trainer untouched, the attribute left alone (update_attr=False)
    assert _same(_state(model), before) and model.lr == 0.05
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    # the suggestion: steepest descent of the smoothed loss, skipping 10 points at the start and 1 at the end
    grads = np.gradient(np.array(ref_losses[10:-1]), np.array(ref_lrs[10:-1]))
    assert finder.suggestion() == pytest.approx(ref_lrs[10 + int(np.argmin(grads))], rel=1e-12)


def _fresh(kit: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    model = kit.Model(lr=0.05)
    model.load_state_dict(state)
    return model


def test_lr_find_sets_the_suggestion_on_the_model_and_hparams(kit: Any) -> None:
    class HP(kit.Model):
        def __init__(self, learning_rate: float = 0.01) -> None:
            super().__init__()
            del self.lr
            self.save_hyperparameters()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)

    model = HP()
    trainer = kit.trainer(max_epochs=1, **FLAGS)
    # no early stop: with Lightning's bias correction a noisy second batch can already trip the threshold
    finder = Tuner(trainer).lr_find(model, kit.loader(120, batch_size=4), num_training=25, early_stop_threshold=None)
    assert finder.suggestion() is not None
    assert model.hparams.learning_rate == finder.suggestion()
    with pytest.raises(AttributeError, match="could not find this as a field"):
        Tuner(trainer).lr_find(model, kit.loader(8), attr_name="missing_lr")
    with pytest.raises(AttributeError, match=r"one of these fields: \('lr', 'learning_rate'\)"):
        Tuner(trainer).lr_find(nn_model_without_lr(kit), kit.loader(8))


def nn_model_without_lr(kit: Any) -> Any:
    model = kit.Model()
    del model.lr
    return model


def test_lr_find_stops_early_when_the_loss_diverges_and_the_model_fits_normally_after(kit: Any) -> None:
    torch.manual_seed(0)
    model = kit.Model(lr=0.05)
    before = _state(model)
    loader = kit.loader(3200, batch_size=32)  # large batches: a smooth loss, so only the lr makes it diverge
    trainer = kit.trainer(max_steps=5, **FLAGS)
    finder = Tuner(trainer).lr_find(model, loader, num_training=100, min_lr=1e-4, max_lr=50.0, update_attr=False)
    losses = finder.results["loss"]
    assert 2 < len(losses) < 100 and len(finder.results["lr"]) == len(losses)
    assert losses[-1] > 4.0 * min(losses[:-1])  # the step that tripped the threshold is the last one recorded
    assert all(v <= 4.0 * min(losses[: i + 1]) for i, v in enumerate(losses[:-1]) if i >= 1)
    assert _same(_state(model), before)
    trainer.fit(model, loader)  # the user's trainer still runs its own fit (its max_steps=5)
    assert trainer.global_step == 5


def test_lr_find_plot(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    trainer = kit.trainer(max_epochs=1, **FLAGS)
    finder = Tuner(trainer).lr_find(kit.Model(), kit.loader(120, batch_size=4), num_training=25,
                                    update_attr=False, early_stop_threshold=None)
    fig = finder.plot(suggest=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "Learning rate"
    curve, marker = ax.get_lines()
    assert list(curve.get_xdata()) == finder.results["lr"]
    assert marker.get_xdata()[0] == finder.suggestion() and marker.get_color() == "red"
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(pl.MisconfigurationException, match="must have Matplotlib installed"):
        finder.plot()


def test_lr_find_refuses_what_lightning_refuses(kit: Any) -> None:
    tuner = Tuner(kit.trainer(max_epochs=1, **FLAGS))
    with pytest.raises(pl.MisconfigurationException, match="method='fit' is the only valid configuration"):
        tuner.lr_find(kit.Model(), method="validate")
    with pytest.raises(pl.MisconfigurationException, match="`dataloaders` argument should be None"):
        tuner.lr_find(kit.Model(), dataloaders=kit.loader(4))
    with pytest.raises(pl.MisconfigurationException, match=r"mode should be either 'linear' or 'exponential'"):
        tuner.lr_find(kit.Model(), kit.loader(8), mode="cubic")

    class Two(kit.Model):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

        automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            return None

    with pytest.raises(pl.MisconfigurationException, match="returned 2, but learning rate finder only works"):
        tuner.lr_find(Two(), kit.loader(8))
    with pytest.warns(UserWarning, match="Skipping learning rate finder since `fast_dev_run` is enabled") as caught:
        assert Tuner(kit.trainer(fast_dev_run=True, **FLAGS)).lr_find(kit.Model(), kit.loader(8)) is None
    assert caught[0].filename == __file__


# -- scale_batch_size -----------------------------------------------------------------------------------------------
class OOMModel(pl.LightningModule):
    """Raises a CUDA-style out-of-memory RuntimeError on any batch larger than `limit` (Lightning's test trick)."""

    def __init__(self, batch_size: int = 2, limit: int = 16, n: int = 512) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.limit = limit
        self.n = n
        self.layer = nn.Linear(4, 1)
        self.sizes: list[int] = []

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.utils.data.TensorDataset(torch.randn(self.n, 4), torch.randn(self.n, 1)),
                          batch_size=self.batch_size)

    val_dataloader = train_dataloader

    def _step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise RuntimeError("CUDA error: out of memory. Tried to allocate 2.00 GiB")
        return nn.functional.mse_loss(self.layer(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("mode", "limit", "expected"), [("power", 16, 16), ("power", 20, 16),
                                                         ("binsearch", 20, 20), ("binsearch", 37, 37)])
def test_scale_batch_size_finds_the_largest_size_that_fits(mode: str, limit: int, expected: int) -> None:
    model = OOMModel(limit=limit)
    before = _state(model)
    trainer = pl.Trainer(max_epochs=1, **FLAGS)
    found = Tuner(trainer).scale_batch_size(model, mode=mode, steps_per_trial=2, init_val=2)
    assert found == expected and model.batch_size == expected
    assert max(s for s in model.sizes if s <= limit) == expected  # the largest size that ran
    assert _same(_state(model), before) and trainer.global_step == 0
    trainer.fit(model)  # the full run then uses the found size
    assert trainer.train_dataloader.batch_size == expected


def test_scale_batch_size_on_the_datamodule_for_validate_and_its_checks() -> None:
    class DM(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = 4

        def val_dataloader(self) -> DataLoader:
            return DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1)),
                              batch_size=self.batch_size)

    class Model(OOMModel):
        def __init__(self) -> None:
            super().__init__(limit=8)
            del self.batch_size

    dm, model = DM(), Model()
    trainer = pl.Trainer(**FLAGS)
    assert Tuner(trainer).scale_batch_size(model, datamodule=dm, method="validate", init_val=2) == 8
    assert dm.batch_size == 8
    with pytest.raises(pl.MisconfigurationException, match="cannot be used with dataloaders passed directly"):
        Tuner(trainer).scale_batch_size(OOMModel(), dataloaders=dm.val_dataloader(), method="validate")
    with pytest.raises(pl.MisconfigurationException, match="Field bs not found in `model`, `datamodule`"):
        Tuner(trainer).scale_batch_size(OOMModel(), batch_arg_name="bs")
    with pytest.raises(ValueError, match="`mode` should be either 'power' or 'binsearch'"):
        Tuner(trainer).scale_batch_size(OOMModel(), mode="linear")


def test_scale_batch_size_stops_at_the_dataset_length_and_reraises_other_errors() -> None:
    model = OOMModel(limit=10_000, n=40)
    # 2..32 run; 64 (one batch of all 40 samples) runs too, and 64 >= 40 samples ends the search there
    assert Tuner(pl.Trainer(max_epochs=1, **FLAGS)).scale_batch_size(model, init_val=2) == 64
    assert model.batch_size == 64

    class Broken(OOMModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("shape mismatch")

    broken = Broken()
    before = _state(broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Tuner(pl.Trainer(max_epochs=1, **FLAGS)).scale_batch_size(broken)
    assert _same(_state(broken), before)


def test_tuner_lightning_import_paths() -> None:
    import engine.tuner
    import engine.tuner.tuning

    assert pl.tuner.Tuner is engine.tuner.tuning.Tuner is Tuner


def test_lr_find_shows_its_own_bar_when_the_trainer_has_a_progress_bar(kit: Any, capsys: Any) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_checkpointing=False)  # the default TQDMProgressBar
    Tuner(trainer).lr_find(kit.Model(), kit.loader(40, batch_size=4), num_training=10, update_attr=False,
                           early_stop_threshold=None)
    err = capsys.readouterr().err
    assert "Finding best initial lr" in err and "10/10" in err
    Tuner(kit.trainer(max_epochs=1, **FLAGS)).lr_find(kit.Model(), kit.loader(40, batch_size=4), num_training=10,
                                                      update_attr=False)
    assert "Finding best initial lr" not in capsys.readouterr().err
