"""trainer.validate / test / predict end to end: return values, several dataloaders, printing, model reuse, modes.

Expected values were recorded from Lightning 2.6.6 running the same models.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl

A = DataLoader(TensorDataset(torch.arange(4.0).unsqueeze(1)), batch_size=2)  # batch means 0.5, 2.5 -> 1.5
B = DataLoader(TensorDataset(torch.arange(10.0, 16.0).unsqueeze(1)), batch_size=2)  # 10.5, 12.5, 14.5 -> 12.5


class Eval(pl.LightningModule):
    """Logs the batch mean of x; records (step, batch_idx, dataloader_idx) of every step and batch hook."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.calls: list[tuple] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("validation_step", batch_idx, dataloader_idx))
        self.log("v", batch[0].mean())

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("test_step", batch_idx, dataloader_idx))
        self.log("t", batch[0].mean())

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("predict_step", batch_idx, dataloader_idx))
        return batch[0] * 2

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("on_validation_batch_start", batch_idx, dataloader_idx))

    def on_test_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("on_test_batch_end", batch_idx, dataloader_idx))

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("on_predict_batch_end", batch_idx, dataloader_idx))

    def on_test_epoch_end(self):
        self.log("t_epoch_hook", 5.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CallbackIdx(pl.Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("validation", batch_idx, dataloader_idx))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("test", batch_idx, dataloader_idx))

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.calls.append(("predict", batch_idx, dataloader_idx))


def trainer(**flags) -> pl.Trainer:
    return pl.Trainer(enable_model_summary=False, enable_progress_bar=False, **flags)


# --- return values -----------------------------------------------------------------------------------------------
def test_validate_returns_one_dict_of_floats() -> None:
    results = trainer().validate(Eval(), A, verbose=False)
    assert results == [{"v": 1.5}]
    assert type(results[0]["v"]) is float


def test_test_returns_one_dict_of_floats_including_epoch_hook_values() -> None:
    results = trainer().test(Eval(), B, verbose=False)
    assert results == [{"t": 12.5, "t_epoch_hook": 5.0}]
    assert all(type(v) is float for v in results[0].values())


def test_validate_with_two_dataloaders() -> None:
    model, cb = Eval(), CallbackIdx()
    results = trainer(callbacks=[cb]).validate(model, [A, B], verbose=False)
    assert results == [{"v/dataloader_idx_0": 1.5}, {"v/dataloader_idx_1": 12.5}]
    steps = [c for c in model.calls if c[0] == "validation_step"]
    assert steps == [("validation_step", 0, 0), ("validation_step", 1, 0),
                     ("validation_step", 0, 1), ("validation_step", 1, 1), ("validation_step", 2, 1)]
    starts = [c[1:] for c in model.calls if c[0] == "on_validation_batch_start"]
    assert starts == [c[1:] for c in steps]
    assert cb.calls == [("validation",) + c[1:] for c in steps]


def test_test_with_two_dataloaders() -> None:
    model, cb = Eval(), CallbackIdx()
    results = trainer(callbacks=[cb]).test(model, [A, B], verbose=False)
    # a value logged once per epoch is not per dataloader: it appears, unsuffixed, in every dict
    assert results == [{"t/dataloader_idx_0": 1.5, "t_epoch_hook": 5.0},
                       {"t/dataloader_idx_1": 12.5, "t_epoch_hook": 5.0}]
    ends = [c[1:] for c in model.calls if c[0] == "on_test_batch_end"]
    assert ends == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]
    assert [c[1:] for c in cb.calls] == ends


def test_single_dataloader_steps_need_no_dataloader_idx() -> None:
    class NoIdx(Eval):
        def validation_step(self, batch, batch_idx):
            self.log("v", batch[0].mean())

    assert trainer().validate(NoIdx(), A, verbose=False) == [{"v": 1.5}]


def test_dataloaders_given_as_a_dict_keep_their_order() -> None:
    results = trainer().validate(Eval(), {"small": A, "large": B}, verbose=False)
    assert results == [{"v/dataloader_idx_0": 1.5}, {"v/dataloader_idx_1": 12.5}]


@pytest.mark.parametrize("fn", ["validate", "test"])
def test_verbose_prints_the_metrics(capsys, fn) -> None:
    key = "v" if fn == "validate" else "t"
    getattr(trainer(), fn)(Eval(), [A, B], verbose=True)
    out = capsys.readouterr().out
    assert key in out and "1.5" in out and "12.5" in out
    assert "DataLoader 0" in out and "DataLoader 1" in out
    getattr(trainer(), fn)(Eval(), A, verbose=False)
    assert capsys.readouterr().out == ""


def test_predict_returns_the_predictions() -> None:
    model, cb = Eval(), CallbackIdx()
    predictions = trainer(callbacks=[cb]).predict(model, A)
    assert [p.flatten().tolist() for p in predictions] == [[0.0, 2.0], [4.0, 6.0]]
    assert cb.calls == [("predict", 0, 0), ("predict", 1, 0)]


