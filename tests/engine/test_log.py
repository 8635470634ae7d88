"""engine.log: the framework's messages through structlog — formats, level, rank filter, cost, import weight."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from engine import log as log_module
from engine.errors import MisconfigurationException
from engine.log import capture_logs, configure, log

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ENV = ("STATETRAIN_LOG_FORMAT", "STATETRAIN_LOG_LEVEL", "STATETRAIN_LOG_ALL_RANKS", "RANK", "LOCAL_RANK",
        "SLURM_PROCID", "JSM_NAMESPACE_RANK")


@pytest.fixture(autouse=True)
def _clean_log_settings(monkeypatch):
    """Each test starts from the defaults and leaves them behind (the message log is process-wide)."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    log_module.reset()
    yield
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    log_module.reset()


def _emit() -> None:
    log.debug("debug message", step=1)
    log.info("fit started", epochs=2, model="Tiny")
    log.warning("disk is %s", "slow", path="/tmp/x")
    log.error("could not write", path="/tmp/y")


def test_json_lines_carry_event_level_timestamp_logger_rank_and_keys() -> None:
    buf = io.StringIO()
    configure(log_format="json", stream=buf)
    _emit()
    lines = buf.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [r["event"] for r in records] == ["fit started", "disk is slow", "could not write"]
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert all(r["logger"] == "statetrain" and r["rank"] == 0 for r in records)
    assert all(r["timestamp"].endswith("Z") and "T" in r["timestamp"] for r in records)
    assert records[0]["epochs"] == 2 and records[0]["model"] == "Tiny" and records[1]["path"] == "/tmp/x"
    assert list(records[0])[:5] == ["event", "level", "timestamp", "logger", "rank"]


def test_json_exception_is_one_line_with_the_traceback() -> None:
    buf = io.StringIO()
    configure(log_format="json", stream=buf)
    try:
        raise OSError("No space left on device")
    except OSError:
        log.exception("logger failed", path="/tmp/z")
    (line,) = buf.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and "OSError: No space left on device" in record["exception"]


def test_console_format_is_readable_text() -> None:
    buf = io.StringIO()
    configure(log_format="console", stream=buf)
    _emit()
    log.info("Model summary", total=28, table="  | Name\n-------\n0 | layer")
    assert buf.getvalue().splitlines() == [
        "fit started epochs=2 model=Tiny",
        "WARNING: disk is slow path=/tmp/x",
        "ERROR: could not write path=/tmp/y",
        "Model summary total=28",
        "  | Name",
        "-------",
        "0 | layer",
    ]


def test_default_is_console_on_stderr_looked_up_at_write_time(capsys) -> None:
    log.info("hello", a=1)
    captured = capsys.readouterr()
    assert captured.err == "hello a=1\n" and captured.out == ""
    assert log.format == "console"


def test_env_format_and_level(monkeypatch) -> None:
    monkeypatch.setenv("STATETRAIN_LOG_FORMAT", "json")
    monkeypatch.setenv("STATETRAIN_LOG_LEVEL", "warning")
    buf = io.StringIO()
    configure(stream=buf)
    _emit()
    assert [json.loads(line)["level"] for line in buf.getvalue().splitlines()] == ["warning", "error"]
    assert not log.is_enabled("info") and log.is_enabled("ERROR")


def test_argument_beats_env_and_auto_means_env(monkeypatch) -> None:
    monkeypatch.setenv("STATETRAIN_LOG_FORMAT", "json")
    configure(log_format="console")
    assert log.format == "console"
    configure(log_format="auto")
    assert log.format == "json"


def test_explicit_settings_survive_a_later_call_without_them() -> None:
    configure(log_format="json", level="ERROR")
    configure(rank=0)  # what a Trainer without the flags does
    assert (log.format, log.level) == ("json", 40)


def test_debug_level_shows_debug() -> None:
    with capture_logs() as logs:
        log.debug("hidden")
    assert logs == []
    configure(level="DEBUG")
    with capture_logs() as logs:
        log.debug("shown", k=3)
    assert logs == [{"event": "shown", "level": "debug", "logger": "statetrain", "rank": 0, "k": 3}]


