"""`python -m engine trace schema|summary|show`, `--plot`, and `python -m engine graph --machine module:callable`."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.__main__ import main
from engine.trace import TraceConfig, json_schema, read_trace, sparkline, summary
from engine.trace.schema import TraceHeader, TraceRecord

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0, logger=False)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in this process (the subprocess form is in test_trace_diff/replay)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
            print(exc.code, file=sys.stderr)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


class Stopper:
    def on_epoch_ended(self, event: Any) -> None:
        if event.timestamp.epoch == 1:
            event.control.request_stop("enough", by="Stopper")


@pytest.fixture()
def trace(kit: Any, tmp_path: Path) -> Path:
    trainer = kit.trainer(max_epochs=5, trace=str(tmp_path / "t.jsonl"), callbacks=[Stopper()], **QUIET)
    trainer.fit(kit.Model(), kit.loader(16, batch_size=2))
    return tmp_path / "t.jsonl"


def test_schema_is_published_and_matches_the_models() -> None:
    proc = cli("trace", "schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema == json.loads(json.dumps(json_schema()))
    assert schema["schema_version"] == 1 and "loss" in schema["record"]["properties"]
    assert set(TraceRecord.model_fields) <= set(schema["record"]["properties"])
    assert "handlers" in schema["header"]["properties"] and TraceHeader.model_fields["schema_version"].default == 1


def test_summary_names_the_control_decision_and_draws_the_loss(trace: Path, tmp_path: Path) -> None:
    text = summary(trace)
    assert "epoch=1 batch=7 step=16: stop by Stopper (enough)" in text
    assert "BatchEnded" in text and "slowest states" in text
    curve = [r["loss"] for r in read_trace(trace).of("BatchEnded")]
    assert sparkline(curve) in text and len(sparkline(curve)) == len(curve) == 16
    proc = cli("trace", "summary", str(trace), "--plot", str(tmp_path / "loss.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = cli("trace", "show", str(trace), "--event", "ControlRequested")
    assert proc.returncode == 0 and "stop by Stopper" in proc.stdout


def test_cli_reports_a_corrupt_trace_with_its_line(trace: Path, tmp_path: Path) -> None:
    lines = trace.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:6]) + "garbage\n" + "".join(lines[7:]))
    proc = cli("trace", "diff", str(trace), str(bad))
    assert proc.returncode == 2 and "bad.jsonl:7" in proc.stderr


def test_sparkline_buckets() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)), width=40)) == 40 and sparkline([]) == ""


def test_graph_renders_a_custom_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_loops.py").write_text(
        "from engine.loops import build_fit_machine\n"
        "def ema_machine():\n"
        "    m = build_fit_machine().copy()\n"
        "    m.insert('ema', lambda loop: None, after='optimizer_step')\n"
        "    return m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = cli("graph", "--machine", "my_loops:ema_machine")
    assert proc.returncode == 0, proc.stderr
    assert "optimizer_step --> ema" in proc.stdout and "ema --> batch" in proc.stdout
    assert cli("graph").stdout.startswith("stateDiagram-v2")
    bad = cli("graph", "--machine", "nomodule")
    assert bad.returncode != 0 and "expected 'package.module:Name'" in bad.stderr


def test_trace_config_dump_round_trips() -> None:
    cfg = TraceConfig(path="x.jsonl", level="full", param_checksum_every=10, include=["StateChanged"])
    assert TraceConfig.model_validate(cfg.model_dump()) == cfg
