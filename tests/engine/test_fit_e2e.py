"""trainer.fit end to end on real tiny models: it trains, and it trains *exactly* like a hand-written PyTorch loop.

The hand-written loops below do what Lightning 2.6.6 does (checked against it bit for bit): per batch
`training_step -> optimizer.zero_grad() -> loss.backward() -> optimizer.step()`, step-interval schedulers after the
step, epoch-interval schedulers after the step of the epoch's last batch, validation in eval mode under no_grad and
then back to train mode. Expected numbers for logging and schedulers were recorded from Lightning 2.6.6.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.errors import MisconfigurationException


def regression(n: int, seed: int, in_dim: int = 4) -> TensorDataset:
    """A learnable regression task: y = x @ w + small noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    w = torch.randn(in_dim, 1, generator=g)
    return TensorDataset(x, x @ w + 0.01 * torch.randn(n, 1, generator=g))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class Net(pl.LightningModule):
    """A small MLP (optional dropout) that records every training / validation loss it computes."""

    def __init__(self, dropout: float = 0.0, lr: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1))
        self.lr = lr
        self.losses: list[torch.Tensor] = []
        self.val_losses: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.detach().clone())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.val_losses.append(loss.clone())
        if self._trainer is not None:  # the hand loop runs it without a Trainer
            self.log("val_loss", loss)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def hand_loop(model: Net, train: DataLoader, val: DataLoader | None, epochs: int,
              val_check_interval: float = 1.0) -> None:
    """Plain PyTorch doing what Lightning's fit does (automatic optimization, no sanity check)."""
    opt = model.configure_optimizers()
    model.train()
    for _ in range(epochs):
        n = len(train)
        every = max(1, int(n * val_check_interval))
        for i, batch in enumerate(train):
            loss = model.training_step(batch, i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if val is not None and (i + 1) % every == 0:
                model.eval()
                with torch.no_grad():
                    for j, vbatch in enumerate(val):
                        model.validation_step(vbatch, j)
                model.train()


def quiet_trainer(**flags) -> pl.Trainer:
    return pl.Trainer(enable_model_summary=False, **flags)


# --- it trains ---------------------------------------------------------------------------------------------------
def test_seed_example_model_reduces_loss() -> None:
    class SimpleModel(pl.LightningModule):  # examples/seed.py's model
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, x):
            return self.linear(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    epoch_losses = []

    class Track(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epoch_losses.append(float(trainer.callback_metrics["train_loss_epoch"]))

    torch.manual_seed(0)
    data = regression(256, seed=3)
    model = SimpleModel()
    with torch.no_grad():
        before = nn.functional.mse_loss(model(data.tensors[0]), data.tensors[1]).item()
    trainer = quiet_trainer(max_epochs=3, callbacks=[Track()])
    trainer.fit(model, DataLoader(data, batch_size=32))
    with torch.no_grad():
        after = nn.functional.mse_loss(model(data.tensors[0]), data.tensors[1]).item()
    assert after < 0.5 * before
    assert len(epoch_losses) == 3 and epoch_losses[2] < epoch_losses[1] < epoch_losses[0]
    assert trainer.global_step == 3 * 8 and trainer.state.status == "finished"


def test_fit_with_a_datamodule(kit) -> None:
    class Data(pl.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.calls: list = []

        def prepare_data(self):
            self.calls.append("prepare_data")

        def setup(self, stage):
            self.calls.append(("setup", stage))
            self.train_set, self.val_set = regression(24, seed=1), regression(8, seed=2)

        def train_dataloader(self):
            self.calls.append("train_dataloader")
            return DataLoader(self.train_set, batch_size=4)

        def val_dataloader(self):
            self.calls.append("val_dataloader")
            return DataLoader(self.val_set, batch_size=4)

        def test_dataloader(self):
            self.calls.append("test_dataloader")
            return DataLoader(self.val_set, batch_size=4)

        def teardown(self, stage):
            self.calls.append(("teardown", stage))

    torch.manual_seed(0)
    dm, model = Data(), Net()
    start = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    # Lightning's order: the sanity check asks for the val loader before training asks for the train loader
    assert dm.calls == ["prepare_data", ("setup", "fit"), "val_dataloader", "train_dataloader", ("teardown", "fit")]
    assert trainer.datamodule is dm and dm.trainer is trainer
    assert trainer.global_step == 12 and len(model.losses) == 12
    assert not any(torch.equal(a, b) for a, b in zip(start, model.parameters()))
    dm.calls.clear()

    class Tested(Net):
        def test_step(self, batch, batch_idx):
            self.log("test_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))

    results = trainer.test(Tested(), datamodule=dm, verbose=False)
    assert dm.calls == ["prepare_data", ("setup", "test"), "test_dataloader", ("teardown", "test")]
    assert list(results[0]) == ["test_loss"]


# --- configure_optimizers: every format, every scheduler config ---------------------------------------------------
BATCHES, EPOCHS = 5, 3


def _opt(params) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.1)


# name -> (configure_optimizers body, [(scheduler factory, interval, frequency)] for the hand loop)
FORMATS = {
    "optimizer": (lambda p: _opt(p), lambda o: []),
    "list": (lambda p: [_opt(p)], lambda o: []),
    "tuple": (lambda p: (_opt(p),), lambda o: []),
    "two_lists": (lambda p: (lambda o: ([o], [StepLR(o, 1, gamma=0.5)]))(_opt(p)),
                  lambda o: [(StepLR(o, 1, gamma=0.5), "epoch", 1)]),
    "two_lists_single_scheduler": (lambda p: (lambda o: ([o], StepLR(o, 1, gamma=0.5)))(_opt(p)),
                                   lambda o: [(StepLR(o, 1, gamma=0.5), "epoch", 1)]),
    "two_lists_config": (lambda p: (lambda o: ([o], [{"scheduler": StepLR(o, 1, gamma=0.9), "interval": "step"}]))(
        _opt(p)), lambda o: [(StepLR(o, 1, gamma=0.9), "step", 1)]),
    "dict": (lambda p: (lambda o: {"optimizer": o, "lr_scheduler": StepLR(o, 1, gamma=0.5)})(_opt(p)),
             lambda o: [(StepLR(o, 1, gamma=0.5), "epoch", 1)]),
    "dict_interval_step": (lambda p: (lambda o: {"optimizer": o, "lr_scheduler": {
        "scheduler": StepLR(o, 1, gamma=0.9), "interval": "step"}})(_opt(p)),
        lambda o: [(StepLR(o, 1, gamma=0.9), "step", 1)]),
    "dict_interval_step_frequency_2": (lambda p: (lambda o: {"optimizer": o, "lr_scheduler": {
        "scheduler": StepLR(o, 1, gamma=0.9), "interval": "step", "frequency": 2}})(_opt(p)),
        lambda o: [(StepLR(o, 1, gamma=0.9), "step", 2)]),
    "dict_interval_epoch_frequency_2_named": (lambda p: (lambda o: {"optimizer": o, "lr_scheduler": {
        "scheduler": StepLR(o, 1, gamma=0.5), "interval": "epoch", "frequency": 2, "name": "my_lr"}})(_opt(p)),
        lambda o: [(StepLR(o, 1, gamma=0.5), "epoch", 2)]),
    "list_of_dicts": (lambda p: (lambda o: [{"optimizer": o, "lr_scheduler": ExponentialLR(o, 0.5)}])(_opt(p)),
                      lambda o: [(ExponentialLR(o, 0.5), "epoch", 1)]),
}


class Scheduled(pl.LightningModule):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.fmt = fmt
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        return FORMATS[self.fmt][0](self.parameters())


def _hand_scheduled(fmt: str, loader: DataLoader) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 1)
    opt = _opt(layer.parameters())
    scheds = FORMATS[fmt][1](opt)
    lrs = []
    for epoch in range(EPOCHS):
        for i, (x, y) in enumerate(loader):
            loss = nn.functional.mse_loss(layer(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for sched, interval, freq in scheds:
                if interval == "step" and (i + 1) % freq == 0:
                    sched.step()
                if interval == "epoch" and i == len(loader) - 1 and (epoch + 1) % freq == 0:
                    sched.step()  # Lightning steps epoch schedulers right after the last optimizer step
            lrs.append(opt.param_groups[0]["lr"])
    return layer, lrs


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_configure_optimizers_format_trains_like_the_hand_loop(fmt) -> None:
    loader = DataLoader(regression(2 * BATCHES, seed=4), batch_size=2)
    model = Scheduled(fmt)
    trainer = quiet_trainer(max_epochs=EPOCHS)
    trainer.fit(model, loader)
    layer, lrs = _hand_scheduled(fmt, loader)
    assert model.lrs == pytest.approx(lrs, rel=0, abs=0)
    assert same_weights(model.layer, layer)
    assert trainer.global_step == BATCHES * EPOCHS
    if fmt.endswith("named"):
        assert trainer.lr_scheduler_configs[0].name == "my_lr"


def test_lr_values_after_steps_and_epochs() -> None:
    """The recorded Lightning values, written out: epoch StepLR halves after each epoch's last step."""
    loader = DataLoader(regression(2 * BATCHES, seed=4), batch_size=2)
    model = Scheduled("dict")
    quiet_trainer(max_epochs=EPOCHS).fit(model, loader)
    assert model.lrs == [0.1] * 4 + [0.05] * 5 + [0.025] * 5 + [0.0125]
    model = Scheduled("dict_interval_step_frequency_2")
    quiet_trainer(max_epochs=EPOCHS).fit(model, loader)
    assert model.lrs[:6] == pytest.approx([0.1, 0.09, 0.09, 0.081, 0.081, 0.081])


def test_configure_optimizers_none_trains_nothing_with_a_warning(kit) -> None:
    class NoOpt(kit.Model):
        def configure_optimizers(self):
            return None

    model = NoOpt()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = kit.trainer(max_epochs=1)
    with pytest.warns(UserWarning, match=r"configure_optimizers` returned `?None`?.*(no|without an) optimizer"):
        trainer.fit(model, kit.loader(8))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trainer.global_step == 4 and len(model.seen) == 4  # Lightning counts the mock optimizer's steps


def test_two_optimizers_need_manual_optimization(kit) -> None:
    class Two(kit.Model):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    # Lightning raises RuntimeError("Training with multiple optimizers is only supported with manual optimization")
    with pytest.raises(RuntimeError, match=r"optimizers.*automatic_optimization = False"):
        kit.trainer(max_epochs=1).fit(Two(), kit.loader(8))


class Plateau(pl.LightningModule):
    """val_loss is constant, so ReduceLROnPlateau(patience=0) reduces the LR after every epoch but the first."""

    def __init__(self, monitor: str = "val_loss", strict: bool = True, top_level: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.monitor, self.strict, self.top_level = monitor, strict, top_level
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", 1.0)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = ReduceLROnPlateau(opt, patience=0, factor=0.5)
        if self.top_level:
            return {"optimizer": opt, "lr_scheduler": sched, "monitor": self.monitor}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor, "strict": self.strict}}


def _plateau_lrs_by_hand(epochs: int) -> list[float]:
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    sched = ReduceLROnPlateau(opt, patience=0, factor=0.5)
    lrs = []
    for _ in range(epochs):
        lrs += [opt.param_groups[0]["lr"]] * BATCHES
        sched.step(1.0)  # after the epoch's validation
    return lrs


@pytest.mark.parametrize("top_level", [False, True])
def test_reduce_lr_on_plateau_with_monitor(top_level) -> None:
    model = Plateau(top_level=top_level)
    data = regression(2 * BATCHES, seed=5)
    quiet_trainer(max_epochs=EPOCHS).fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=5))
    assert model.lrs == _plateau_lrs_by_hand(EPOCHS) == [0.1] * 10 + [0.05] * 5


def test_reduce_lr_on_plateau_missing_monitor_not_strict_warns_and_skips() -> None:
    model = Plateau(monitor="nope", strict=False)
    data = regression(2 * BATCHES, seed=5)
    trainer = quiet_trainer(max_epochs=EPOCHS)
    with pytest.warns(RuntimeWarning, match=r"ReduceLROnPlateau.*'?nope'? (not found|which is not available)"):
        trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=5))
    assert model.lrs == [0.1] * 15 and trainer.global_step == 15


