"""Golden hook-order tests: every Callback and LightningModule hook call during fit/validate/test/predict.

The expected sequences were recorded from real Lightning 2.6.6 with this very recorder and written out literally.
Recording convention (the same as Lightning's ``tests_pytorch/models/test_hooks.py``): a LightningModule method is
recorded *after* it returns (post-order), so a nested call appears before its caller: ``forward`` before
``training_step``, ``clip_gradients`` before ``configure_gradient_clipping``, the whole closure before
``optimizer_step``, ``zero_grad`` before ``on_validation_model_zero_grad``, ``train(False)`` before
``on_*_model_eval``. Callback hooks are leaves.

Each call is ``(name, args, kwargs)`` with values summarised: the trainer is ``T``, the model is ``M``, a tensor is
``"tensor<shape>"``, a ``torch.device`` is ``"device(cpu)"``, optimizers (plain or wrapped), schedulers and closures
are placeholders, and ints, strings (a str-valued enum as its value) and None are kept. Positional and keyword arguments are kept apart because users may rename positional parameters.
The checkpoint dict passed to ``on_save_checkpoint``/``on_load_checkpoint`` is ``"<checkpoint>"``: statetrain writes its
own checkpoint format, so only where the hooks are called is compared, not what the checkpoint holds.

A LightningDataModule's methods are recorded post-order too, as ``DataModule.<name>``; the callback's
``state_dict``/``load_state_dict`` as ``Callback.<name>``.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

import engine as pl

__all__: list[str] = []

T = "trainer"
M = "module"
BATCH = "tensor(2, 4)"
LOSS = "tensor()"
PRED = "tensor(2, 2)"
OPT = "<optimizer>"
SCHED = "<scheduler>"
CLOSURE = "<callable>"
CPU = "device(cpu)"
CKPT = "<checkpoint>"
# What the hooked callback's and datamodule's `state_dict()` return: non-empty, so that they are saved and loaded back.
CALLBACK_STATE = {"callback_state": 1}
DATAMODULE_STATE = {"datamodule_state": 2}

Call = tuple[str, tuple[Any, ...], dict[str, Any]]

CALLBACK_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_exception",
    "on_save_checkpoint", "on_load_checkpoint",
)  # fmt: skip

MODULE_HOOKS = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_validation_start", "on_validation_end", "on_test_start", "on_test_end", "on_predict_start", "on_predict_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_validation_model_zero_grad", "on_validation_model_eval", "on_validation_model_train",
    "on_test_model_eval", "on_test_model_train", "on_predict_model_eval",
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "configure_callbacks", "configure_model", "configure_optimizers", "prepare_data", "setup", "teardown",
    "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "forward", "training_step", "validation_step", "test_step", "predict_step",
    "optimizer_step", "optimizer_zero_grad", "lr_scheduler_step", "backward", "manual_backward",
    "configure_gradient_clipping", "clip_gradients", "toggle_optimizer", "untoggle_optimizer", "zero_grad", "train",
    "on_save_checkpoint", "on_load_checkpoint",
)  # fmt: skip

DATAMODULE_HOOKS = (
    "prepare_data", "setup", "teardown", "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader",
    "state_dict", "load_state_dict",
)  # fmt: skip

# Hooks whose (dict) argument is the checkpoint; it is recorded as CKPT.
CHECKPOINT_HOOKS = frozenset({"on_save_checkpoint", "on_load_checkpoint"})

# Lightning calls these only when the user overrides them, so they are wrapped only when the model class does.
CALLED_ONLY_IF_OVERRIDDEN = frozenset(
    {"prepare_data", "configure_model", "on_validation_model_train", "on_test_model_train"}
)


def C(name: str, *args: Any, **kwargs: Any) -> Call:
    """One expected call, written the way it was made: ``C("Callback.setup", T, M, stage="fit")``."""
    return (name, args, kwargs)


class Recorder:
    """Collects summarised calls; knows the model so it can print it as ``M``."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.model: nn.Module | None = None

    def record(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Append one call with every argument replaced by a comparable summary."""
        if name.rpartition(".")[2] in CHECKPOINT_HOOKS:
            args = tuple(CKPT if isinstance(a, dict) else a for a in args)
            kwargs = {k: CKPT if isinstance(v, dict) else v for k, v in kwargs.items()}
        summary = tuple(self.summarize(a) for a in args)
        self.calls.append((name, summary, {k: self.summarize(v) for k, v in kwargs.items()}))

    def summarize(self, value: Any) -> Any:
        """Map a hook argument to a small, comparable value (see the module docstring)."""
        if self.model is not None and value is self.model:
            return M
        if isinstance(value, pl.Trainer):
            return T
        if isinstance(value, torch.Tensor):
            return f"tensor{tuple(value.shape)}"
        if isinstance(value, torch.device):
            return f"device({value})"
        if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
            return SCHED
        if hasattr(value, "param_groups") and callable(getattr(value, "step", None)):
            return OPT
        if isinstance(value, dict):
            return {k: self.summarize(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.summarize(v) for v in value)
        if isinstance(value, Enum):  # e.g. a str-valued stage enum compares as its plain value
            return value.value
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if callable(value):
            return CLOSURE
        return f"<{type(value).__name__}>"


class HookedCallback(pl.Callback):
    """Records every callback hook it receives (methods are attached below, at class level)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def state_dict(self) -> dict[str, Any]:
        self.recorder.record("Callback.state_dict", (), {})
        return dict(CALLBACK_STATE)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.recorder.record("Callback.load_state_dict", args, kwargs)


def _callback_hook(name: str) -> Callable[..., None]:
    def hook(self: HookedCallback, *args: Any, **kwargs: Any) -> None:
        self.recorder.record(f"Callback.{name}", args, kwargs)

    hook.__name__ = hook.__qualname__ = name
    return hook


for _name in CALLBACK_HOOKS:
    setattr(HookedCallback, _name, _callback_hook(_name))


class TinyModel(pl.LightningModule):
    """A BoringModel-like module: Linear(4, 2), 8 samples in batches of 2, SGD + StepLR."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        assert self.training and self.layer.training, "training must run in train mode"
        return {"loss": self(batch).sum()}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        assert not self.training and not self.layer.training, "validation must run in eval mode"
        assert not torch.is_grad_enabled(), "validation must run without autograd"
        return {"x": self(batch).sum()}

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        assert not self.training and not self.layer.training, "test must run in eval mode"
        return {"y": self(batch).sum()}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]

    def _loader(self) -> DataLoader:
        return DataLoader(torch.randn(8, 4), batch_size=2)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    # overridden so that the trainer calls them
    def prepare_data(self) -> None: ...

    def configure_model(self) -> None: ...


class TinyModelWithModelTrain(TinyModel):
    """Overrides the ``on_*_model_train`` hooks, which Lightning then calls instead of restoring modes itself."""

    def on_validation_model_train(self) -> None:
        self.train()

    def on_test_model_train(self) -> None:
        self.train()


class ManualTinyModel(TinyModel):
    """Manual optimization: zero_grad, manual_backward and step (with a recording closure) inside training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        assert self.training and self.layer.training, "training must run in train mode"
        opt = self.optimizers()
        loss = self(batch).sum()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step(closure=lambda: self.recorder.calls.append(C("closure")))
        return loss


def _recorded_method(name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
    # `functools.wraps` keeps the signature and `__wrapped__`, so override checks see the real implementation.
    @functools.wraps(impl)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = impl(self, *args, **kwargs)
        self.recorder.record(name, args, kwargs)
        return out

    return method


def hooked(base: type[pl.LightningModule]) -> type[pl.LightningModule]:
    """Subclass ``base`` so every hook in MODULE_HOOKS records its call after it returns (post-order)."""

    def __init__(self: Any, recorder: Recorder) -> None:
        base.__init__(self)
        self.recorder = recorder
        recorder.model = self

    namespace: dict[str, Any] = {"__init__": __init__}
    for name in MODULE_HOOKS:
        impl = getattr(base, name)
        if name in CALLED_ONLY_IF_OVERRIDDEN and impl is getattr(pl.LightningModule, name):
            continue
        namespace[name] = _recorded_method(name, impl)
    return type(f"Hooked{base.__name__}", (base,), namespace)


class TinyDataModule(pl.LightningDataModule):
    """The model's data as a datamodule, with a non-empty ``state_dict()`` so the trainer saves and restores it."""

    def prepare_data(self) -> None: ...

    def setup(self, stage: str) -> None: ...

    def teardown(self, stage: str) -> None: ...

    def _loader(self) -> DataLoader:
        return DataLoader(torch.randn(8, 4), batch_size=2)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def state_dict(self) -> dict[str, Any]:
        return dict(DATAMODULE_STATE)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class HookedTinyDataModule(TinyDataModule):
    """Records every method in DATAMODULE_HOOKS as ``DataModule.<name>`` after it returns (post-order)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder


for _name in DATAMODULE_HOOKS:
    setattr(HookedTinyDataModule, _name, _recorded_method(f"DataModule.{_name}", getattr(TinyDataModule, _name)))


def make_trainer(tmp_path: Path, callback: pl.Callback, batches: int = 2, **overrides: Any) -> pl.Trainer:
    """The trainer configuration used for every golden run (``overrides`` replace its arguments)."""
    config: dict[str, Any] = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=batches,
        limit_test_batches=batches,
        limit_predict_batches=batches,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        callbacks=[callback],
    )
    config.update(overrides)
    return pl.Trainer(**config)


def run(tmp_path: Path, base: type[pl.LightningModule], verb: str) -> list[Call]:
    """Run ``trainer.<verb>(model)`` with a hooked ``base`` model and return the recorded calls."""
    recorder = Recorder()
    model = hooked(base)(recorder)
    trainer = make_trainer(tmp_path, HookedCallback(recorder))
    getattr(trainer, verb)(model)
    assert model.training and model.layer.training, f"the model must be back in train mode after {verb}"
    return recorder.calls


def fit_with_datamodule(tmp_path: Path, max_epochs: int = 1, ckpt_path: str | None = None) -> tuple[list[Call], str]:
    """``trainer.fit(model, datamodule=dm, ckpt_path=...)`` with checkpointing on (the default ModelCheckpoint).

    Returns the recorded calls and the path of the checkpoint the run wrote last (ModelCheckpoint's best model)."""
    recorder = Recorder()
    model = hooked(TinyModelWithModelTrain)(recorder)
    datamodule = HookedTinyDataModule(recorder)
    trainer = make_trainer(tmp_path, HookedCallback(recorder), enable_checkpointing=True, max_epochs=max_epochs)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    assert model.training and model.layer.training, "the model must be back in train mode after fit"
    checkpoint = trainer.checkpoint_callback
    assert checkpoint is not None and Path(checkpoint.best_model_path).is_file(), "fit must have saved a checkpoint"
    return recorder.calls, checkpoint.best_model_path


def assert_calls(actual: list[Call], expected: list[Call]) -> None:
    """Compare call lists and, on mismatch, show the first differing position with some context."""
    if actual == expected:
        return
    i = next((k for k, (a, e) in enumerate(zip(actual, expected)) if a != e), min(len(actual), len(expected)))
    lo = max(0, i - 4)
    lines = [f"first difference at index {i} (len actual={len(actual)}, expected={len(expected)})"]
    for k in range(lo, i + 5):
        a = actual[k] if k < len(actual) else "<missing>"
        e = expected[k] if k < len(expected) else "<missing>"
        lines.append(f"{'>>' if k == i else '  '} {k:3d} actual={a!r}\n          expected={e!r}")
    raise AssertionError("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------------
# Expected sequences, recorded from Lightning 2.6.6 and written out literally.


def test_fit_hook_order(tmp_path: Path) -> None:
    """``trainer.fit``: sanity check, 2 automatic-optimization batches, end-of-epoch validation, teardown."""
    expected = [
        # setup
        C("configure_callbacks"),
        C("prepare_data"),
        C("Callback.setup", T, M, stage="fit"),
        C("setup", stage="fit"),
        C("configure_model"),
        C("configure_optimizers"),
        C("Callback.on_fit_start", T, M),
        C("on_fit_start"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # sanity check: 2 validation batches
        C("Callback.on_sanity_check_start", T, M),
        C("val_dataloader"),
        C("train", False),  # post-order: runs inside on_*_model_eval (trainer.model.eval())
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),  # post-order: forward runs inside the step
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),  # post-order: our on_*_model_train override calls self.train()
        C("on_validation_model_train"),
        C("Callback.on_sanity_check_end", T, M),
        # training epoch 0
        C("train_dataloader"),
        C("Callback.on_train_start", T, M),
        C("on_train_start"),
        C("Callback.on_train_epoch_start", T, M),
        C("on_train_epoch_start"),
        # train batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 0),
        C("on_train_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("training_step", BATCH, 0),
        C("Callback.on_before_zero_grad", T, M, OPT),
        C("on_before_zero_grad", OPT),
        C("optimizer_zero_grad", 0, 0, OPT),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        # post-order: inside configure_gradient_clipping
        C("clip_gradients", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("configure_gradient_clipping", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("optimizer_step", 0, 0, OPT, CLOSURE),  # post-order: everything since training_step ran inside it
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 0),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 0),
        # train batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 1),
        C("on_train_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("training_step", BATCH, 1),
        C("Callback.on_before_zero_grad", T, M, OPT),
        C("on_before_zero_grad", OPT),
        C("optimizer_zero_grad", 0, 1, OPT),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("clip_gradients", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("configure_gradient_clipping", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("optimizer_step", 0, 1, OPT, CLOSURE),
        C("lr_scheduler_step", SCHED, None),  # epoch-interval StepLR: stepped on the last batch, before batch end
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 1),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 1),
        # validation at the end of the training epoch
        C("zero_grad"),  # post-order: runs inside on_validation_model_zero_grad
        C("on_validation_model_zero_grad"),
        C("train", False),
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),
        C("on_validation_model_train"),
        # end of the epoch and of fit
        C("Callback.on_train_epoch_end", T, M),
        C("on_train_epoch_end"),
        C("Callback.on_train_end", T, M),
        C("on_train_end"),
        C("Callback.on_fit_end", T, M),
        C("on_fit_end"),
        # teardown
        C("Callback.teardown", T, M, stage="fit"),
        C("teardown", stage="fit"),
    ]
    assert_calls(run(tmp_path, TinyModelWithModelTrain, "fit"), expected)


def test_validate_hook_order(tmp_path: Path) -> None:
    """``trainer.validate``: no fit hooks, no optimizers; ``on_validation_model_train`` is called because overridden."""
    expected = [
        # setup
        C("configure_callbacks"),
        C("prepare_data"),
        C("Callback.setup", T, M, stage="validate"),
        C("setup", stage="validate"),
        C("configure_model"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # validate loop
        C("val_dataloader"),
        C("train", False),  # post-order: runs inside on_*_model_eval (trainer.model.eval())
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),  # post-order: forward runs inside the step
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),  # post-order: our on_*_model_train override calls self.train()
        C("on_validation_model_train"),
        # teardown
        C("Callback.teardown", T, M, stage="validate"),
        C("teardown", stage="validate"),
    ]
    assert_calls(run(tmp_path, TinyModelWithModelTrain, "validate"), expected)


def test_test_hook_order(tmp_path: Path) -> None:
    """``trainer.test``: like validate with the ``test`` hooks; ``on_test_model_train`` is called because overridden."""
    expected = [
        # setup
        C("configure_callbacks"),
        C("prepare_data"),
        C("Callback.setup", T, M, stage="test"),
        C("setup", stage="test"),
        C("configure_model"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # test loop
        C("test_dataloader"),
        C("train", False),  # post-order: runs inside on_*_model_eval (trainer.model.eval())
        C("on_test_model_eval"),
        C("Callback.on_test_start", T, M),
        C("on_test_start"),
        C("Callback.on_test_epoch_start", T, M),
        C("on_test_epoch_start"),
        # test batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_test_batch_start", T, M, BATCH, 0),
        C("on_test_batch_start", BATCH, 0),
        C("forward", BATCH),  # post-order: forward runs inside the step
        C("test_step", BATCH, 0),
        C("Callback.on_test_batch_end", T, M, {"y": LOSS}, BATCH, 0),
        C("on_test_batch_end", {"y": LOSS}, BATCH, 0),
        # test batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_test_batch_start", T, M, BATCH, 1),
        C("on_test_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("test_step", BATCH, 1),
        C("Callback.on_test_batch_end", T, M, {"y": LOSS}, BATCH, 1),
        C("on_test_batch_end", {"y": LOSS}, BATCH, 1),
        C("Callback.on_test_epoch_end", T, M),
        C("on_test_epoch_end"),
        C("Callback.on_test_end", T, M),
        C("on_test_end"),
        C("train"),  # post-order: our on_*_model_train override calls self.train()
        C("on_test_model_train"),
        # teardown
        C("Callback.teardown", T, M, stage="test"),
        C("teardown", stage="test"),
    ]
    assert_calls(run(tmp_path, TinyModelWithModelTrain, "test"), expected)


def test_predict_hook_order(tmp_path: Path) -> None:
    """``trainer.predict``: the default ``predict_step`` calls forward; no model-train hook exists for predict."""
    expected = [
        # setup
        C("configure_callbacks"),
        C("prepare_data"),
        C("Callback.setup", T, M, stage="predict"),
        C("setup", stage="predict"),
        C("configure_model"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # predict loop
        C("predict_dataloader"),
        C("train", False),  # post-order: runs inside on_*_model_eval (trainer.model.eval())
        C("on_predict_model_eval"),
        C("Callback.on_predict_start", T, M),
        C("on_predict_start"),
        C("Callback.on_predict_epoch_start", T, M),
        C("on_predict_epoch_start"),
        # predict batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_predict_batch_start", T, M, BATCH, 0),
        C("on_predict_batch_start", BATCH, 0),
        C("forward", BATCH),  # post-order: forward runs inside the step
        C("predict_step", BATCH, 0),
        C("Callback.on_predict_batch_end", T, M, PRED, BATCH, 0),
        C("on_predict_batch_end", PRED, BATCH, 0),
        # predict batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_predict_batch_start", T, M, BATCH, 1),
        C("on_predict_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("predict_step", BATCH, 1),
        C("Callback.on_predict_batch_end", T, M, PRED, BATCH, 1),
        C("on_predict_batch_end", PRED, BATCH, 1),
        C("Callback.on_predict_epoch_end", T, M),
        C("on_predict_epoch_end"),
        C("Callback.on_predict_end", T, M),
        C("on_predict_end"),
        # teardown
        C("Callback.teardown", T, M, stage="predict"),
        C("teardown", stage="predict"),
    ]
    assert_calls(run(tmp_path, TinyModelWithModelTrain, "predict"), expected)


def test_predict_with_datamodule_hook_order(tmp_path: Path) -> None:
    """``trainer.predict(model, datamodule=dm)`` starts with ``configure_callbacks`` as fit/validate/test do, then the
    datamodule's ``prepare_data`` and ``setup`` before the callbacks' and the module's (Lightning's ``Trainer._run``),
    and the datamodule gives the dataloader."""
    recorder = Recorder()
    model = hooked(TinyModelWithModelTrain)(recorder)
    trainer = make_trainer(tmp_path, HookedCallback(recorder))
    trainer.predict(model, datamodule=HookedTinyDataModule(recorder))
    batch = [
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
    ]
    expected = [
        C("configure_callbacks"),
        C("DataModule.prepare_data"),
        C("prepare_data"),
        C("DataModule.setup", stage="predict"),
        C("Callback.setup", T, M, stage="predict"),
        C("setup", stage="predict"),
        C("configure_model"),
        C("zero_grad"),
        C("DataModule.predict_dataloader"),
        C("train", False),
        C("on_predict_model_eval"),
        C("Callback.on_predict_start", T, M),
        C("on_predict_start"),
        C("Callback.on_predict_epoch_start", T, M),
        C("on_predict_epoch_start"),
        *[call for i in range(2) for call in (
            *batch,
            C("Callback.on_predict_batch_start", T, M, BATCH, i),
            C("on_predict_batch_start", BATCH, i),
            C("forward", BATCH),
            C("predict_step", BATCH, i),
            C("Callback.on_predict_batch_end", T, M, PRED, BATCH, i),
            C("on_predict_batch_end", PRED, BATCH, i),
        )],
        C("Callback.on_predict_epoch_end", T, M),
        C("on_predict_epoch_end"),
        C("Callback.on_predict_end", T, M),
        C("on_predict_end"),
        C("DataModule.teardown", stage="predict"),
        C("Callback.teardown", T, M, stage="predict"),
        C("teardown", stage="predict"),
    ]
    assert_calls(recorder.calls, expected)


def test_manual_optimization_fit_hook_order(tmp_path: Path) -> None:
    """Manual optimization: the loop calls only ``training_step``; no optimizer_step/zero_grad/clipping/LR hooks.

    ``on_validation_model_train`` is not overridden here, so it is not called and the trainer restores the train
    mode itself (no ``train()`` call is recorded).
    """
    expected = [
        # setup
        C("configure_callbacks"),
        C("prepare_data"),
        C("Callback.setup", T, M, stage="fit"),
        C("setup", stage="fit"),
        C("configure_model"),
        C("configure_optimizers"),
        C("Callback.on_fit_start", T, M),
        C("on_fit_start"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # sanity check: 2 validation batches
        C("Callback.on_sanity_check_start", T, M),
        C("val_dataloader"),
        C("train", False),  # post-order: runs inside on_*_model_eval (trainer.model.eval())
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),  # post-order: forward runs inside the step
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("Callback.on_sanity_check_end", T, M),
        # training epoch 0
        C("train_dataloader"),
        C("Callback.on_train_start", T, M),
        C("on_train_start"),
        C("Callback.on_train_epoch_start", T, M),
        C("on_train_epoch_start"),
        # train batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 0),
        C("on_train_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("manual_backward", LOSS),  # post-order: the 5 calls above ran inside it
        C("closure"),  # opt.step(closure): closure first, then on_before_optimizer_step
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("training_step", BATCH, 0),  # post-order: everything since forward ran inside it
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 0),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 0),
        # train batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 1),
        C("on_train_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("manual_backward", LOSS),
        C("closure"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("training_step", BATCH, 1),
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 1),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 1),
        # validation at the end of the training epoch
        C("zero_grad"),  # post-order: runs inside on_validation_model_zero_grad
        C("on_validation_model_zero_grad"),
        C("train", False),
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        # end of the epoch and of fit
        C("Callback.on_train_epoch_end", T, M),
        C("on_train_epoch_end"),
        C("Callback.on_train_end", T, M),
        C("on_train_end"),
        C("Callback.on_fit_end", T, M),
        C("on_fit_end"),
        # teardown
        C("Callback.teardown", T, M, stage="fit"),
        C("teardown", stage="fit"),
    ]
    assert_calls(run(tmp_path, ManualTinyModel, "fit"), expected)


def test_fit_with_checkpointing_hook_order(tmp_path: Path) -> None:
    """``trainer.fit`` with a datamodule and the default ModelCheckpoint: the datamodule's hooks replace the module's
    dataloader hooks, and at the end of the epoch the checkpoint is saved (callback ``state_dict``, datamodule
    ``state_dict``, callback then module ``on_save_checkpoint``)."""
    expected = [
        # setup
        C("configure_callbacks"),
        C("DataModule.prepare_data"),
        C("prepare_data"),
        C("DataModule.setup", stage="fit"),
        C("Callback.setup", T, M, stage="fit"),
        C("setup", stage="fit"),
        C("configure_model"),
        C("configure_optimizers"),
        C("Callback.on_fit_start", T, M),
        C("on_fit_start"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # sanity check: 2 validation batches
        C("Callback.on_sanity_check_start", T, M),
        C("DataModule.val_dataloader"),
        C("train", False),
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),
        C("on_validation_model_train"),
        C("Callback.on_sanity_check_end", T, M),
        # training epoch 0
        C("DataModule.train_dataloader"),
        C("Callback.on_train_start", T, M),
        C("on_train_start"),
        C("Callback.on_train_epoch_start", T, M),
        C("on_train_epoch_start"),
        # train batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 0),
        C("on_train_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("training_step", BATCH, 0),
        C("Callback.on_before_zero_grad", T, M, OPT),
        C("on_before_zero_grad", OPT),
        C("optimizer_zero_grad", 0, 0, OPT),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("clip_gradients", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("configure_gradient_clipping", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("optimizer_step", 0, 0, OPT, CLOSURE),
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 0),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 0),
        # train batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 1),
        C("on_train_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("training_step", BATCH, 1),
        C("Callback.on_before_zero_grad", T, M, OPT),
        C("on_before_zero_grad", OPT),
        C("optimizer_zero_grad", 0, 1, OPT),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("clip_gradients", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("configure_gradient_clipping", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("optimizer_step", 0, 1, OPT, CLOSURE),
        C("lr_scheduler_step", SCHED, None),
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 1),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 1),
        # validation at the end of the training epoch
        C("zero_grad"),
        C("on_validation_model_zero_grad"),
        C("train", False),
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),
        C("on_validation_model_train"),
        # end of the epoch
        C("Callback.on_train_epoch_end", T, M),
        C("on_train_epoch_end"),
        # ModelCheckpoint (a monitoring callback: after the module's on_train_epoch_end) saves the checkpoint
        C("Callback.state_dict"),
        C("DataModule.state_dict"),
        C("Callback.on_save_checkpoint", T, M, CKPT),
        C("on_save_checkpoint", CKPT),
        # end of fit
        C("Callback.on_train_end", T, M),
        C("on_train_end"),
        C("Callback.on_fit_end", T, M),
        C("on_fit_end"),
        # teardown
        C("DataModule.teardown", stage="fit"),
        C("Callback.teardown", T, M, stage="fit"),
        C("teardown", stage="fit"),
    ]
    calls, _ = fit_with_datamodule(tmp_path)
    assert_calls(calls, expected)


def test_fit_resume_hook_order(tmp_path: Path) -> None:
    """``trainer.fit(ckpt_path=...)`` resuming a finished 1-epoch fit for a second epoch: after setup and
    configure_model the module's ``on_load_checkpoint``, the datamodule's ``load_state_dict``, the callbacks'
    ``on_load_checkpoint`` and ``load_state_dict``; then the fit continues from epoch 1 (with a sanity check)."""
    _, first = fit_with_datamodule(tmp_path, max_epochs=1)  # not recorded: writes the checkpoint to resume from
    expected = [
        # setup
        C("configure_callbacks"),
        C("DataModule.prepare_data"),
        C("prepare_data"),
        C("DataModule.setup", stage="fit"),
        C("Callback.setup", T, M, stage="fit"),
        C("setup", stage="fit"),
        C("configure_model"),
        # restore from ckpt_path: after setup and configure_model, before configure_optimizers
        C("on_load_checkpoint", CKPT),
        C("DataModule.load_state_dict", {"datamodule_state": 2}),
        C("Callback.on_load_checkpoint", T, M, CKPT),
        C("Callback.load_state_dict", {"callback_state": 1}),
        C("configure_optimizers"),
        C("Callback.on_fit_start", T, M),
        C("on_fit_start"),
        # start of the stage: the trainer zeroes the module's grads
        C("zero_grad"),
        # sanity check: 2 validation batches
        C("Callback.on_sanity_check_start", T, M),
        C("DataModule.val_dataloader"),
        C("train", False),
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),
        C("on_validation_model_train"),
        C("Callback.on_sanity_check_end", T, M),
        # training epoch 1
        C("DataModule.train_dataloader"),
        C("Callback.on_train_start", T, M),
        C("on_train_start"),
        C("Callback.on_train_epoch_start", T, M),
        C("on_train_epoch_start"),
        # train batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 0),
        C("on_train_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("training_step", BATCH, 0),
        C("Callback.on_before_zero_grad", T, M, OPT),
        C("on_before_zero_grad", OPT),
        C("optimizer_zero_grad", 1, 0, OPT),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("clip_gradients", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("configure_gradient_clipping", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("optimizer_step", 1, 0, OPT, CLOSURE),
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 0),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 0),
        # train batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_train_batch_start", T, M, BATCH, 1),
        C("on_train_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("training_step", BATCH, 1),
        C("Callback.on_before_zero_grad", T, M, OPT),
        C("on_before_zero_grad", OPT),
        C("optimizer_zero_grad", 1, 1, OPT),
        C("Callback.on_before_backward", T, M, LOSS),
        C("on_before_backward", LOSS),
        C("backward", LOSS),
        C("Callback.on_after_backward", T, M),
        C("on_after_backward"),
        C("Callback.on_before_optimizer_step", T, M, OPT),
        C("on_before_optimizer_step", OPT),
        C("clip_gradients", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("configure_gradient_clipping", OPT, gradient_clip_val=None, gradient_clip_algorithm=None),
        C("optimizer_step", 1, 1, OPT, CLOSURE),
        C("lr_scheduler_step", SCHED, None),
        C("Callback.on_train_batch_end", T, M, {"loss": LOSS}, BATCH, 1),
        C("on_train_batch_end", {"loss": LOSS}, BATCH, 1),
        # validation at the end of the training epoch
        C("zero_grad"),
        C("on_validation_model_zero_grad"),
        C("train", False),
        C("on_validation_model_eval"),
        C("Callback.on_validation_start", T, M),
        C("on_validation_start"),
        C("Callback.on_validation_epoch_start", T, M),
        C("on_validation_epoch_start"),
        # validation batch 0
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 0),
        C("on_validation_batch_start", BATCH, 0),
        C("forward", BATCH),
        C("validation_step", BATCH, 0),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 0),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 0),
        # validation batch 1
        C("on_before_batch_transfer", BATCH, 0),
        C("transfer_batch_to_device", BATCH, CPU, 0),
        C("on_after_batch_transfer", BATCH, 0),
        C("Callback.on_validation_batch_start", T, M, BATCH, 1),
        C("on_validation_batch_start", BATCH, 1),
        C("forward", BATCH),
        C("validation_step", BATCH, 1),
        C("Callback.on_validation_batch_end", T, M, {"x": LOSS}, BATCH, 1),
        C("on_validation_batch_end", {"x": LOSS}, BATCH, 1),
        C("Callback.on_validation_epoch_end", T, M),
        C("on_validation_epoch_end"),
        C("Callback.on_validation_end", T, M),
        C("on_validation_end"),
        C("train"),
        C("on_validation_model_train"),
        # end of the epoch
        C("Callback.on_train_epoch_end", T, M),
        C("on_train_epoch_end"),
        # ModelCheckpoint (a monitoring callback: after the module's on_train_epoch_end) saves the checkpoint
        C("Callback.state_dict"),
        C("DataModule.state_dict"),
        C("Callback.on_save_checkpoint", T, M, CKPT),
        C("on_save_checkpoint", CKPT),
        # end of fit
        C("Callback.on_train_end", T, M),
        C("on_train_end"),
        C("Callback.on_fit_end", T, M),
        C("on_fit_end"),
        # teardown
        C("DataModule.teardown", stage="fit"),
        C("Callback.teardown", T, M, stage="fit"),
        C("teardown", stage="fit"),
    ]
    calls, _ = fit_with_datamodule(tmp_path, max_epochs=2, ckpt_path=first)
    assert_calls(calls, expected)
