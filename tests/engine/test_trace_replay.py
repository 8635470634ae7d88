"""Replay a trace through handlers without a model: TensorBoard logs rebuilt with the same scalars (read back with
TensorBoard's EventAccumulator), EarlyStopping stopping at the same epoch, a clear error for an unrecorded field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import engine as pl
from engine import events as ev
from engine.trace import TraceFieldMissing, read_trace, replay
from hooks.early_stopping import EarlyStopping
from hooks.tensorboard import TensorBoardLogger

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0)
VAL = [1.0, 0.8, 0.9, 0.95, 0.97, 0.5, 0.4, 0.3]  # the val_loss of each epoch


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def scripted(kit: Any) -> Any:
    class Scripted(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", VAL[self.current_epoch])
    return Scripted()


def test_tensorboard_replay_writes_the_same_scalars(kit: Any, tmp_path: Path) -> None:
    live = TensorBoardLogger(tmp_path / "live")
    trainer = kit.trainer(max_epochs=3, logger=live, log_every_n_steps=2, **QUIET)
    trainer.fit(scripted(kit), kit.loader(12, batch_size=2), kit.loader(4, batch_size=2))
    trace = Path(live.log_dir) / "trace.jsonl"
    rebuilt = TensorBoardLogger(tmp_path / "rebuilt")
    result = replay(trace, [rebuilt])
    assert result.events == len(read_trace(trace).of("MetricsWritten")) > 5
    expected = read_scalars(live.log_dir)
    assert set(expected) >= {"train_loss_step", "train_loss_epoch", "val_loss", "epoch", "hp_metric"}
    assert read_scalars(rebuilt.log_dir) == expected


def test_early_stopping_replayed_stops_at_the_same_epoch(kit: Any, tmp_path: Path) -> None:
    live_es = EarlyStopping(monitor="val_loss", patience=2)
    trainer = kit.trainer(max_epochs=len(VAL), logger=False, trace=str(tmp_path / "t.jsonl"), callbacks=[live_es],
                          **QUIET)
    trainer.fit(scripted(kit), kit.loader(8, batch_size=2), kit.loader(4, batch_size=2))
    assert live_es.stopped_epoch == 3 and trainer.current_epoch == 4
    live_stop = trainer.control.history[-1]
    again = EarlyStopping(monitor="val_loss", patience=2)
    result = replay(tmp_path / "t.jsonl", [again])
    assert again.stopped_epoch == live_es.stopped_epoch and again.wait_count == live_es.wait_count
    assert result.first_stop.timestamp == live_stop.timestamp and result.first_stop.by == "EarlyStopping"
    assert float(again.best_score) == pytest.approx(0.8)
    eager = EarlyStopping(monitor="val_loss", patience=1)  # what a smaller patience would have decided
    assert replay(tmp_path / "t.jsonl", [eager]).first_stop.timestamp.epoch == 2  # the recorded run went on to 3


class NeedsTheBatch:
    def on_batch_ended(self, event: ev.BatchEnded) -> None:
        event.batch[0].sum()


class CountsLosses:
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.trainers: list[Any] = []

    def on_batch_ended(self, event: ev.BatchEnded) -> None:
        self.losses.append(event.outputs["loss"].item())
        self.trainers.append(event.trainer)


def test_unrecorded_field_is_a_clear_error_and_recorded_ones_are_there(kit: Any, tmp_path: Path) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, trace=str(tmp_path / "t.jsonl"), **QUIET)
    trainer.fit(kit.Model(), kit.loader(8, batch_size=2))
    with pytest.raises(TraceFieldMissing, match=r"BatchEnded\.batch was not recorded in the trace \(level 'step'\)"):
        replay(tmp_path / "t.jsonl", [NeedsTheBatch()])
    counter = CountsLosses()
    replay(tmp_path / "t.jsonl", [counter])
    assert counter.losses == [r["loss"] for r in read_trace(tmp_path / "t.jsonl").of("BatchEnded")]
    assert counter.trainers == [None] * 4

    class UsesTheModel(pl.Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            trainer.optimizers

    with pytest.raises(TraceFieldMissing, match=r"trainer\.optimizers is not available in a replay"):
        replay(tmp_path / "t.jsonl", [UsesTheModel()])


def test_replay_cli(kit: Any, tmp_path: Path) -> None:
    es = EarlyStopping(monitor="val_loss", patience=2)
    trainer = kit.trainer(max_epochs=len(VAL), logger=False, trace=str(tmp_path / "t.jsonl"), callbacks=[es], **QUIET)
    trainer.fit(scripted(kit), kit.loader(8, batch_size=2), kit.loader(4, batch_size=2))
    proc = subprocess.run([sys.executable, "-m", "engine", "trace", "replay", str(tmp_path / "t.jsonl"), "--handler",
                           "hooks.early_stopping:EarlyStopping", "--kw", "monitor=val_loss", "--kw", "patience=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "stop requested by EarlyStopping at epoch=2" in proc.stdout
    assert "(recorded run: stop by EarlyStopping at epoch=3" in proc.stdout


def test_csv_replay_rebuilds_the_same_metrics_file(kit: Any, tmp_path: Path) -> None:
    from hooks.csv_logger import CSVLogger

    live = CSVLogger(tmp_path / "live")
    trainer = kit.trainer(max_epochs=2, logger=live, log_every_n_steps=1, **QUIET)
    trainer.fit(scripted(kit), kit.loader(8, batch_size=2), kit.loader(4, batch_size=2))
    rebuilt = CSVLogger(tmp_path / "rebuilt")
    replay(Path(live.log_dir) / "trace.jsonl", [rebuilt])
    expected = (Path(live.log_dir) / "metrics.csv").read_text()
    assert (Path(rebuilt.log_dir) / "metrics.csv").read_text() == expected and expected.count("\n") > 5