def test_nonzero_rank_is_silent(capsys) -> None:
    buf = io.StringIO()
    configure(rank=1, stream=buf)
    _emit()
    log.critical("even this")
    assert buf.getvalue() == "" and log.silent
    with capture_logs() as logs:
        log.error("nothing")
    assert logs == []


def test_env_rank_is_the_default(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    log_module.reset()
    assert log.rank == 3 and log.silent


def test_nonzero_rank_speaks_with_all_ranks_env_or_debug(monkeypatch) -> None:
    buf = io.StringIO()
    monkeypatch.setenv("STATETRAIN_LOG_ALL_RANKS", "1")
    configure(rank=2, stream=buf, log_format="json")
    log.info("from rank two")
    assert json.loads(buf.getvalue())["rank"] == 2
    monkeypatch.delenv("STATETRAIN_LOG_ALL_RANKS")
    buf2 = io.StringIO()
    configure(rank=2, level="DEBUG", stream=buf2, log_format="console")
    log.debug("debugging rank two")
    assert buf2.getvalue() == "[rank 2] DEBUG: debugging rank two\n"


def test_capture_logs_collects_instead_of_writing() -> None:
    buf = io.StringIO()
    configure(stream=buf)
    with capture_logs() as logs:
        log.info("captured", value=1.5)
        log.warning("also")
    assert [(r["event"], r["level"]) for r in logs] == [("captured", "info"), ("also", "warning")]
    assert logs[0]["value"] == 1.5 and buf.getvalue() == ""
    log.info("after")
    assert buf.getvalue() == "after\n"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"log_format": "yaml"}, r"log_format='yaml' is not a message format; expected 'console', 'json' or 'auto'"),
    ({"level": "LOUD"}, r"level='LOUD' is not a log level; expected one of DEBUG, INFO"),
    ({"rank": -1}, r"configure\(rank=-1\): expected the global rank"),
    ({"stream": 3}, r"configure\(stream=3\): expected a text stream"),
])
def test_bad_settings_name_the_value(kwargs, match) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        configure(**kwargs)


def test_bad_env_value_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("STATETRAIN_LOG_LEVEL", "chatty")
    with pytest.raises(MisconfigurationException, match=r"STATETRAIN_LOG_LEVEL='chatty' is not a log level"):
        configure()


def test_a_filtered_call_is_one_no_op_call() -> None:
    """Below the level a method is the shared no-op (its cost is one Python call; benchmarks measure, tests don't)."""
    import engine.log as messages

    configure(level="INFO")
    assert log.debug is messages._nop and log.info is not messages._nop
    assert log.debug("step", loss=1.0) is None
    configure(level="DEBUG")
    assert log.debug is not messages._nop
    configure()


def test_broken_stream_never_breaks_the_caller() -> None:
    buf = io.StringIO()
    configure(stream=buf)
    buf.close()
    log.info("into a closed stream")  # no exception


def test_import_engine_does_not_import_structlog() -> None:
    code = "import sys, engine; print('structlog' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_demo_writes_json_lines_to_stderr(tmp_path) -> None:
    env = dict(os.environ, STATETRAIN_LOG_FORMAT="json", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "engine", "demo", "--epochs", "1"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epochs=1 steps=16" in proc.stdout  # the demo's own line stays on stdout
    json_lines = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in json_lines]
    assert records, f"no JSON message on stderr:\n{proc.stderr}"
    assert any("max_epochs=1" in r["event"] for r in records)
    assert all({"event", "level", "timestamp", "logger", "rank"} <= set(r) for r in records)


def test_capture_keeps_capturing_across_configure_calls() -> None:
    with capture_logs() as logs:
        configure(log_format="json")  # e.g. a Trainer built inside the block
        log.info("still captured")
    assert [r["event"] for r in logs] == ["still captured"]
    assert log.format == "json"
