"""Recording traces: flags and defaults, levels, what a record holds, no sync at 'step', buffered writes that survive
SIGKILL, and the tolerant reader (truncated last line accepted, corrupt middle line reported with its number)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import engine as pl
from engine import events as ev
from engine.errors import MisconfigurationException
from engine.trace import TraceConfig, TraceCorrupt, read_trace
from hooks.csv_logger import CSVLogger
from hooks.trace_recorder import default_trace_path, fingerprint

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0)


def fit(kit: Any, n: int = 8, epochs: int = 2, **flags: Any) -> pl.Trainer:
    class Logging(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    trainer = kit.trainer(max_epochs=epochs, **{**QUIET, **flags})
    trainer.fit(Logging(), kit.loader(n, batch_size=2))
    return trainer


def test_default_is_step_level_next_to_the_logs(kit: Any, tmp_path: Path) -> None:
    trainer = fit(kit, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    path = Path(trainer.logger.log_dir) / "trace.jsonl"
    assert trainer.tracers[0].path == path
    trace = read_trace(path)
    assert trace.level == "step" and not trace.truncated
    h = trace.header
    assert h["schema_version"] == 1 and h["torch"] == torch.__version__ and h["world_size"] == 1
    assert h["config"]["max_epochs"] == 2 and "fit" in h["machines"] and "stateDiagram-v2" in h["machines"]["fit"]
    assert "TraceRecorder.BatchEnded" in h["handlers"]["BatchEnded"]
    batches = trace.of("BatchEnded")
    assert len(batches) == 8 and [r["batch_idx"] for r in batches[:4]] == [0, 1, 2, 3]
    assert [r["seq"] for r in trace.records] == list(range(len(trace.records)))
    first = batches[0]
    assert isinstance(first["loss"], float) and first["lr"] == [0.05] and len(first["fp"]) == 8
    assert first["ts"] == [0, 0, 1, 1, 2] and first["stage"] == "train" and first["state"] == "optimizer_step"
    written = trace.of("MetricsWritten")
    assert [r["step"] for r in written][:2] == [0, 1] and "epoch" in written[0]["metrics"]
    names = [r["ev"] for r in trace.records]
    assert names[0] == "Setup" and names[-1] == "Teardown" and "EpochCompleted" in names


@pytest.mark.parametrize("flags", [dict(logger=False), dict(fast_dev_run=2)])
def test_no_logger_means_no_trace_unless_asked(kit: Any, tmp_path: Path, flags: dict) -> None:
    trainer = fit(kit, **flags)
    assert trainer.tracers == [] and not list(tmp_path.rglob("trace*.jsonl"))
    trainer = fit(kit, trace=str(tmp_path / "asked.jsonl"), **flags)
    assert read_trace(tmp_path / "asked.jsonl").of("BatchEnded")


def test_trace_false_turns_it_off(kit: Any, tmp_path: Path) -> None:
    fit(kit, logger=CSVLogger(tmp_path), trace=False)
    assert not list(tmp_path.rglob("trace*.jsonl"))


def test_levels_epoch_step_full(kit: Any, tmp_path: Path) -> None:
    counts = {}
    for level in ("epoch", "step", "full"):
        fit(kit, logger=False, trace=TraceConfig(path=str(tmp_path / f"{level}.jsonl"), level=level))
        counts[level] = {r["ev"] for r in read_trace(tmp_path / f"{level}.jsonl").records}
    assert "BatchEnded" not in counts["epoch"] and {"EpochStarted", "EpochEnded", "Setup"} <= counts["epoch"]
    assert "BatchEnded" in counts["step"] and "StateChanged" not in counts["step"]
    assert {"StateChanged", "BatchStarted", "BeforeBackward", "OptimizerStepped"} <= counts["full"]
    fit(kit, logger=False, trace=TraceConfig(path=str(tmp_path / "x.jsonl"), level="epoch", include=["BatchEnded"],
                                             exclude=["EpochStarted"]))
    names = {r["ev"] for r in read_trace(tmp_path / "x.jsonl").records}
    assert "BatchEnded" in names and "EpochStarted" not in names


def test_trace_flag_values_and_errors(tmp_path: Path) -> None:
    assert pl.Trainer(trace="full", logger=False).settings.trace.level == "full"
    assert pl.Trainer(trace=tmp_path / "t.jsonl", logger=False).settings.trace.path == str(tmp_path / "t.jsonl")
    assert pl.Trainer(trace=True, logger=False).settings.trace == TraceConfig()
    with pytest.raises(MisconfigurationException, match=r"trace='stpe'.*did you mean 'step'"):
        pl.Trainer(trace="stpe")
    with pytest.raises(TypeError, match=r"Trainer\(trace=3\)"):
        pl.Trainer(trace=3)
    with pytest.raises(MisconfigurationException, match=r"verify_trace='nope.jsonl'\): no such file"):
        pl.Trainer(verify_trace="nope.jsonl")
    with pytest.raises(ValueError, match="unknown event type"):
        TraceConfig(include=["BatchEndd"])


def test_rank_gets_its_own_file() -> None:
    assert default_trace_path("logs", 0) == Path("logs/trace.jsonl")
    assert default_trace_path("logs", 3) == Path("logs/trace.rank3.jsonl")
    assert default_trace_path("logs", 1, "out/run.jsonl") == Path("out/run.rank1.jsonl")


def test_fingerprint_sees_order_and_content() -> None:
    x = torch.arange(12.0).reshape(6, 2)
    assert fingerprint((x, x[:, 0])) == fingerprint((x.clone(), x[:, 0].clone()))
    assert fingerprint((x.flip(0), x[:, 0])) != fingerprint((x, x[:, 0]))
    assert fingerprint(x.t()) == fingerprint(x.t().contiguous())  # a non-contiguous view hashes its values
    assert fingerprint({"a": x.bfloat16()}) is not None and fingerprint(["no tensors"]) is None


def test_step_level_keeps_tensors_until_the_flush(kit: Any, tmp_path: Path) -> None:
    """No .item() per step: the buffered records still hold the loss tensors; the flush converts them."""
    seen: list[list[Any]] = []
    trainer = kit.trainer(max_epochs=1, logger=False, trace=TraceConfig(path=str(tmp_path / "t.jsonl")), **QUIET)

    @trainer.on(ev.BatchEnded)
    def peek(event: ev.BatchEnded) -> None:
        sink = trainer.tracers[0].sink
        seen.append([type(r.get("loss")) for r in sink.buffer if r["ev"] == "BatchEnded"])

    trainer.fit(kit.Model(), kit.loader(8, batch_size=2))
    assert seen[-1] == [torch.Tensor] * 3  # the records of batches 0-2 while batch 3 ends
    losses = [r["loss"] for r in read_trace(tmp_path / "t.jsonl").of("BatchEnded")]
    assert len(losses) == 4 and all(type(v) is float for v in losses)


def test_fit_then_test_append_to_one_trace(kit: Any, tmp_path: Path) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, trace=str(tmp_path / "t.jsonl"), **QUIET)
    model = kit.Model()
    trainer.fit(model, kit.loader(4, batch_size=2))
    trainer.test(model, kit.loader(4, batch_size=2), verbose=False)
    trace = read_trace(tmp_path / "t.jsonl")
    assert [r["fn"] for r in trace.of("Setup")] == ["fit", "test"]
    assert len(trace.of("TestBatchEnded")) == 2 and "test_loss" in trace.of("TestEnded")[0]["cbm"]


def test_param_checksum_and_grad_norm(kit: Any, tmp_path: Path) -> None:
    fit(kit, logger=False, gradient_clip_val=0.5,
        trace=TraceConfig(path=str(tmp_path / "t.jsonl"), param_checksum_every=2))
    batches = read_trace(tmp_path / "t.jsonl").of("BatchEnded")
    assert [("pc" in r) for r in batches[:4]] == [False, True, False, True]
    assert all(isinstance(r["gn"], float) for r in batches)


def test_grad_norm_is_recorded_on_the_batches_that_step_only(kit: Any, tmp_path: Path) -> None:
    fit(kit, logger=False, gradient_clip_val=0.5, accumulate_grad_batches=2, trace=str(tmp_path / "t.jsonl"))
    batches = read_trace(tmp_path / "t.jsonl").of("BatchEnded")
    assert [("gn" in r) for r in batches[:4]] == [False, True, False, True]  # no stale norm on micro-batches


_KILLED = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import TinyModel, make_loader
import engine as pl

class Kill(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 3:
            os.kill(os.getpid(), signal.SIGKILL)

trainer = pl.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, trace={path!r}, callbacks=[Kill()])
trainer.fit(TinyModel(), make_loader(16, batch_size=2))
"""