def test_reduce_lr_on_plateau_missing_monitor_strict_raises() -> None:
    model = Plateau(monitor="nope", strict=True)
    data = regression(2 * BATCHES, seed=5)
    trainer = quiet_trainer(max_epochs=EPOCHS)
    with pytest.raises(MisconfigurationException, match=r"ReduceLROnPlateau conditioned on metric '?nope'?.*val_loss"):
        trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=5))
    assert trainer.global_step == BATCHES  # at the end of the first epoch


# --- self.log end to end ------------------------------------------------------------------------------------------
class Logging(pl.LightningModule):
    """Logs the batch mean of x (batches of 2, 2, 1 samples: means 1.5, 3.5, 5.0) in every way self.log allows."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.during: list[tuple[str, dict]] = []

    def training_step(self, batch, batch_idx):
        x = batch[0]
        v = x.mean()
        self.log("default", v)
        self.log("ep", v, on_step=False, on_epoch=True)
        self.log("both", v, on_step=True, on_epoch=True, prog_bar=True)
        self.log("total", v, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("top", v, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("bottom", v, on_step=False, on_epoch=True, reduce_fx=torch.min)
        self.log("hidden", v, logger=False, prog_bar=True)
        self.log("unweighted", v, on_epoch=True, batch_size=1)
        return (self.layer(x) ** 2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.during.append(("batch_end", _floats(self.trainer.callback_metrics)))

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", batch[0].mean())
        self.log("val_step_only", batch[0].sum(), on_step=True, on_epoch=False)

    def on_validation_epoch_end(self):
        self.log("val_epoch_hook", 7.0)

    def on_train_epoch_end(self):
        self.log("train_epoch_hook", 3.0)
        self.during.append(("train_epoch_end", _floats(self.trainer.callback_metrics)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _floats(metrics) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}


def _logging_run():
    snapshots = []

    class Watch(pl.Callback):
        def on_sanity_check_end(self, trainer, pl_module):
            snapshots.append(("sanity_end", _floats(trainer.callback_metrics)))

        def on_train_start(self, trainer, pl_module):
            snapshots.append(("train_start", _floats(trainer.callback_metrics)))

        def on_validation_end(self, trainer, pl_module):
            snapshots.append(("val_end", trainer.sanity_checking, _floats(trainer.callback_metrics)))

    train = DataLoader(TensorDataset(torch.arange(1.0, 6.0).unsqueeze(1)), batch_size=2)
    val = DataLoader(TensorDataset(torch.arange(10.0, 15.0).unsqueeze(1)), batch_size=2)
    model = Logging()
    trainer = quiet_trainer(max_epochs=1, callbacks=[Watch()])
    trainer.fit(model, train, val)
    return trainer, model, snapshots


def test_self_log_epoch_values_and_forked_keys() -> None:
    trainer, _, _ = _logging_run()
    weighted = (1.5 * 2 + 3.5 * 2 + 5.0 * 1) / 5  # batch-size weighted mean, uneven last batch
    assert weighted == 3.0
    assert _floats(trainer.callback_metrics) == {
        "default": 5.0,  # training_step default: on_step only -> the last batch's value
        "ep": weighted, "both": weighted, "both_epoch": weighted, "both_step": 5.0,
        "total": 10.0, "top": 5.0, "bottom": 1.5, "hidden": 5.0,
        "unweighted": round((1.5 + 3.5 + 5.0) / 3, 6), "unweighted_epoch": round((1.5 + 3.5 + 5.0) / 3, 6),
        "unweighted_step": 5.0, "train_epoch_hook": 3.0,
        "val_loss": 12.0,  # validation_step default: on_epoch -> weighted mean of 10.5, 12.5, 14
        "val_epoch_hook": 7.0,
    }
    logged = _floats(trainer.logged_metrics)
    assert "hidden" not in logged and "both" not in logged and "unweighted" not in logged  # logger=False / forked
    assert logged["both_step"] == 5.0 and logged["both_epoch"] == weighted and logged["val_step_only"] == 14.0
    assert set(logged) == {"default", "ep", "both_step", "both_epoch", "total", "top", "bottom", "unweighted_step",
                           "unweighted_epoch", "train_epoch_hook", "val_loss", "val_step_only", "val_epoch_hook"}


def test_self_log_prog_bar_metrics_are_python_floats() -> None:
    trainer, _, _ = _logging_run()
    bar = trainer.progress_bar_metrics
    assert bar == {"both_step": 5.0, "both_epoch": 3.0, "hidden": 5.0}
    assert all(type(v) is float for v in bar.values())
    assert all(isinstance(v, torch.Tensor) for v in trainer.callback_metrics.values())


def test_callback_metrics_during_training_and_around_the_sanity_check() -> None:
    _, model, snapshots = _logging_run()
    step_only = ["both", "both_step", "default", "hidden", "unweighted", "unweighted_step"]
    assert [(name, sorted(m)) for name, m in model.during[:3]] == [("batch_end", step_only)] * 3
    assert [m["default"] for _, m in model.during[:3]] == [1.5, 3.5, 5.0]
    # the sanity check sees its own values; they are dropped before training starts (no leak)
    assert snapshots[0] == ("val_end", True, {"val_loss": 11.5, "val_epoch_hook": 7.0})
    assert snapshots[1] == ("sanity_end", {"val_loss": 11.5, "val_epoch_hook": 7.0})
    assert snapshots[2] == ("train_start", {})
    assert snapshots[3][:2] == ("val_end", False) and snapshots[3][2]["val_loss"] == 12.0
    # in on_train_epoch_end the epoch values (and this epoch's validation) are already visible
    name, at_epoch_end = model.during[3]
    assert name == "train_epoch_end" and at_epoch_end["ep"] == 3.0 and at_epoch_end["val_loss"] == 12.0


def test_early_stopping_like_callback_reads_val_loss(kit) -> None:
    class StopWhenFlat(pl.Callback):
        def __init__(self):
            self.best, self.seen = None, []

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics["val_loss"]
            self.seen.append((trainer.current_epoch, float(value)))
            if self.best is not None and value >= self.best:
                trainer.should_stop = True
            self.best = value if self.best is None else min(self.best, value)

    class Flat(kit.Model):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", 1.0)

    stopper = StopWhenFlat()
    trainer = kit.trainer(max_epochs=10, callbacks=[stopper])
    trainer.fit(Flat(), kit.loader(8), kit.loader(8))
    assert stopper.seen == [(0, 1.0), (1, 1.0)]
    assert (trainer.current_epoch, trainer.global_step) == (2, 8)


# --- training_step outputs, skipping, manual optimization ----------------------------------------------------------
def test_training_step_dict_extra_keys_reach_on_train_batch_end(kit) -> None:
    outputs = []

    class Extra(kit.Model):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx), "index": torch.tensor(float(batch_idx)),
                    "tag": "x"}

        def on_train_batch_end(self, out, batch, batch_idx):
            outputs.append(out)

    kit.trainer(max_epochs=1).fit(Extra(), kit.loader(6))
    assert [sorted(o) for o in outputs] == [["index", "loss", "tag"]] * 3
    assert [float(o["index"]) for o in outputs] == [0.0, 1.0, 2.0] and outputs[0]["tag"] == "x"
    assert not outputs[0]["loss"].requires_grad and outputs[0]["loss"].dim() == 0


def test_on_train_batch_start_minus_one_skips_the_rest_of_the_epoch(kit) -> None:
    ends = []

    class Skip(kit.Model):
        def on_train_batch_start(self, batch, batch_idx):
            if self.current_epoch == 0 and batch_idx == 3:
                return -1

        def on_train_epoch_end(self):
            ends.append((self.current_epoch, self.global_step))

    model = Skip()
    trainer = kit.trainer(max_epochs=2)
    trainer.fit(model, kit.loader(12))
    assert [(e, ids[0] // 2) for e, ids in model.seen] == [(0, 0), (0, 1), (0, 2)] + [(1, i) for i in range(6)]
    assert ends == [(0, 3), (1, 9)] and trainer.global_step == 9


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: two parts, two optimizers, each stepped once per batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)
        self.automatic_optimization = False
        self.steps: list[int] = []

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        x, y = batch
        loss_a = nn.functional.mse_loss(self.a(x), y)
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        loss_b = nn.functional.mse_loss(self.b(x), y)
        opt_b.zero_grad()
        self.manual_backward(loss_b)
        opt_b.step()
        self.steps.append(self.global_step)
        return {"loss_a": loss_a.detach()}

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.Adam(self.b.parameters(), lr=0.01)]


def test_manual_optimization_with_two_optimizers() -> None:
    loader = DataLoader(regression(12, seed=6), batch_size=2)
    model = TwoOptimizers()
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, loader)
    # global_step counts every optimizer step (Lightning issue #17958): 2 per batch
    assert trainer.global_step == 24 and model.steps == list(range(2, 25, 2))

    torch.manual_seed(0)
    a, b = nn.Linear(4, 1), nn.Linear(4, 1)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters(), lr=0.01)
    for _ in range(2):
        for x, y in loader:
            for layer, opt in ((a, opt_a), (b, opt_b)):
                loss = nn.functional.mse_loss(layer(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert same_weights(model.a, a) and same_weights(model.b, b)


def test_lbfgs_matches_a_hand_written_lbfgs_loop() -> None:
    class LBFGSNet(Net):
        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)

    loader = DataLoader(regression(16, seed=7), batch_size=4)
    torch.manual_seed(0)
    model = LBFGSNet()
    quiet_trainer(max_epochs=2).fit(model, loader)

    torch.manual_seed(0)
    ref = LBFGSNet()
    opt = ref.configure_optimizers()
    for _ in range(2):
        for i, batch in enumerate(loader):
            def closure(batch=batch, i=i):
                loss = ref.training_step(batch, i)
                opt.zero_grad()
                loss.backward()
                return loss.detach()

            opt.step(closure)
    assert len(model.losses) == len(ref.losses) > 8  # the closure ran several times per step
    assert torch.equal(torch.stack(model.losses), torch.stack(ref.losses))
    assert same_weights(model, ref)


def test_optimizer_step_override_for_lr_warmup() -> None:
    class Warmup(Net):
        def __init__(self):
            super().__init__(lr=0.1)
            self.lrs = []

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            scale = min(1.0, (self.trainer.global_step + 1) / 4)
            for group in optimizer.param_groups:
                group["lr"] = scale * self.lr
            self.lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step(closure=optimizer_closure)

    loader = DataLoader(regression(12, seed=8), batch_size=2)
    torch.manual_seed(0)
    model = Warmup()
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, loader)
    assert model.lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1]) and trainer.global_step == 6

    torch.manual_seed(0)
    ref = Warmup()
    opt = ref.configure_optimizers()
    for step, batch in enumerate(loader):
        for group in opt.param_groups:
            group["lr"] = min(1.0, (step + 1) / 4) * 0.1
        loss = ref.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert same_weights(model, ref)


# --- bit identity with a hand-written loop -----------------------------------------------------------------------
def _bit_identity(*, dropout: float = 0.0, shuffle: bool = False, val: bool = False, val_shuffle: bool = False,
                  sanity: int = 0, val_check_interval: float = 1.0, epochs: int = 3) -> None:
    """Fit and the hand loop from the same seed must give torch.equal weights, losses and val losses."""
    runs = []
    for use_trainer in (True, False):
        torch.manual_seed(1234)
        model = Net(dropout=dropout)
        train = DataLoader(regression(20, seed=9), batch_size=4, shuffle=shuffle)
        val_loader = DataLoader(regression(12, seed=10), batch_size=4, shuffle=val_shuffle) if val else None
        if use_trainer:
            trainer = quiet_trainer(max_epochs=epochs, num_sanity_val_steps=sanity,
                                    val_check_interval=val_check_interval)
            trainer.fit(model, train, val_loader)
            model.val_losses = model.val_losses[sanity:] if val else model.val_losses  # drop the sanity check's
        else:
            hand_loop(model, train, val_loader, epochs, val_check_interval)
        runs.append((model, torch.rand(3)))
    (fitted, rng_after_fit), (ref, rng_after_ref) = runs
    assert len(fitted.losses) == len(ref.losses) == 5 * epochs
    assert torch.equal(torch.stack(fitted.losses), torch.stack(ref.losses))
    assert len(fitted.val_losses) == len(ref.val_losses)
    assert all(torch.equal(a, b) for a, b in zip(fitted.val_losses, ref.val_losses))
    assert same_weights(fitted, ref)
    assert torch.equal(rng_after_fit, rng_after_ref)  # the global RNG was consumed exactly alike


def test_bit_identity_unshuffled() -> None:
    _bit_identity()


def test_bit_identity_shuffled_loader() -> None:
    _bit_identity(shuffle=True)


def test_bit_identity_dropout() -> None:
    _bit_identity(dropout=0.5, shuffle=True)


def test_bit_identity_with_sanity_check() -> None:
    # the sanity check draws from the RNG (shuffled val loader); the engine must isolate it
    _bit_identity(dropout=0.5, shuffle=True, val=True, val_shuffle=True, sanity=2)


@pytest.mark.parametrize("sanity", [2, 0])
def test_bit_identity_with_mid_epoch_validation(sanity) -> None:
    _bit_identity(dropout=0.5, shuffle=True, val=True, val_shuffle=True, sanity=sanity, val_check_interval=0.5)


def test_bit_identity_model_back_in_train_mode_after_validation() -> None:
    torch.manual_seed(0)
    model = Net(dropout=0.5)
    modes = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(all(m.training for m in pl_module.modules()))

    data = regression(8, seed=11)
    quiet_trainer(max_epochs=2, callbacks=[Watch()]).fit(model, DataLoader(data, batch_size=4),
                                                        DataLoader(data, batch_size=4))
    assert modes == [True] * 4 and model.training
    assert not math.isnan(float(model.losses[-1]))


def test_reduce_lr_on_plateau_on_a_real_validation_metric_equals_the_hand_loop() -> None:
    """Per epoch, on the mean validation loss: the same weights (torch.equal) and LRs as a raw loop."""

    class RealPlateau(Plateau):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": ReduceLROnPlateau(opt, patience=1, factor=0.3),
                                                       "monitor": "val_loss"}}

    train, val = regression(2 * BATCHES, seed=5), regression(10, seed=6)
    torch.manual_seed(0)
    model = RealPlateau()
    quiet_trainer(max_epochs=6, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False).fit(model, DataLoader(train, batch_size=2),
                                                 DataLoader(val, batch_size=5))
    torch.manual_seed(0)
    layer = nn.Linear(4, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    sched = ReduceLROnPlateau(opt, patience=1, factor=0.3)
    lrs = []
    for _ in range(6):
        for x, y in DataLoader(train, batch_size=2):
            loss = nn.functional.mse_loss(layer(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lrs.append(opt.param_groups[0]["lr"])
        with torch.no_grad():  # Lightning's epoch mean of the logged values, weighted by batch size
            losses = [nn.functional.mse_loss(layer(x), y) for x, y in DataLoader(val, batch_size=5)]
        sched.step(torch.stack(losses).mean())
    assert model.lrs == lrs and len(set(lrs)) > 1  # the LR was reduced at least once
    assert same_weights(model.layer, layer)
