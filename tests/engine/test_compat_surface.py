"""Issue #11 (part A): the Lightning surface a ported program trips on, item by item.

Module, datamodule and Trainer surface; empty eval data; training steps that return None; calling fit again. Each
test runs a tiny real model on the CPU and checks Lightning 2.6's behaviour (read from its source), not statetrain's
old one.
"""

from __future__ import annotations

import os
import pickle
import signal
import warnings
from typing import Any
from unittest import mock

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.errors import MisconfigurationException


def _empty_loader(drop_last: bool = False, n: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 4), torch.randn(n, 1)), batch_size=4, drop_last=drop_last)


def _quiet(kit, **flags: Any) -> pl.Trainer:
    for flag, value in (("max_epochs", 1), ("enable_progress_bar", False), ("enable_checkpointing", False),
                        ("logger", False)):
        flags.setdefault(flag, value)
    return kit.trainer(**flags)


# --- `validation_step = None` (and the others) turn their loop off ---------------------------------------------------
@pytest.mark.parametrize("on", ["instance", "class"])
def test_validation_step_none_turns_validation_off(kit, on) -> None:
    class NoVal(kit.Model):
        pass

    model = NoVal()
    if on == "class":
        NoVal.validation_step = None
    else:
        model.validation_step = None
    rec = kit.Recorder()
    with pytest.warns(UserWarning, match=r"You passed in a `val_dataloader` but have no `validation_step`\. "
                                         r"Skipping val loop\."):
        _quiet(kit, callbacks=[rec]).fit(model, kit.loader(8), kit.loader(4))
    assert rec.count("validation_start") == 0 and rec.count("sanity_start") == 0
    assert len(model.seen) == 4  # training ran in full
    with pytest.raises(MisconfigurationException, match=r"validate\(\) needs NoVal\.validation_step"):
        _quiet(kit).validate(model, kit.loader(4))


def test_dataloader_hook_none_and_step_none(kit) -> None:
    class WithHooks(kit.Model):
        def val_dataloader(self):
            return kit.loader(4)

    model = WithHooks()
    model.val_dataloader = None  # no validation data: the loop is off, without a warning
    rec = kit.Recorder()
    _quiet(kit, callbacks=[rec]).fit(model, kit.loader(8))
    assert rec.count("validation_start") == 0
    model.test_step = None
    with pytest.raises(MisconfigurationException, match=r"test\(\) needs WithHooks\.test_step"):
        _quiet(kit).test(model, kit.loader(4))
    model.predict_step = None
    with pytest.raises(MisconfigurationException, match=r"`predict_step` cannot be None to run `Trainer\.predict`"):
        _quiet(kit).predict(model, kit.loader(4))