def test_a_sigkilled_run_leaves_a_readable_trace(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    script = _KILLED.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    trace = read_trace(path)
    epochs = sorted({r["ts"][0] for r in trace.of("BatchEnded")})
    assert epochs == [0, 1] and len(trace.of("BatchEnded")) == 16  # everything up to the last flush (epoch 1's end)
    assert trace.records[-1]["ev"] in ("EpochCompleted", "EpochStarted")


def test_truncated_last_line_is_tolerated_and_corrupt_middle_line_is_reported(kit: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    fit(kit, logger=False, trace=str(path))
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    trace = read_trace(cut)
    assert trace.truncated and len(trace.records) == len(lines) - 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:4]) + '{"seq": 3, "ev": "Batch' + "\n" + "".join(lines[5:]))
    with pytest.raises(TraceCorrupt, match=r"bad\.jsonl:5: not valid JSON") as info:
        read_trace(bad)
    assert info.value.line == 5
    not_a_trace = tmp_path / "x.jsonl"
    not_a_trace.write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(TraceCorrupt, match="not a statetrain trace header"):
        read_trace(not_a_trace)


def test_an_exception_flushes_the_trace_and_is_recorded(kit: Any, tmp_path: Path) -> None:
    class Boom(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.current_epoch == 1 and batch_idx == 2:
                raise ValueError("bad batch")
            return super().training_step(batch, batch_idx)

    trainer = kit.trainer(max_epochs=3, logger=False, trace=str(tmp_path / "t.jsonl"), **QUIET)
    with pytest.raises(ValueError, match="bad batch"):
        trainer.fit(Boom(), kit.loader(8, batch_size=2))
    trace = read_trace(tmp_path / "t.jsonl")
    assert len(trace.of("BatchEnded")) == 6 and trace.of("ExceptionRaised")[0]["error"] == "ValueError: bad batch"
    assert trace.records[-1]["ev"] == "Teardown" or trace.records[-1]["ev"] == "ExceptionRaised"


def test_an_unwritable_trace_warns_once_and_training_goes_on(kit: Any, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(RuntimeWarning, match=r"trace .*trace\.jsonl: cannot write"):
        trainer = fit(kit, logger=False, trace=str(tmp_path / "file" / "trace.jsonl"))
    assert trainer.global_step == 8 and trainer.tracers[0].sink.buffer == []  # nothing piles up in memory


def test_records_match_the_published_schema(kit: Any, tmp_path: Path) -> None:
    fit(kit, logger=CSVLogger(tmp_path), trace=TraceConfig(path=str(tmp_path / "t.jsonl"), level="full"))
    trace = read_trace(tmp_path / "t.jsonl", validate=True)
    assert len(trace.records) > 50


def test_a_rank_above_zero_writes_its_own_file(tmp_path: Path) -> None:
    """What a DDP rank does (one process here: the run view says rank 2 of 4)."""
    import types

    from hooks.trace_recorder import TraceRecorder

    machine = types.SimpleNamespace(position="optimizer_step", name="fit", to_mermaid=lambda: "stateDiagram-v2")
    run = types.SimpleNamespace(stage="train", global_rank=2, world_size=4, machine=machine, trainer=None,
                                eval_machine=None, pipeline=None, callback_metrics={})
    recorder = TraceRecorder(TraceConfig(path=str(tmp_path / "trace.jsonl")))
    recorder.record(ev.Setup(run, pl.Timestamp(), "fit"))
    recorder.on_batch_ended(ev.BatchEnded(run, pl.Timestamp(0, 0, 1, 1, 2), {"loss": torch.tensor(0.25)},
                                          (torch.ones(2, 3),), 0))
    recorder.record(ev.Teardown(run, pl.Timestamp(0, 0, 1, 1, 2), "fit"))
    assert recorder.path == tmp_path / "trace.rank2.jsonl" and not (tmp_path / "trace.jsonl").exists()
    trace = read_trace(tmp_path / "trace.rank2.jsonl")
    assert trace.header["rank"] == 2 and trace.header["world_size"] == 4
    assert [r["rank"] for r in trace.records] == [2, 2, 2] and trace.of("BatchEnded")[0]["loss"] == 0.25
