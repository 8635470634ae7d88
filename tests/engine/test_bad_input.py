"""Bad input gives a clear error that names the culprit, before any work starts where that is possible.

Each case checks the exception type and, with `match=`, that the message names the flag / method / key at fault.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.errors import MisconfigurationException


class Steps:
    """Counts the training steps a run made, to show that an error came before the work."""

    calls = 0


def model_class(kit, ret: str = "loss", opt: str = "sgd", log: str | None = None):
    """A TinyModel whose training_step returns `ret`, configure_optimizers returns `opt`, and logs `log`."""

    class Model(kit.Model):
        def training_step(self, batch, batch_idx):
            Steps.calls += 1
            out = self(batch[0])
            loss = nn.functional.mse_loss(out, batch[1])
            if log == "vector":
                self.log("vec_metric", out)
            elif log == "dict":
                self.log("dict_metric", {"a": loss})
            elif log == "string":
                self.log("str_metric", "high")
            return {"loss": loss, "str": "hello", "dict": {"los": loss}, "vector": out,
                    "detached": loss.detach(), "item": loss.item()}.get(ret, loss)

        def configure_optimizers(self):
            sgd = torch.optim.SGD(self.parameters(), lr=0.1)
            if opt == "str":
                return "adam"
            if opt == "ints":
                return [1, 2]
            if opt == "orphan_scheduler":
                other = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
                return [sgd], [torch.optim.lr_scheduler.StepLR(other, step_size=1)]
            if opt == "scheduler_without_optimizer":
                return {"lr_scheduler": torch.optim.lr_scheduler.StepLR(sgd, step_size=1)}
            return sgd

    return Model


@pytest.fixture(autouse=True)
def _reset_steps():
    Steps.calls = 0


# --- Trainer flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "suggestion"), [("max_epoch", "max_epochs"), ("limit_val_batch", "limit_val_batches"),
                                                  ("check_val_every_n_epochs", "check_val_every_n_epoch"),
                                                  ("acelerator", "accelerator")])
def test_misspelt_flag_suggests_the_right_one(flag, suggestion) -> None:
    # Lightning raises TypeError (an unexpected keyword argument); `except TypeError` must keep working
    with pytest.raises(TypeError, match=rf"unknown flag '{flag}'; did you mean '{suggestion}'\?") as info:
        pl.Trainer(**{flag: 3})
    assert isinstance(info.value, MisconfigurationException)


@pytest.mark.parametrize(("flag", "value"), [
    ("max_epochs", -2), ("max_steps", -5), ("min_epochs", -1), ("min_steps", -1),
    ("limit_train_batches", 1.5), ("limit_val_batches", -1), ("limit_test_batches", -0.5),
    ("limit_predict_batches", 2.5), ("overfit_batches", 1.5), ("val_check_interval", 0), ("val_check_interval", 1.5),
    ("check_val_every_n_epoch", 0), ("num_sanity_val_steps", -2), ("log_every_n_steps", -1),
    ("reload_dataloaders_every_n_epochs", -1), ("devices", 0), ("accelerator", "tpu2"), ("fast_dev_run", -1),
    ("gradient_clip_algorithm", "l2"),
])
def test_out_of_range_flag_values(flag, value) -> None:
    with pytest.raises(MisconfigurationException, match=rf"Trainer\({flag}={value!r}\): {flag} must be"):
        pl.Trainer(**{flag: value})


@pytest.mark.parametrize(("flag", "value"), [
    ("max_epochs", "3"), ("max_steps", 2.5), ("limit_train_batches", "all"), ("num_sanity_val_steps", 1.0),
    ("inference_mode", "yes"), ("detect_anomaly", 1), ("deterministic", 1.5), ("callbacks", 3),
    ("default_root_dir", 42), ("enable_model_summary", "no"), ("reload_dataloaders_every_n_epochs", True),
])
def test_wrongly_typed_flag_values(flag, value) -> None:
    with pytest.raises(TypeError, match=rf"Trainer\({flag}={value!r}\): {flag} must be") as info:
        pl.Trainer(**{flag: value})
    assert isinstance(info.value, MisconfigurationException)  # catchable as either


def test_float_val_check_interval_needs_check_val_every_n_epoch() -> None:
    with pytest.raises(MisconfigurationException, match=r"check_val_every_n_epoch=None, val_check_interval=0.5"):
        pl.Trainer(check_val_every_n_epoch=None, val_check_interval=0.5)


# --- what training_step returns ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("ret", "match"), [
    ("str", r"training_step returned str \('hello'\)"),
    ("item", r"training_step returned float"),
    ("dict", r"training_step returned a dict without the key 'loss' \(keys: \['los'\]\)"),
    ("vector", r"training_step returned a loss of shape \(2, 1\).*scalar"),
    ("detached", r"training_step returned a loss that does not require grad"),
])
def test_unusable_training_step_output(kit, ret, match) -> None:
    model = model_class(kit, ret=ret)()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MisconfigurationException, match=match):
        kit.trainer(max_epochs=1).fit(model, kit.loader(8))
    assert Steps.calls == 1  # found at the first batch
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing was stepped


# --- what configure_optimizers returns ---------------------------------------------------------------------------
@pytest.mark.parametrize(("opt", "exc", "match"), [
    ("str", MisconfigurationException, r"`configure_optimizers` returned an unsupported value of type str: 'adam'"),
    ("ints", MisconfigurationException, r"`configure_optimizers` returned an unsupported value of type list: \[1, 2\]"),
    ("orphan_scheduler", MisconfigurationException, r"scheduler `StepLR` belongs to no optimizer returned by "
                                                    r"configure_optimizers"),
    ("scheduler_without_optimizer", MisconfigurationException, r"dict with no 'optimizer' key"),
])
def test_unusable_configure_optimizers_output(kit, opt, exc, match) -> None:
    with pytest.raises(exc, match=match):
        kit.trainer(max_epochs=1).fit(model_class(kit, opt=opt)(), kit.loader(8))
    assert Steps.calls == 0  # before the first batch


# --- data --------------------------------------------------------------------------------------------------------
def _empty_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(0, 4), torch.randn(0, 1)), batch_size=2)


def test_empty_train_dataloader(kit) -> None:
    with pytest.raises(MisconfigurationException, match=r"the train dataloader has length 0 \(dataset of 0 samples"):
        kit.trainer(max_epochs=1).fit(model_class(kit)(), _empty_loader())
    assert Steps.calls == 0


def test_empty_train_dataloader_after_drop_last(kit) -> None:
    loader = DataLoader(kit.dataset(3), batch_size=4, drop_last=True)
    with pytest.raises(MisconfigurationException, match=r"train dataloader has length 0.*batch_size=4, drop_last=True"):
        kit.trainer(max_epochs=1).fit(model_class(kit)(), loader)


def test_empty_val_dataloader(kit) -> None:
    # Lightning (issue #11): warn at the sanity check and skip validation; training runs in full
    with pytest.warns(UserWarning, match=r"Total length of `DataLoader` across ranks is zero"):
        kit.trainer(max_epochs=1).fit(model_class(kit)(), kit.loader(8), _empty_loader())
    assert Steps.calls == 4


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_empty_eval_dataloader(kit, stage) -> None:
    # Lightning (issue #11): warn and skip the loop; validate/test return [], predict None
    with pytest.warns(UserWarning, match=r"Total length of `DataLoader` across ranks is zero.*dataset of 0 samples"):
        out = getattr(kit.trainer(), stage)(kit.Model(), _empty_loader())
    assert out == (None if stage == "predict" else [])


def test_datamodule_and_dataloaders_together(kit) -> None:
    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return kit.loader(8)

    trainer = kit.trainer(max_epochs=1)
    with pytest.raises(MisconfigurationException, match=r"trainer.fit: pass either dataloaders or datamodule"):
        trainer.fit(model_class(kit)(), kit.loader(8), datamodule=Data())
    with pytest.raises(MisconfigurationException, match=r"trainer.fit: pass either dataloaders or datamodule"):
        trainer.fit(model_class(kit)(), val_dataloaders=kit.loader(8), datamodule=Data())
    with pytest.raises(MisconfigurationException, match=r"trainer.validate: pass either dataloaders or datamodule"):
        trainer.validate(kit.Model(), kit.loader(8), datamodule=Data())
    assert Steps.calls == 0


def test_no_training_data_at_all(kit) -> None:
    with pytest.raises(MisconfigurationException, match=r"trainer.fit: no training data"):
        kit.trainer(max_epochs=1).fit(kit.Model())


# --- the model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["fit", "validate", "test", "predict"])
def test_plain_nn_module_is_rejected(kit, fn) -> None:
    with pytest.raises(TypeError, match=rf"trainer.{fn}: `model` must be a LightningModule.*torch.nn.modules.linear"
                                        r".Linear"):
        getattr(kit.trainer(max_epochs=1), fn)(nn.Linear(4, 1), kit.loader(8))


def test_fit_without_training_step(kit) -> None:
    class NoStep(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(MisconfigurationException, match=r"NoStep has no training_step"):
        kit.trainer(max_epochs=1).fit(NoStep(), kit.loader(8))


def test_fit_without_configure_optimizers(kit) -> None:
    class NoOptim(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            Steps.calls += 1
            return self.layer(batch[0]).sum()

    with pytest.raises(MisconfigurationException, match=r"NoOptim has no configure_optimizers"):
        kit.trainer(max_epochs=1).fit(NoOptim(), kit.loader(8))
    assert Steps.calls == 0


@pytest.mark.parametrize(("fn", "step"), [("test", "test_step"), ("validate", "validation_step")])
def test_eval_without_its_step(kit, fn, step) -> None:
    class OnlyTrain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

    with pytest.raises(MisconfigurationException, match=rf"trainer.{fn}\(\) needs OnlyTrain.{step}"):
        getattr(kit.trainer(), fn)(OnlyTrain(), kit.loader(8))


# --- self.log ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", ["on_fit_start", "on_fit_end", "on_train_end", "on_validation_end", "setup",
                                  "configure_optimizers"])
def test_self_log_from_a_hook_that_may_not_log(kit, hook) -> None:
    # Lightning: MisconfigurationException "You can't `self.log()` inside `<hook>`"
    def logging_hook(self, *args, **kwargs):
        self.log("x", 1.0)
        if hook == "configure_optimizers":
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = type("Model", (kit.Model,), {hook: logging_hook})()
    with pytest.raises(MisconfigurationException, match=rf"self.log\('x', ...\).*'{hook}'"):
        kit.trainer(max_epochs=1).fit(model, kit.loader(4), kit.loader(4))


def test_self_log_from_a_callback_hook_that_may_not_log(kit) -> None:
    class LogAtSanity(pl.Callback):
        def on_sanity_check_start(self, trainer, pl_module):
            pl_module.log("x", 1.0)

    with pytest.raises(MisconfigurationException, match=r"self.log\('x', ...\).*'on_sanity_check_start'"):
        kit.trainer(max_epochs=1, callbacks=[LogAtSanity()]).fit(kit.Model(), kit.loader(4), kit.loader(4))


@pytest.mark.parametrize(("log", "match"), [
    ("vector", r"self.log\('vec_metric', value\) got a tensor of shape \(2, 1\)"),
    ("dict", r"self.log\('dict_metric', value\) got a dict.*self.log_dict"),
    ("string", r"self.log\('str_metric', value\) got a value of type str"),
])
def test_self_log_of_an_unloggable_value(kit, log, match) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        kit.trainer(max_epochs=1).fit(model_class(kit, log=log)(), kit.loader(8))
    assert Steps.calls == 1


def test_self_log_outside_the_trainer_warns_and_drops(kit) -> None:
    model = kit.Model()
    with pytest.warns(UserWarning, match=r"self.log\('x', ...\).*not attached to a Trainer"):
        model.log("x", 1.0)


# --- exceptions raised by user code ------------------------------------------------------------------------------
class _Boom(KeyError):
    pass


def test_exception_in_training_step_propagates_after_on_exception(kit) -> None:
    raised = _Boom("boom at batch 2")
    seen = []

    class Model(kit.Model):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise raised
            return super().training_step(batch, batch_idx)

    class Watch(pl.Callback):
        def on_exception(self, trainer, pl_module, exception):
            seen.append((exception, trainer.state.status, trainer.global_step))

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return kit.loader(10)

        def on_exception(self, exception):
            seen.append(("datamodule", exception))

    trainer = kit.trainer(max_epochs=1, callbacks=[Watch()])
    with pytest.raises(_Boom) as info:
        trainer.fit(Model(), datamodule=Data())
    assert info.value is raised  # the same object, not wrapped
    assert seen == [(raised, "interrupted", 2), ("datamodule", raised)]
    assert trainer.state.status == "interrupted" and trainer.interrupted is True


def test_exception_in_validation_step_propagates(kit) -> None:
    class Model(kit.Model):
        def validation_step(self, batch, batch_idx):
            raise ZeroDivisionError("val failed")

    trainer = kit.trainer(max_epochs=1)
    with pytest.raises(ZeroDivisionError, match="val failed"):
        trainer.fit(Model(), kit.loader(8), kit.loader(4))
    assert trainer.state.status == "interrupted"
    assert trainer.global_step == 0  # during the sanity check, before training
