"""Run state is data: Progress, Control, the result collections and the machine position round-trip through
`state_dict()` (as plain data: `torch.load(weights_only=True)` reads it back), and BatchEnded sees a consistent
moment (the batch's counters already advanced)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import engine as pl
from engine.control import Control
from engine.loops.progress import Progress
from engine.machine import DONE, Machine
from engine.results import ResultCollection
from engine.state import Timestamp


def _fit_capturing(kit: Any, at: tuple[int, int], tmp_path: Path) -> tuple[pl.Trainer, dict, dict]:
    """Fit 2 epochs x 4 batches; at BatchEnded of (epoch, batch_idx) save the run state to a file."""
    class Model(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

    trainer = kit.trainer(max_epochs=2, logger=False, enable_progress_bar=False)
    seen: dict[str, Any] = {}

    @trainer.on(pl.BatchEnded)
    def capture(event: pl.BatchEnded) -> None:
        if (event.timestamp.epoch, event.batch_idx) == at:
            state = event.trainer.context.state_dict()
            torch.save(state, tmp_path / "state.pt")
            seen["state"] = state
            seen["event_batch_idx"] = event.batch_idx
            seen["progress"] = event.trainer.context.progress.state_dict()

    trainer.fit(Model(), kit.loader(8, batch_size=2))
    return trainer, seen, torch.load(tmp_path / "state.pt", weights_only=True)


def test_mid_epoch_state_round_trips_through_a_weights_only_file(kit: Any, tmp_path: Path) -> None:
    _, seen, loaded = _fit_capturing(kit, (1, 1), tmp_path)
    # BatchEnded of batch 1 in epoch 1: the batch is counted as done when the event fires
    assert seen["event_batch_idx"] == 1
    assert seen["progress"] == {
        "epoch": 1, "batch_in_epoch": 1, "global_step": 6, "batches_seen": 6, "samples_seen": 12, "batch_idx": 2,
        "total_batch_idx": 6, "batches_stepped": 5, "train_started": True, "sanity_done": True,
        "is_last_batch": False}
    assert loaded["machine"] == "optimizer_step"  # the state that was running
    fresh = kit.trainer(max_epochs=2, logger=False, enable_progress_bar=False)
    fresh.context.load_state_dict(loaded)
    assert fresh.context.progress.state_dict() == seen["progress"]
    assert fresh.context.control.state_dict() == seen["state"]["control"]
    assert (fresh.current_epoch, fresh.global_step) == (1, 6)
    assert fresh.timestamp == Timestamp(1, 1, 6, 6, 12)
    # the half-done epoch's running mean continues identically in the restored collection
    restored = fresh.context.train_results
    assert restored.state_dict()["entries"][0]["name"] == "train_loss"
    assert len(restored.state_dict()["entries"][0]["values"]) == 2


def test_results_round_trip_is_bit_exact_mid_epoch() -> None:
    """Two collections, one saved and restored halfway: the same epoch value to the last bit."""
    values = torch.rand(7, dtype=torch.float32, generator=torch.Generator().manual_seed(3)) * 10
    a = ResultCollection(training=True)
    a.set_batch(torch.zeros(3, 1))
    for v in values[:4]:
        a.log("training_step", "x", v, on_step=True, on_epoch=True)
        a.log("training_step", "m", v, on_step=False, on_epoch=True, reduce_fx="max")
    b = ResultCollection(training=True)
    b.load_state_dict(torch.load(_roundtrip(a.state_dict()), weights_only=True))
    for coll in (a, b):
        coll.set_batch(torch.zeros(3, 1))
        for v in values[4:]:
            coll.log("training_step", "x", v, on_step=True, on_epoch=True)
            coll.log("training_step", "m", v, on_step=False, on_epoch=True, reduce_fx="max")
        coll.epoch_end_reached()
    ea, eb = a.epoch_metrics().callback, b.epoch_metrics().callback
    assert set(ea) == set(eb) == {"x", "x_epoch", "m"}
    for k in ea:
        assert torch.equal(ea[k], eb[k]), k
    assert torch.equal(a.step_metrics().callback["x_step"], b.step_metrics().callback["x_step"])


def _roundtrip(state: dict) -> Any:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_results_refuse_a_state_of_the_other_kind() -> None:
    with pytest.raises(ValueError, match="evaluation collection, this one is training"):
        ResultCollection(training=True).load_state_dict(ResultCollection(training=False).state_dict())


def test_progress_round_trip_and_errors() -> None:
    p = Progress()
    p.count_batch((torch.zeros(5, 2),))
    p.global_step, p.epoch, p.sanity_done = 3, 2, True
    q = Progress()
    q.load_state_dict(torch.load(_roundtrip(p.state_dict()), weights_only=True))
    assert q.state_dict() == p.state_dict() and q.timestamp() == Timestamp(2, 0, 3, 1, 5)
    with pytest.raises(KeyError, match="unknown keys \\['bogus'\\]"):
        q.load_state_dict({"bogus": 1})


def test_control_round_trip_keeps_pending_requests_and_history() -> None:
    c = Control(lambda: Timestamp(1, 2, 3, 4, 5))
    c.request_stop("enough", by="me")
    c.skip_epoch("why not", by="you")
    d = Control(lambda: Timestamp())
    d.load_state_dict(torch.load(_roundtrip(c.state_dict()), weights_only=True))
    assert d.stop_requested and d.skip_epoch_requested and not d.validate_requested
    assert [(r.action, r.by, r.timestamp, r.reason) for r in d.history] == [
        (r.action, r.by, r.timestamp, r.reason) for r in c.history]
    with pytest.raises(KeyError, match="unknown pending request 'nope'"):
        d.load_state_dict({"pending": {"nope": True}})


# -- the machine's position --------------------------------------------------------------------------------------
def test_machine_starts_where_asked_and_exposes_its_position() -> None:
    seen: list[tuple[str, str | None]] = []
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: (seen.append(("a", m.position)), "b")[1], to={"b"})
    m.add_state("b", lambda ctx: (seen.append(("b", m.position)), "c")[1], to={"c"})
    m.add_state("c", lambda ctx: (seen.append(("c", m.position)), DONE)[1], to={DONE})
    assert m.position is None
    m.run(None, start="b")
    assert seen == [("b", "b"), ("c", "c")] and m.position is None
    seen.clear()
    m.insert("watch", lambda ctx: None, after="a")  # the slow path (inserted states) tracks it too
    m.run(None)
    assert seen == [("a", "a"), ("b", "b"), ("c", "c")]
    with pytest.raises(KeyError, match="machine 'm' has no state 'zz'"):
        m.run(None, start="zz")


def test_the_position_stays_on_the_failing_state() -> None:
    m = Machine("m", initial="a")
    m.add_state("a", lambda ctx: "b", to={"b"})
    m.add_state("b", lambda ctx: 1 / 0, to={DONE})
    with pytest.raises(ZeroDivisionError):
        m.run(None)
    assert m.position == "b"


def test_batch_ended_sees_the_counters_of_a_finished_batch(kit: Any) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    rows: list[tuple] = []

    @trainer.on(pl.BatchEnded)
    def row(event: pl.BatchEnded) -> None:
        p = event.trainer.context.progress
        rows.append((event.batch_idx, p.batch_idx, p.total_batch_idx, event.trainer.global_step, p.batches_stepped))

    trainer.fit(kit.Model(), kit.loader(6, batch_size=2))
    assert rows == [(0, 1, 1, 1, 0), (1, 2, 2, 2, 1), (2, 3, 3, 3, 2)]
