"""LightningModule surface: properties, optimisation helpers, export, and the trainer link."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.errors import MisconfigurationException


class TwoOpt(pl.LightningModule):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.a = nn.Linear(3, hidden)
        self.b = nn.Linear(hidden, 1)
        self.automatic_optimization = False
        self.seen: dict = {}

    def forward(self, x):
        return self.b(self.a(x))

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        sched = self.lr_schedulers()
        x, y = batch
        with self.toggled_optimizer(opt_a):
            self.seen["b_frozen"] = not any(p.requires_grad for p in self.b.parameters())
            loss = nn.functional.mse_loss(self(x), y)
            opt_a.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt_a, gradient_clip_val=0.01, gradient_clip_algorithm="value")
            self.seen["max_grad"] = max(p.grad.abs().max().item() for p in self.a.parameters())
            opt_a.step()
        self.seen["b_restored"] = all(p.requires_grad for p in self.b.parameters())
        loss_b = nn.functional.mse_loss(self(x), y)
        opt_b.zero_grad()
        self.manual_backward(loss_b)
        opt_b.step()
        sched.step()
        self.seen["sched"] = sched
        return loss_b

    def configure_optimizers(self):
        opt_a = torch.optim.SGD(self.a.parameters(), lr=0.1)
        opt_b = torch.optim.SGD(self.b.parameters(), lr=0.1)
        return [opt_a, opt_b], [torch.optim.lr_scheduler.StepLR(opt_b, step_size=1)]


def _data(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), batch_size=4)


def test_manual_optimization_helpers_and_global_step() -> None:
    model = TwoOpt(hidden=5)
    trainer = pl.Trainer(max_epochs=1, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, _data())
    assert model.seen["b_frozen"] and model.seen["b_restored"]
    assert model.seen["max_grad"] <= 0.01 + 1e-8
    assert isinstance(model.seen["sched"], torch.optim.lr_scheduler.StepLR)
    assert trainer.global_step == 4  # two optimizers stepped on each of 2 batches, as Lightning counts
    assert model.hparams.hidden == 5 and model.hparams_initial == {"hidden": 5}
    assert model.trainer is trainer and model.current_epoch == 1 and model.global_step == 4
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


def test_manual_backward_under_automatic_optimization_is_an_error() -> None:
    class Bad(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            loss = self.l(batch[0]).sum()
            self.manual_backward(loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(MisconfigurationException, match="manual_backward"):
        pl.Trainer(max_epochs=1, enable_model_summary=False).fit(Bad(), _data())


def test_unattached_module_trainer_and_log() -> None:
    model = TwoOpt()
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        _ = model.trainer
    with pytest.warns(UserWarning, match="not attached"):
        model.log("x", 1.0)
    assert model.current_epoch == 0 and model.global_step == 0 and model.global_rank == 0


def test_freeze_unfreeze_all_gather_print(capsys: pytest.CaptureFixture) -> None:
    model = TwoOpt()
    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())
    gathered = model.all_gather({"a": torch.tensor(2.0), "b": [torch.ones(3)]})
    assert gathered["a"].shape == (1,) and gathered["b"][0].shape == (1, 3)
    model.print("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"


def test_clip_gradients_conflicts_and_validation() -> None:
    model = TwoOpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(MisconfigurationException, match="gradient_clip_algorithm='bad'"):
        model.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="bad")
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    model.clip_gradients(opt, gradient_clip_val=1.0)  # norm clipping
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-4)


def test_to_torchscript_roundtrip(tmp_path) -> None:
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(3, 2)

        def forward(self, x):
            return self.l(x)

    model = Plain()
    x = torch.randn(4, 3)
    traced = model.to_torchscript(file_path=str(tmp_path / "m.pt"), method="trace", example_inputs=x)
    assert torch.allclose(traced(x), model(x))
    assert torch.allclose(torch.jit.load(str(tmp_path / "m.pt"))(x), model(x))
    assert model.training  # mode restored


def test_default_predict_step_calls_forward() -> None:
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(3, 2)

        def forward(self, x):
            return self.l(x)

    model = Plain()
    x = torch.randn(5, 3)
    preds = pl.Trainer(enable_model_summary=False).predict(model, DataLoader(x, batch_size=5))
    assert len(preds) == 1 and torch.allclose(preds[0], model(x))
