"""The user-facing handler API end to end on real tiny fits: `trainer.on`, handler classes, `trainer.describe()`,
the Timestamp every event carries, and `event.trainer`."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.bus import CALLBACK, MODULE, MONITOR
from engine.state import Timestamp

__all__: list[str] = []


class Tiny(pl.LightningModule):
    """Linear regression on 3 features; counts training_step calls and records its own epoch-end hook in `log`."""

    def __init__(self, log: list | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.log_ = log if log is not None else []
        self.steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.steps += 1
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def on_train_epoch_end(self) -> None:
        self.log_.append("module")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(n: int = 8, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)),
                      batch_size=batch_size)


def trainer(**flags: Any) -> pl.Trainer:
    base = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**base, **flags})


class EpochCallback(pl.Callback):
    def __init__(self, log: list) -> None:
        self.log = log

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.log.append("callback")


class Monitor(pl.Callback):
    is_monitor = True

    def __init__(self, log: list) -> None:
        self.log = log

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.log.append("monitor")


class Watcher:
    """A handler class: observes batches and epochs, runs between callbacks and the module."""

    priority = CALLBACK + 50

    def __init__(self, log: list) -> None:
        self.log = log
        self.batches: list[int] = []

    def on_batch_ended(self, event: pl.BatchEnded) -> None:
        self.batches.append(event.batch_idx)

    def on_epoch_ended(self, event: pl.EpochEnded) -> None:
        self.log.append("watcher")


# -- trainer.on ---------------------------------------------------------------------------------------------------
def test_on_epoch_ended_every_two_fires_after_the_second_and_fourth_epoch() -> None:
    t = trainer(max_epochs=5)
    fired: list[int] = []

    @t.on(pl.EpochEnded, every=2)
    def every_other(event: pl.EpochEnded) -> None:
        fired.append(event.timestamp.epoch)

    t.fit(Tiny(), data())
    assert fired == [1, 3]
    assert callable(every_other)


def test_on_once_and_when() -> None:
    t = trainer(max_epochs=2)
    once: list[int] = []
    firsts: list[tuple[int, int]] = []
    t.on(pl.BatchEnded, once=3)(lambda e: once.append(e.timestamp.global_step))
    t.on(pl.BatchStarted, when=lambda e: e.batch_idx == 0)(lambda e: firsts.append((e.timestamp.epoch,
                                                                                       e.timestamp.global_step)))
    t.fit(Tiny(), data())
    assert once == [3]
    assert firsts == [(0, 0), (1, 4)]


def test_handlers_subscribed_before_fit_stay_across_runs() -> None:
    t = trainer()
    count: list[int] = []
    t.on(pl.EpochEnded)(lambda e: count.append(1))
    t.fit(Tiny(), data())
    t.settings.max_epochs += 1  # a second fit continues from the first's counters (#11): one more epoch
    t.fit(Tiny(), data())
    assert len(count) == 2


# -- handler classes ----------------------------------------------------------------------------------------------
def test_a_handler_class_runs_in_its_priority_band() -> None:
    log: list[str] = []
    t = trainer(max_epochs=2, callbacks=[Monitor(log), EpochCallback(log)])
    watcher = Watcher(log)
    subs = t.add_handler(watcher)
    assert sorted(s.name for s in subs) == ["Watcher.on_batch_ended", "Watcher.on_epoch_ended"]
    t.fit(Tiny(log), data())
    assert log == ["callback", "watcher", "module", "monitor"] * 2
    assert watcher.batches == [0, 1, 2, 3] * 2


def test_add_handler_refuses_a_lightning_callback() -> None:
    with pytest.raises(TypeError, match=r"EpochCallback is a pl.Callback: pass it in Trainer\(callbacks=\[...\]\)"):
        trainer().add_handler(EpochCallback([]))


# -- describe -----------------------------------------------------------------------------------------------------
def epoch_ended_block(text: str) -> list[str]:
    """The lines listed under `EpochEnded:` in a describe() text."""
    lines = text.splitlines()
    start = lines.index("EpochEnded:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        block.append(line.split())
    return [" ".join(parts) for parts in block]


def test_describe_during_a_run_shows_handlers_and_callbacks_in_their_bands() -> None:
    log: list[str] = []
    t = trainer(callbacks=[Monitor(log), EpochCallback(log)])
    t.add_handler(Watcher(log))
    seen: list[str] = []

    @t.on(pl.EpochEnded, priority=MONITOR + 100)
    def snapshot(event: pl.EpochEnded) -> None:
        seen.append(event.trainer.describe())

    t.fit(Tiny(log), data())
    assert epoch_ended_block(seen[0]) == [
        f"{CALLBACK} EpochCallback.on_train_epoch_end",
        f"{CALLBACK + 50} Watcher.on_epoch_ended",
        f"{MODULE} Tiny.on_train_epoch_end",
        f"{MONITOR} Monitor.on_train_epoch_end",
        f"{MONITOR + 100} test_describe_during_a_run_shows_handlers_and_callbacks_in_their_bands.<locals>.snapshot",
    ]
    assert "Machine 'fit' (initial: setup)" in seen[0]
    assert "optimizer_step -> batch | epoch_end | teardown | validation" in seen[0]


def test_describe_after_the_run_still_shows_the_last_run_order() -> None:
    """describe() promises the order "for the current or last run" (ENGINE BUG: the run's callbacks and module hooks
    are detached when fit returns, so only handlers added with trainer.on/add_handler remain listed)."""
    log: list[str] = []
    t = trainer(callbacks=[EpochCallback(log)])
    t.add_handler(Watcher(log))
    t.fit(Tiny(log), data())
    assert epoch_ended_block(t.describe()) == [
        f"{CALLBACK} EpochCallback.on_train_epoch_end",
        f"{CALLBACK + 50} Watcher.on_epoch_ended",
        f"{MODULE} Tiny.on_train_epoch_end",
    ]


# -- timestamps and event.trainer ---------------------------------------------------------------------------------
def test_events_carry_the_current_timestamp() -> None:
    t = trainer(max_epochs=2)
    seen: list[tuple[str, Timestamp]] = []
    for kind in (pl.EpochStarted, pl.BatchStarted, pl.BatchEnded, pl.EpochEnded, pl.TrainEnded):
        t.on(kind)(lambda e: seen.append((type(e).__name__, e.timestamp)))
    t.fit(Tiny(), data(n=10, batch_size=4))  # batches of 4, 4, 2
    assert seen == [
        ("EpochStarted", Timestamp(0, 0, 0, 0, 0)),
        ("BatchStarted", Timestamp(0, 0, 0, 1, 4)), ("BatchEnded", Timestamp(0, 0, 1, 1, 4)),
        ("BatchStarted", Timestamp(0, 1, 1, 2, 8)), ("BatchEnded", Timestamp(0, 1, 2, 2, 8)),
        ("BatchStarted", Timestamp(0, 2, 2, 3, 10)), ("BatchEnded", Timestamp(0, 2, 3, 3, 10)),
        ("EpochEnded", Timestamp(0, 2, 3, 3, 10)),
        ("EpochStarted", Timestamp(1, 0, 3, 3, 10)),
        ("BatchStarted", Timestamp(1, 0, 3, 4, 14)), ("BatchEnded", Timestamp(1, 0, 4, 4, 14)),
        ("BatchStarted", Timestamp(1, 1, 4, 5, 18)), ("BatchEnded", Timestamp(1, 1, 5, 5, 18)),
        ("BatchStarted", Timestamp(1, 2, 5, 6, 20)), ("BatchEnded", Timestamp(1, 2, 6, 6, 20)),
        ("EpochEnded", Timestamp(1, 2, 6, 6, 20)),
        ("TrainEnded", Timestamp(2, 0, 6, 6, 20)),
    ]
    assert t.timestamp == Timestamp(2, 0, 6, 6, 20)
    assert (t.current_epoch, t.global_step) == (2, 6)


def test_every_event_carries_the_trainer() -> None:
    t = trainer(limit_val_batches=1, num_sanity_val_steps=1)
    kinds: set[str] = set()

    @t.on(pl.Event)
    def check(event: pl.Event) -> None:
        assert event.trainer is t
        assert event.control is t.control
        kinds.add(type(event).__name__)

    t.fit(Tiny(), data(), data())
    assert {"Setup", "FitStarted", "SanityCheckStarted", "TrainStarted", "EpochStarted", "BatchStarted",
            "BeforeZeroGrad", "BeforeBackward", "AfterBackward", "BeforeOptimizerStep", "OptimizerStepped",
            "BatchEnded", "ValidationStarted", "ValidationBatchEnded", "EpochEnded", "TrainEnded", "FitEnded",
            "Teardown"} <= kinds


def test_no_sanity_check_still_trains_each_epoch_once() -> None:
    """num_sanity_val_steps=0 with validation data (ENGINE BUG: the first validation is taken for the sanity check,
    so the `validation` state returns to epoch_start and epoch 0 is trained twice)."""
    t = trainer(max_epochs=2, limit_val_batches=1)
    model = Tiny()
    epochs: list[int] = []
    t.on(pl.EpochStarted)(lambda e: epochs.append(e.timestamp.epoch))
    sanity: list[int] = []
    t.on(pl.SanityCheckStarted)(lambda e: sanity.append(1))
    t.fit(model, data(), data())
    assert sanity == []
    assert epochs == [0, 1]
    assert model.steps == 8 and t.global_step == 8


def test_state_changed_reports_every_transition_of_the_fit_and_eval_machines() -> None:
    import engine as pl
    from engine.events import StateChanged
    from torch.utils.data import DataLoader, TensorDataset

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("v", self.layer(batch[0]).sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, num_sanity_val_steps=1, enable_model_summary=False, logger=False,
                         enable_progress_bar=False)
    seen: list[tuple[str, str, str]] = []
    trainer.on(StateChanged)(lambda e: seen.append((e.machine, e.src, e.dst)))
    trainer.fit(Model(), data, data)
    fit = [(s, d) for m, s, d in seen if m == "fit"]
    assert fit == [("setup", "validation"), ("validation", "epoch_start"), ("epoch_start", "batch"),
                   ("batch", "backward"), ("backward", "optimizer_step"), ("optimizer_step", "batch"),
                   ("batch", "backward"), ("backward", "optimizer_step"), ("optimizer_step", "validation"),
                   ("validation", "epoch_end"), ("epoch_end", "teardown"), ("teardown", "done")]
    evaluate = [(s, d) for m, s, d in seen if m == "evaluate"]
    assert evaluate[:3] == [("eval_start", "eval_batch"), ("eval_batch", "eval_batch"), ("eval_batch", "eval_end")]
    # nobody listening: no observer installed, the machines take their fast path
    trainer2 = pl.Trainer(max_epochs=1, enable_model_summary=False, logger=False, enable_progress_bar=False)
    trainer2.fit(Model(), data)
    assert trainer2.machine.on_transition is None
