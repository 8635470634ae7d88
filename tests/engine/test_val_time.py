"""Time-based `val_check_interval` (Lightning 2.6): validation on a wall-clock interval, checked after each training
batch that passes the `check_val_every_n_epoch` gate, counted from the start of training and from the end of the
last validation. The clock is a fake one advanced by one second per training batch, so the runs are exact."""

from __future__ import annotations

import types
from datetime import timedelta
from typing import Any

import pytest

import engine as pl
from engine.loops import fit as fit_module


class Clock:
    """A fake `time.monotonic` for the fit loop: `now` seconds; counts how often the loop read it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return self.now


class Tick(pl.Callback):
    """Each training batch takes one second of the fake clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.clock.now += 1.0


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(fit_module, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


def run(kit, clock: Clock, **flags: Any) -> tuple[pl.Trainer, Any]:
    rec = kit.Recorder()
    trainer = kit.trainer(callbacks=[Tick(clock), rec], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, **flags)
    trainer.fit(kit.Model(), kit.loader(20), kit.loader(9, seed=1))  # 10 train batches, 5 val batches
    return trainer, rec


@pytest.mark.parametrize("interval", ["00:00:00:03", {"seconds": 3}, timedelta(seconds=3)])
def test_validates_every_interval_of_wall_clock_and_not_at_epoch_end(kit, clock, interval) -> None:
    trainer, rec = run(kit, clock, max_epochs=1, val_check_interval=interval)
    # batches end at t=1..10; the clock restarts after the sanity check (t=0) and after each validation
    assert rec.val_runs() == [(0, 3, 5), (0, 6, 5), (0, 9, 5)]
    assert rec.val_runs(sanity=True) == [(0, 0, 2)]
    assert trainer.global_step == 10


def test_the_interval_carries_across_epochs(kit, clock) -> None:
    _, rec = run(kit, clock, max_epochs=2, val_check_interval="00:00:00:04")
    assert rec.val_runs() == [(0, 4, 5), (0, 8, 5), (1, 12, 5), (1, 16, 5), (1, 20, 5)]


def test_check_val_every_n_epoch_gates_the_clock(kit, clock) -> None:
    _, rec = run(kit, clock, max_epochs=2, val_check_interval={"seconds": 4}, check_val_every_n_epoch=2,
                 num_sanity_val_steps=0)
    # epoch 0 is gated off (the clock is not even read); epoch 1's first batch is 11 s after training started
    assert rec.val_runs() == [(1, 11, 5), (1, 15, 5), (1, 19, 5)]


def test_clock_is_read_only_at_check_points(kit, clock) -> None:
    run(kit, clock, max_epochs=2, val_check_interval="00:00:00:04", check_val_every_n_epoch=2,
        num_sanity_val_steps=0)
    # 1 at fit start + 1 at train start + 10 checks in epoch 1 (none in the gated epoch 0) + 3 restarts after validation
    assert clock.reads == 1 + 1 + 10 + 3


def test_batch_based_runs_never_read_the_clock(kit, clock) -> None:
    _, rec = run(kit, clock, max_epochs=1, val_check_interval=0.5)
    assert rec.val_runs() == [(0, 5, 5), (0, 10, 5)]
    assert clock.reads == 0


def test_interval_longer_than_training_never_validates(kit, clock) -> None:
    _, rec = run(kit, clock, max_epochs=2, val_check_interval=timedelta(minutes=1))
    assert rec.val_runs() == []


def test_stop_request_still_validates_with_a_time_interval(kit, clock) -> None:
    rec = kit.Recorder(stop_at=(0, 1))
    trainer = kit.trainer(callbacks=[Tick(clock), rec], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, max_epochs=3, val_check_interval="00:01:00:00")
    trainer.fit(kit.Model(), kit.loader(20), kit.loader(9, seed=1))
    assert rec.val_runs() == [(0, 2, 5)]


def test_fast_dev_run_ignores_the_time_interval(kit, clock) -> None:
    _, rec = run(kit, clock, fast_dev_run=2, val_check_interval="00:01:00:00")
    assert rec.val_runs() == [(0, 2, 2)]
    assert clock.reads == 0


def test_bad_time_strings_are_refused_with_the_format() -> None:
    with pytest.raises(Exception, match=r"val_check_interval.*DD:HH:MM:SS"):
        pl.Trainer(val_check_interval="10 minutes")


def test_model_checkpoint_saves_after_each_timed_validation(kit, clock, tmp_path) -> None:
    from hooks.checkpoint import ModelCheckpoint

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1)
    trainer = kit.trainer(callbacks=[Tick(clock), cb], logger=False, enable_progress_bar=False, max_epochs=1,
                          val_check_interval="00:00:00:03")
    trainer.fit(kit.Model(), kit.loader(20), kit.loader(9, seed=1))
    # Lightning: with a time-based interval the save is deferred to validation end, never at the epoch's end
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=9.ckpt"]
