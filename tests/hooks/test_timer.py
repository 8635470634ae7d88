"""Timer: duration parsing, stopping at the right batch/epoch with a fake clock, min_epochs, stages, state."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from engine.errors import MisconfigurationException
from engine.log import capture_logs
from hooks.timer import Timer


class Clock:
    """Stands in for time.monotonic inside hooks.timer; the model advances it by `tick` seconds per training step."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("hooks.timer.monotonic", c)
    return c


def slow_model(kit: Any, clock: Clock, tick: float = 1.0) -> Any:
    class Slow(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            clock.now += tick
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            clock.now += 0.25
            super().validation_step(batch, batch_idx)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            clock.now += 0.25
            super().test_step(batch, batch_idx)

    return Slow()


@pytest.mark.parametrize(("value", "seconds"), [
    ("00:00:01:30", 90.0), ("1:02:03:04", 93784.0), (timedelta(minutes=2), 120.0), ({"hours": 1}, 3600.0),
    (None, None),
])
def test_duration_formats(value: Any, seconds: float | None) -> None:
    assert Timer(duration=value).duration == seconds


def test_bad_duration_and_interval() -> None:
    with pytest.raises(MisconfigurationException, match=r"'1:30' is not a valid duration.*DD:HH:MM:SS"):
        Timer(duration="1:30")
    with pytest.raises(MisconfigurationException, match="dict keys must be timedelta arguments"):
        Timer(duration={"hourz": 1})
    with pytest.raises(MisconfigurationException, match=r"Timer\(interval='batch'\).*'step'.*'epoch'"):
        Timer(duration="00:00:00:01", interval="batch")


def test_stops_after_the_batch_that_spends_the_budget(kit: Any, clock: Clock) -> None:
    timer = Timer(duration="00:00:00:05")
    trainer = kit.trainer(max_epochs=3, callbacks=[timer], logger=False, enable_progress_bar=False)
    with capture_logs() as logs:
        trainer.fit(slow_model(kit, clock), kit.loader(20, batch_size=2))  # 10 batches per epoch
    assert trainer.global_step == 5  # elapsed 1, 2, 3, 4, 5 s after batches 0..4
    assert trainer.current_epoch == 1  # the stopped epoch still ends
    assert timer.time_elapsed("train") == 5.0
    assert timer.time_remaining() == 0.0
    assert [r for r in trainer.control.history if r.action == "stop"][0].reason == "time limit reached"
    stops = [m for m in logs if m["event"].startswith("Time limit reached.")]  # Lightning's text
    assert len(stops) == 1 and stops[0]["event"] == "Time limit reached. Elapsed time is 0:00:05. Signaling Trainer to stop."


def test_max_time_flag_adds_a_step_timer(kit: Any, clock: Clock) -> None:
    trainer = kit.trainer(max_time={"seconds": 3}, callbacks=[], logger=False, enable_progress_bar=False)
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0].duration == 3.0
    trainer.fit(slow_model(kit, clock), kit.loader(20, batch_size=2))
    assert trainer.global_step == 3


def test_epoch_interval_checks_at_epoch_end_only(kit: Any, clock: Clock) -> None:
    timer = Timer(duration="00:00:00:02", interval="epoch", verbose=False)
    trainer = kit.trainer(max_epochs=5, callbacks=[timer], logger=False, enable_progress_bar=False)
    with capture_logs() as logs:
        trainer.fit(slow_model(kit, clock), kit.loader(6, batch_size=2))  # 3 batches per epoch
    assert (trainer.global_step, trainer.current_epoch) == (3, 1)
    assert not [m for m in logs if m["event"].startswith("Time limit")]


def test_min_epochs_is_honoured(kit: Any, clock: Clock) -> None:
    timer = Timer(duration="00:00:00:02")
    trainer = kit.trainer(min_epochs=2, max_epochs=5, callbacks=[timer], logger=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="min_epochs=2"):
        trainer.fit(slow_model(kit, clock), kit.loader(6, batch_size=2))
    # the stop request after batch 1 waits until two epochs are done
    assert (trainer.global_step, trainer.current_epoch) == (6, 2)


def test_stage_times_and_state_dict(kit: Any, clock: Clock) -> None:
    timer = Timer(duration="00:01:00:00")
    trainer = kit.trainer(max_epochs=1, callbacks=[timer], logger=False, enable_progress_bar=False,
                          num_sanity_val_steps=0)
    model = slow_model(kit, clock)
    trainer.fit(model, kit.loader(6, batch_size=2), kit.loader(4, batch_size=2))
    assert timer.time_elapsed("train") == 3.5  # 3 batches of 1 s + validation (2 batches of 0.25 s) inside fit
    assert timer.time_elapsed("validate") == 0.5
    assert timer.start_time("validate") is not None and timer.end_time("validate") is not None
    assert timer.time_elapsed("test") == 0.0 and timer.start_time("test") is None
    trainer.test(model, kit.loader(4, batch_size=2), verbose=False)
    assert timer.time_elapsed("test") == 0.5
    state = timer.state_dict()
    assert state == {"time_elapsed": {"train": 3.5, "sanity_check": 0.0, "validate": 0.5, "test": 0.5,
                                      "predict": 0.0}}
    with pytest.raises(ValueError, match="unknown stage 'training'"):
        timer.time_elapsed("training")


def test_restored_elapsed_time_counts_and_can_stop_at_fit_start(kit: Any, clock: Clock) -> None:
    timer = Timer(duration="00:00:00:05")
    timer.load_state_dict({"time_elapsed": {"train": 3.0}})
    assert timer.time_elapsed() == 3.0 and timer.time_remaining() == 2.0
    trainer = kit.trainer(max_epochs=3, callbacks=[timer], logger=False, enable_progress_bar=False)
    trainer.fit(slow_model(kit, clock), kit.loader(20, batch_size=2))
    assert trainer.global_step == 2  # 3 s restored + 2 batches

    spent = Timer(duration="00:00:00:05")
    spent.load_state_dict({"time_elapsed": {"train": 6.0}})
    trainer = kit.trainer(max_epochs=3, callbacks=[spent], logger=False, enable_progress_bar=False)
    trainer.fit(slow_model(kit, clock), kit.loader(20, batch_size=2))
    assert trainer.global_step == 0  # over budget before the first batch (checked at on_fit_start)


def test_without_duration_it_only_measures(kit: Any, clock: Clock) -> None:
    timer = Timer()
    trainer = kit.trainer(max_epochs=2, callbacks=[timer], logger=False, enable_progress_bar=False)
    trainer.fit(slow_model(kit, clock), kit.loader(4, batch_size=2))
    assert trainer.global_step == 4 and timer.time_elapsed() == 4.0 and timer.time_remaining() is None