# --- TrainerFn / RunningStage ---------------------------------------------------------------------------------------
def test_stage_enums_importable_and_equal_to_strings(kit) -> None:
    from engine.state import RunningStage as RS
    from engine.state import TrainerFn as TF
    from engine.trainer.states import RunningStage, TrainerFn, TrainerStatus

    assert TrainerFn is TF and RunningStage is RS and pl.trainer.states.TrainerFn is TrainerFn
    assert "fit" == TrainerFn.FITTING and TrainerFn.FITTING == "FIT" and TrainerFn("fit") is TrainerFn.FITTING
    assert {"fit": 1}[TrainerFn.FITTING] == 1 and f"{TrainerFn.TESTING}" == "test"
    assert [s.value for s in RunningStage] == ["train", "sanity_check", "validate", "test", "predict"]
    assert RunningStage.VALIDATING.evaluating and RunningStage.SANITY_CHECKING.dataloader_prefix == "val"
    assert TrainerStatus.FINISHED.stopped and pickle.loads(pickle.dumps(TrainerFn.FITTING)) == "fit"
    assert TrainerFn.from_str("FITTING") is TrainerFn.FITTING and TrainerFn.from_str("nope") is None

    seen: list[tuple[str, Any, Any, Any]] = []

    class Stages(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            seen.append(("setup", stage, trainer.state.fn, trainer.state.stage))

        def on_sanity_check_start(self, trainer, pl_module):
            seen.append(("sanity", None, trainer.state.fn, trainer.state.stage))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                seen.append(("train", None, trainer.state.fn, trainer.state.stage))

        def on_validation_start(self, trainer, pl_module):
            seen.append(("val", None, trainer.state.fn, trainer.state.stage))

        def teardown(self, trainer, pl_module, stage):
            seen.append(("teardown", stage, trainer.state.fn, trainer.state.stage))

    class Data(pl.LightningDataModule):
        def setup(self, stage):
            seen.append(("dm.setup", stage, None, None))

        def train_dataloader(self):
            return kit.loader(4)

        def val_dataloader(self):
            return kit.loader(2)

    trainer = _quiet(kit, callbacks=[Stages()], num_sanity_val_steps=1)
    trainer.fit(kit.Model(), datamodule=Data())
    assert [s[0] for s in seen] == ["dm.setup", "setup", "sanity", "val", "train", "val", "teardown"]
    assert all(type(s[1]) is TrainerFn for s in seen if s[1] is not None)
    assert all(s[1] == "fit" for s in seen if s[1] is not None) and seen[1][1] is TrainerFn.FITTING
    assert all(s[2] is TrainerFn.FITTING for s in seen[1:])
    assert [s[3] for s in seen[1:]] == [RunningStage.TRAINING, RunningStage.SANITY_CHECKING,
                                         RunningStage.SANITY_CHECKING, RunningStage.TRAINING,
                                         RunningStage.VALIDATING, RunningStage.TRAINING]
    assert type(trainer.state.status) is TrainerStatus and trainer.state.status == "finished"
    assert trainer.state.finished and trainer.state.stopped
    trainer.test(kit.Model(), kit.loader(2), verbose=False)
    assert trainer.state.fn is TrainerFn.TESTING and trainer.state.fn == "test"


# --- self.optimizers() ----------------------------------------------------------------------------------------------
def test_optimizers_wrapper_is_an_instance_of_the_user_optimizer(kit) -> None:
    from engine.optim import LightningOptimizer

    seen: list[Any] = []

    class Manual(kit.Model):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            seen.append(opt)
            opt.zero_grad()
            self.manual_backward(self._loss(batch))
            opt.step()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    model = Manual()
    trainer = _quiet(kit)
    trainer.fit(model, kit.loader(4))
    opt = seen[0]
    assert isinstance(opt, torch.optim.Adam) and isinstance(opt, torch.optim.Optimizer)
    assert isinstance(opt, LightningOptimizer) and opt.optimizer is trainer.optimizers[0]
    assert opt.param_groups is trainer.optimizers[0].param_groups and trainer.global_step == 2
    assert type(opt).__name__ == "LightningAdam" and type(LightningOptimizer(opt.optimizer)) is type(opt)
    assert isinstance(pickle.loads(pickle.dumps(LightningOptimizer(opt.optimizer))), torch.optim.Adam)


# --- Trainer properties with Lightning's values --------------------------------------------------------------------
def test_trainer_properties_have_lightning_values(kit, tmp_path) -> None:
    from hooks.progress import TQDMProgressBar

    trainer = kit.trainer(max_epochs=1, default_root_dir=tmp_path)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    assert trainer.num_val_batches == [] and trainer.num_test_batches == [] and trainer.num_predict_batches == []
    assert trainer.val_dataloaders is None and trainer.test_dataloaders is None and trainer.predict_dataloaders is None
    assert trainer.ckpt_path is None and trainer.lr_scheduler_configs == [] and len(trainer.loggers) == 1
    assert trainer.state.status == "initializing" and trainer.state.fn is None and trainer.state.stage is None
    assert trainer.checkpoint_callback is trainer.checkpoint_callbacks[0]
    assert trainer.early_stopping_callback is None and trainer.early_stopping_callbacks == []
    assert kit.trainer(enable_progress_bar=False).progress_bar_callback is None

    class Scheduled(kit.Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    val, test = kit.loader(6), kit.loader(4)
    trainer.fit(Scheduled(), kit.loader(8), val)
    assert trainer.num_val_batches == [3] and trainer.val_dataloaders is val
    assert [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs] == ["StepLR"]
    trainer.test(dataloaders=test, ckpt_path="best", verbose=False)
    assert trainer.num_test_batches == [2] and trainer.test_dataloaders is test
    trainer.predict(kit.Model(), kit.loader(2))
    assert trainer.num_predict_batches == [1]
    trainer.validate(kit.Model(), val, ckpt_path=trainer.checkpoint_callback.best_model_path, verbose=False)
    assert trainer.ckpt_path == trainer.checkpoint_callback.best_model_path


# --- LightningDataModule.from_datasets and str --------------------------------------------------------------------
def test_datamodule_from_datasets_trains_and_prints_like_lightning(kit) -> None:
    train, val = kit.dataset(64), kit.dataset(16)
    dm = pl.LightningDataModule.from_datasets(train_dataset=train, val_dataset=[val, val], batch_size=8,
                                              num_workers=0)
    assert str(dm) == os.linesep.join(["{Train dataloader: size=64}",
                                       "{Validation dataloader: 1. size=16 ; 2. size=16}",
                                       "{Test dataloader: None}", "{Predict dataloader: None}"])
    assert repr(dm).startswith("<engine.datamodule.LightningDataModule object at")  # Lightning keeps object's repr
    loader = dm.train_dataloader()
    assert loader.batch_size == 8 and loader.num_workers == 0 and len(loader) == 8
    model = kit.Model()
    rec = kit.Recorder()
    dm = pl.LightningDataModule.from_datasets(train_dataset=train, val_dataset=val, batch_size=8)
    _quiet(kit, callbacks=[rec], limit_train_batches=2, num_sanity_val_steps=0).fit(model, datamodule=dm)
    assert len(model.seen) == 2 and rec.count("val_start") == 1  # its val loaders were used
    assert str(pl.LightningDataModule()).count("None") == 4


# --- self.log without a Trainer ---------------------------------------------------------------------------------------
def test_log_on_unattached_module_warns_once(kit) -> None:
    model = kit.Model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.log("x", 1.0)
        model.log("x", 2.0)
        model.log_dict({"y": 1.0})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "`self.trainer` reference is not registered" in messages[0]
    assert caught[0].filename == __file__  # points at the user's line


# --- schedulers -------------------------------------------------------------------------------------------------
class _Custom:
    """A scheduler that is not a torch LRScheduler (it has the optimizer and the state methods)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.steps = optimizer, 0

    def step(self, *args: Any) -> None:
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def test_custom_scheduler_needs_lr_scheduler_step(kit) -> None:
    class Custom(kit.Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [_Custom(opt)]

    with pytest.raises(MisconfigurationException, match=r"The provided lr scheduler `_Custom` doesn't follow "
                                                        r"PyTorch's LRScheduler API\. You should override the "
                                                        r"`LightningModule\.lr_scheduler_step` hook"):
        _quiet(kit).fit(Custom(), kit.loader(4))

    class Stepped(Custom):
        def lr_scheduler_step(self, scheduler, metric):
            scheduler.step()

    model = Stepped()
    trainer = _quiet(kit, max_epochs=2)
    trainer.fit(model, kit.loader(4))
    assert trainer.lr_scheduler_configs[0].scheduler.steps == 2

    class ManualCustom(Custom):  # manual optimization: the user steps it, Lightning does not check
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self._loss(batch))
            opt.step()
            self.lr_schedulers().step()

    trainer = _quiet(kit)
    trainer.fit(ManualCustom(), kit.loader(4))
    assert trainer.lr_scheduler_configs[0].scheduler.steps == 2
    assert trainer.lr_scheduler_configs[0].opt_idx is None


def test_plateau_not_strict_warns_and_skips(kit) -> None:
    class Plateau(kit.Model):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "missing", "strict": False}}

    trainer = _quiet(kit, max_epochs=2)
    with pytest.warns(RuntimeWarning, match=r"ReduceLROnPlateau conditioned on metric missing which is not "
                                            r"available but strict is set to `False`\. Skipping learning rate update"):
        trainer.fit(Plateau(), kit.loader(4))
    assert trainer.global_step == 4 and trainer.optimizers[0].param_groups[0]["lr"] == 0.1


# --- loggers are called as Lightning calls them --------------------------------------------------------------------
def test_custom_logger_gets_keyword_log_metrics_and_positional_hparams(kit) -> None:
    from engine.loggers import Logger

    class Strict(Logger):
        """A subclass with Lightning's signature and keyword-only use: positional calls would break it."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[dict, int]] = []
            self.hparams: list[Any] = []

        @property
        def name(self) -> str:
            return "strict"

        @property
        def version(self) -> int:
            return 0

        def log_metrics(self, *, metrics: dict, step: int | None = None) -> None:  # type: ignore[override]
            self.rows.append((dict(metrics), step))

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            self.hparams.append(params)

    class HP(kit.Model):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__(lr)
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    lg = Strict()
    mocked = mock.MagicMock(spec=Logger)
    mocked.name, mocked.version, mocked.save_dir, mocked.log_dir = "m", 0, None, None
    _quiet(kit, logger=[lg, mocked], log_every_n_steps=1).fit(HP(), kit.loader(4))
    assert [step for _, step in lg.rows[:2]] == [0, 1] and "epoch" in lg.rows[0][0]
    assert len(lg.hparams) == 1 and lg.hparams[0]["lr"] == 0.05
    first = mocked.log_metrics.call_args_list[0]
    assert first.args == () and set(first.kwargs) == {"metrics", "step"} and first.kwargs["step"] == 0
    (params,), kwargs = mocked.log_hyperparams.call_args
    assert params["lr"] == 0.05 and kwargs == {}


# --- self.log inside a Callback ---------------------------------------------------------------------------------------
def test_log_inside_callback_hooks_logs_through_the_module(kit) -> None:
    class Logs(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.log("cb_step", float(batch_idx), on_step=True, on_epoch=False)

        def on_train_epoch_end(self, trainer, pl_module):
            self.log("cb_epoch", 1.0)
            self.log_dict({"cb_a": 2.0, "cb_b": 3.0})
            pl_module.log("cb_module", 4.0)

        def on_validation_epoch_end(self, trainer, pl_module):
            self.log("cb_val", 5.0)

    trainer = _quiet(kit, callbacks=[Logs()], num_sanity_val_steps=0)
    trainer.fit(kit.Model(), kit.loader(4), kit.loader(2))
    got = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("cb_")}
    assert got == {"cb_step": 1.0, "cb_epoch": 1.0, "cb_a": 2.0, "cb_b": 3.0, "cb_module": 4.0, "cb_val": 5.0}
    with pytest.raises(MisconfigurationException, match=r"Logs\.log\('x', \.\.\.\) was called outside a run"):
        Logs().log("x", 1.0)


# --- empty evaluation data ----------------------------------------------------------------------------------------
_EMPTY = r"Total length of `DataLoader` across ranks is zero\. Please make sure this was your intention\."


def test_empty_val_dataloader_warns_and_skips_validation(kit) -> None:
    rec = kit.Recorder()
    model = kit.Model()
    with pytest.warns(UserWarning, match=_EMPTY) as caught:
        _quiet(kit, callbacks=[rec], max_epochs=2).fit(model, kit.loader(8), _empty_loader())
    assert len(model.seen) == 8 and rec.count("val_start") == 0  # trained in full, validated nothing
    assert {w.filename for w in caught if "Total length" in str(w.message)} == {__file__}  # the user's line


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_empty_eval_dataloader_returns_empty_list(kit, stage) -> None:
    rec = kit.Recorder()
    with pytest.warns(UserWarning, match=_EMPTY + r" \(dataset of 0 samples: give it data\)"):
        out = getattr(_quiet(kit, callbacks=[rec]), stage)(kit.Model(), _empty_loader(), verbose=False)
    assert out == [] and rec.count(f"{'val' if stage == 'validate' else stage}_batch") == 0


def test_empty_predict_dataloader_returns_none(kit) -> None:
    with pytest.warns(UserWarning, match=_EMPTY):
        assert _quiet(kit).predict(kit.Model(), _empty_loader()) is None


def test_empty_train_dataloader_advice_is_right(kit) -> None:
    with pytest.raises(MisconfigurationException, match=r"\(dataset of 0 samples: give it data\); it yields no "
                                                        r"batch$"):
        _quiet(kit).fit(kit.Model(), _empty_loader(drop_last=False))
    with pytest.raises(MisconfigurationException, match=r"dataset of 3 samples, batch_size=4, drop_last=True: lower "
                                                        r"batch_size or set drop_last=False"):
        _quiet(kit).fit(kit.Model(), _empty_loader(drop_last=True, n=3))


# --- training_step returning None -----------------------------------------------------------------------------------
class _Timeout(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _Timeout("the fit did not end within 20 s")


def test_none_training_step_counts_steps_and_max_steps_stops(kit) -> None:
    calls: list[str] = []

    class Skips(kit.Model):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

        def on_before_zero_grad(self, optimizer):
            calls.append("zero_grad")

        def on_before_backward(self, loss):
            calls.append("backward")

        def on_before_optimizer_step(self, optimizer):
            calls.append("step")

    model = Skips()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        with pytest.warns(UserWarning, match=r"`training_step` returned `None`\. If this was on purpose, ignore this "
                                             r"warning\.\.\."):
            trainer = _quiet(kit, max_epochs=-1, max_steps=10)
            trainer.fit(model, kit.loader(8))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    # 10 batches: 2 epochs of 4, then 2 more; the cut epoch counts as ended (Lightning's current_epoch)
    assert trainer.global_step == 10 and trainer.current_epoch == 3
    assert calls[:6] == ["zero_grad", "backward", "step", "zero_grad", "step", "zero_grad"]  # no backward on None
    assert calls.count("step") == 10 and calls.count("backward") == 5


def test_none_training_step_moves_nothing_and_matches_a_raw_loop(kit) -> None:
    """Lightning's optimizer still steps after a skipped backward; without gradients the weights stay put."""
    class Skips(kit.Model):
        def training_step(self, batch, batch_idx):
            return None if batch_idx == 1 else super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    model = Skips()
    reference = kit.Model()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(reference.parameters(), lr=reference.lr)
    for i, batch in enumerate(kit.loader(8)):
        opt.zero_grad()
        if i != 1:
            reference.training_step(batch, i).backward()
        opt.step()
    with pytest.warns(UserWarning, match=r"`training_step` returned `None`"):
        _quiet(kit).fit(model, kit.loader(8))
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


# --- calling fit again ------------------------------------------------------------------------------------------------
def test_second_fit_continues_from_counters_and_does_nothing_when_done(kit, capsys) -> None:
    model = kit.Model()
    rec = kit.Recorder()
    trainer = _quiet(kit, callbacks=[rec], max_epochs=2)
    trainer.fit(model, kit.loader(8))
    assert trainer.current_epoch == 2 and trainer.global_step == 8 and len(model.seen) == 8
    weights = [p.detach().clone() for p in model.parameters()]
    capsys.readouterr()
    trainer.fit(model, kit.loader(8))
    assert trainer.current_epoch == 2 and trainer.global_step == 8 and len(model.seen) == 8  # nothing trained
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert rec.count("epoch_start") == 2
    out = capsys.readouterr()
    assert "`Trainer.fit` stopped: `max_epochs=2` reached." in out.out + out.err


def test_second_fit_with_max_steps_reached_does_nothing(kit) -> None:
    model = kit.Model()
    trainer = _quiet(kit, max_epochs=-1, max_steps=3)
    trainer.fit(model, kit.loader(8))
    assert trainer.global_step == 3 and len(model.seen) == 3
    trainer.validate(model, kit.loader(2), verbose=False)  # validate between the fits keeps the counters
    trainer.fit(model, kit.loader(8))
    assert trainer.global_step == 3 and len(model.seen) == 3