def test_predict_with_two_dataloaders_returns_a_list_per_dataloader() -> None:
    model = Eval()
    predictions = trainer().predict(model, [A, B])
    assert [[p.flatten().tolist() for p in per_loader] for per_loader in predictions] == [
        [[0.0, 2.0], [4.0, 6.0]], [[20.0, 22.0], [24.0, 26.0], [28.0, 30.0]]]
    assert [c[1:] for c in model.calls if c[0] == "predict_step"] == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]
    assert [c[1:] for c in model.calls if c[0] == "on_predict_batch_end"] == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]


def test_predict_without_returning_predictions() -> None:
    model = Eval()
    assert trainer().predict(model, A, return_predictions=False) is None
    assert len([c for c in model.calls if c[0] == "predict_step"]) == 2  # it still ran


def test_default_predict_step_calls_forward() -> None:
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def forward(self, x):
            return self.layer(x)

    model = Plain()
    x = torch.randn(6, 4)
    predictions = trainer().predict(model, DataLoader(x, batch_size=3))
    assert torch.equal(torch.cat(predictions), model.layer(x).detach())


# --- after fit, data sources, modes ------------------------------------------------------------------------------
def test_validate_test_predict_after_fit_reuse_the_fitted_model(kit) -> None:
    class Model(kit.Model):
        def val_dataloader(self):
            return kit.loader(6, seed=1)

        def test_dataloader(self):
            return kit.loader(6, seed=2)

        def predict_dataloader(self):
            return kit.loader(6, seed=3)

    model = Model()
    t = kit.trainer(max_epochs=2)
    t.fit(model, kit.loader(10))
    weights = [p.detach().clone() for p in model.parameters()]
    val = t.validate(verbose=False)
    test = t.test(verbose=False)
    predictions = t.predict()
    assert t.lightning_module is model
    x, y, _ = kit.dataset(6, seed=1).tensors
    with torch.no_grad():
        assert val[0]["val_loss"] == pytest.approx(nn.functional.mse_loss(model(x), y).item(), rel=1e-6)
    x3 = kit.dataset(6, seed=3).tensors[0]
    assert torch.equal(torch.cat(predictions), model(x3).detach())
    assert list(test[0]) == ["test_loss"]
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))  # evaluation changed nothing
    assert (t.current_epoch, t.global_step) == (2, 10)


def test_evaluation_without_a_model_before_fit_is_an_error(kit) -> None:
    with pytest.raises(pl.MisconfigurationException, match=r"trainer.test\(\) needs a model"):
        kit.trainer().test(dataloaders=kit.loader(4))


def test_validate_with_a_datamodule(kit) -> None:
    class Data(pl.LightningDataModule):
        def val_dataloader(self):
            return A

    assert trainer().validate(Eval(), datamodule=Data(), verbose=False) == [{"v": 1.5}]


@pytest.mark.parametrize("inference", [True, False])
def test_predict_runs_under_inference_mode(inference) -> None:
    seen = []

    class Probe(Eval):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), self.training))
            return self.layer(batch[0])

    predictions = trainer(inference_mode=inference).predict(Probe(), A)
    assert seen == [(inference, False, False)] * 2
    assert all(p.is_inference() is inference and not p.requires_grad for p in predictions)


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_model_modes_are_restored_after_evaluation(fn) -> None:
    class WithNorm(Eval):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(1)
            self.frozen = nn.Dropout(0.5)
            self.frozen.eval()  # the user keeps this one in eval mode

    model = WithNorm()
    running_mean = model.norm.running_mean.clone()
    getattr(trainer(), fn)(model, A, **({} if fn == "predict" else {"verbose": False}))
    assert model.training and model.norm.training and model.layer.training
    assert model.frozen.training is False
    assert torch.equal(model.norm.running_mean, running_mean)


@pytest.mark.parametrize("fn", ["validate", "test"])
def test_model_in_eval_mode_stays_in_eval_mode(fn) -> None:
    model = Eval()
    model.eval()
    getattr(trainer(), fn)(model, A, verbose=False)
    assert model.training is False


def test_evaluation_leaves_counters_and_status_right(kit) -> None:
    t = trainer()
    t.validate(Eval(), A, verbose=False)
    assert t.state.status == "finished" and t.state.fn == "validate" and t.state.stage is None
    assert (t.current_epoch, t.global_step) == (0, 0)
    assert t.num_val_batches == [2]
    t.test(Eval(), [A, B], verbose=False)
    assert t.num_test_batches == [2, 3] and t.state.fn == "test"
    t.predict(Eval(), [A, B])
    assert t.num_predict_batches == [2, 3] and t.state.fn == "predict"
