"""hooks/logger.py: the Logger base class, version allocation (including concurrent processes), params helpers,
atomic writes and the write-failure guard."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import errno
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch
import yaml

import engine  # noqa: F401  (import order: the engine package before hooks)
from hooks.csv_logger import CSVLogger
from hooks.logger import (
    Logger, LoggerError, add_prefix, allocate_version, atomic_open, flatten_params, next_version, params_to_dict,
    sanitize_params, write_guard, write_hparams_yaml, yaml_safe,
)
from hooks.tensorboard import TensorBoardLogger


class MemoryLogger(Logger):
    """The smallest custom logger: only the abstract members."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict, int | None]] = []
        self.saves = 0

    @property
    def name(self) -> str:
        return "mem"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((dict(metrics), step))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def save(self) -> None:
        self.saves += 1


# -- the base class ---------------------------------------------------------------------------------------------------
def test_logger_is_abstract_and_defaults_are_lightnings():
    with pytest.raises(TypeError, match="abstract"):
        Logger()  # type: ignore[abstract]
    lg = MemoryLogger()
    assert (lg.save_dir, lg.root_dir, lg.log_dir, lg.experiment) == (None, None, None, None)
    assert lg.group_separator == "/" and lg.strict is False and lg.error is None
    lg.log_graph(torch.nn.Linear(1, 1))
    lg.after_save_checkpoint(object())
    lg.finalize("success")  # the default finalize saves
    assert lg.saves == 1


def test_logger_error_is_a_runtime_error():
    assert issubclass(LoggerError, RuntimeError)


def test_write_guard_reports_the_first_failure_once(errors):
    lg = MemoryLogger()
    first = OSError(errno.ENOSPC, "No space left on device")
    with write_guard(lg, "/some/dir"):
        raise first
    with write_guard(lg, "/other"):
        raise PermissionError(errno.EACCES, "denied")
    assert lg.error is first
    assert len(errors.calls) == 1
    event, keys = errors.calls[0]
    assert event == "logger write failed"
    assert keys["logger"] == "MemoryLogger" and keys["path"] == "/some/dir"
    assert "No space left" in keys["error"] and "training continues" in keys["then"]


def test_write_guard_lets_other_errors_through_and_mentions_strict(errors):
    lg = MemoryLogger()
    lg.strict = True
    with pytest.raises(ValueError, match="not an OSError"):
        with write_guard(lg, "/d"):
            raise ValueError("not an OSError")
    assert lg.error is None
    with write_guard(lg, "/d"):
        raise OSError(errno.EROFS, "Read-only file system")
    assert "strict=True" in errors.messages[0]


def test_write_guard_works_for_a_custom_logger_that_skips_super_init(errors):
    class Bare(MemoryLogger):
        def __init__(self) -> None:  # no super().__init__()
            pass

    lg = Bare()
    with write_guard(lg, "/x"):
        raise OSError("boom")
    assert isinstance(lg.error, OSError) and Bare.error is None  # instance attribute, class default untouched
    assert len(errors.messages) == 1


# -- version directories ------------------------------------------------------------------------------------------
def test_next_version_counts_only_version_n_directories(tmp_path):
    assert next_version(str(tmp_path / "missing")) == 0
    assert next_version(str(tmp_path)) == 0
    for n in (0, 1, 2):
        (tmp_path / f"version_{n}").mkdir()
    (tmp_path / "version_9").write_text("a file, not a run")
    (tmp_path / "version_x").mkdir()
    (tmp_path / "other_7").mkdir()
    assert next_version(str(tmp_path)) == 3


def test_allocate_version_creates_the_next_directory(tmp_path):
    root = tmp_path / "exp"
    assert allocate_version(str(root)) == 0  # creates root too
    for n in (1, 2):
        (root / f"version_{n}").mkdir()
    assert allocate_version(str(root)) == 3
    assert (root / "version_3").is_dir()
    (root / "version_7").mkdir()  # gaps: 1 + the largest
    assert allocate_version(str(root)) == 8


def test_allocate_version_skips_a_file_in_the_way(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_1").write_text("x")  # not counted by the scan, but mkdir fails on it
    assert allocate_version(str(tmp_path)) == 2


def test_allocate_version_raises_oserror_when_root_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OSError):
        allocate_version(str(f))
    with pytest.raises(OSError):
        allocate_version(str(f / "below"))


def _allocate_many(root: str, n: int, barrier, out) -> None:
    barrier.wait()
    out.put([allocate_version(root) for _ in range(n)])


def _logger_dirs(save_dir: str, barrier, out) -> None:
    barrier.wait()
    out.put([CSVLogger(save_dir).log_dir, TensorBoardLogger(save_dir).log_dir])


def _run_concurrently(target, args, procs: int) -> list:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    return results


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_concurrent_processes_get_distinct_versions(tmp_path):
    root = str(tmp_path / "runs")
    results = _run_concurrently(_allocate_many, (root, 5), procs=6)
    versions = sorted(v for r in results for v in r)
    assert versions == list(range(30))
    assert sorted(os.listdir(root)) == sorted(f"version_{v}" for v in range(30))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_concurrent_loggers_in_one_directory_get_distinct_versions(tmp_path):
    results = _run_concurrently(_logger_dirs, (str(tmp_path),), procs=4)
    dirs = [d for r in results for d in r]
    assert len(set(dirs)) == 8
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == sorted(f"version_{v}" for v in range(8))


# -- params ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Opt:
    name: str = "adam"
    lr: float = 1e-3


def test_params_to_dict_accepts_lightnings_containers():
    assert params_to_dict(None) == {}
    assert params_to_dict(argparse.Namespace(a=1)) == {"a": 1}
    assert params_to_dict(Opt()) == {"name": "adam", "lr": 1e-3}
    assert params_to_dict({"b": 2}) == {"b": 2}
    with pytest.raises(TypeError, match=r"log_hyperparams\(params=...\) got list; expected a dict"):
        params_to_dict([1, 2])


def test_flatten_params_matches_lightning():
    params = {
        "a": {"b": "c", "d": {"e": 1}},
        5: {"x": 2},
        "ns": argparse.Namespace(k=3),
        "opt": Opt(),
        "dl": [{"a": 1, "c": 3}, {"b": 2}],
        "l": [1, 2, 3],
        "empty": [],
    }
    assert flatten_params(params) == {
        "a/b": "c", "a/d/e": 1, "5/x": 2, "ns/k": 3, "opt/name": "adam", "opt/lr": 1e-3,
        "dl/0/a": 1, "dl/0/c": 3, "dl/1/b": 2, "l": [1, 2, 3], "empty": [],
    }
    assert flatten_params({"a": {"b": 1}}, delimiter=".") == {"a.b": 1}


def test_sanitize_params_keeps_primitives_and_stringifies_the_rest():
    out = sanitize_params({
        "f": 0.3, "i": 1, "s": "abc", "b": True, "list": [1, 2, 3], "ns": argparse.Namespace(foo=3),
        "cls": torch.nn.BatchNorm1d, "none": None, "t0": torch.tensor(2.5), "t1": torch.tensor([7]),
        "tn": torch.zeros(2, 2), "np": np.float64(0.25), "npi": np.int64(4), "arr": np.ones((2, 2)),
    })
    assert out["f"] == 0.3 and out["i"] == 1 and out["s"] == "abc" and out["b"] is True
    assert out["list"] == "[1, 2, 3]" and out["ns"] == "Namespace(foo=3)" and out["none"] == "None"
    assert out["cls"] == "<class 'torch.nn.modules.batchnorm.BatchNorm1d'>"
    assert out["t0"] == 2.5 and out["t1"] == 7 and type(out["np"]) is float and type(out["npi"]) is int
    assert out["tn"].startswith("tensor(") and out["arr"].startswith("[[")


class Color(enum.Enum):
    RED = 1


def test_yaml_safe_output_round_trips_through_safe_dump(tmp_path):
    params = {
        "lr": np.float32(0.5), "n": np.int64(3), "t": torch.tensor(1.5), "tuple": (1, "a"), "color": Color.RED,
        "obj": object, "nested": {"ns": argparse.Namespace(x=1), "opt": Opt(), 3: "int key"}, "none": None,
    }
    path = tmp_path / "hparams.yaml"
    write_hparams_yaml(str(path), params)
    loaded = yaml.safe_load(path.read_text())
    assert loaded == {
        "lr": 0.5, "n": 3, "t": 1.5, "tuple": [1, "a"], "color": "RED", "obj": "<class 'object'>",
        "nested": {"ns": {"x": 1}, "opt": {"name": "adam", "lr": 1e-3}, 3: "int key"}, "none": None,
    }
    assert yaml_safe(True) is True and os.listdir(tmp_path) == ["hparams.yaml"]


def test_add_prefix():
    m = {"a": 1.0}
    assert add_prefix(m, "", "-") is m
    assert add_prefix(m, "train", "-") == {"train-a": 1.0}


# -- files ------------------------------------------------------------------------------------------------------------
def test_atomic_open_replaces_only_on_success(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_open(str(path)) as fh:
            fh.write("new, partial")
            raise RuntimeError("half way")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["f.csv"]
    with atomic_open(str(path)) as fh:
        fh.write("new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["f.csv"]


def test_the_report_goes_through_the_framework_log():
    from engine.log import capture_logs

    lg = MemoryLogger()
    with capture_logs() as logs:
        with write_guard(lg, "/full/disk"):
            raise OSError(errno.ENOSPC, "No space left on device")
    (entry,) = [e for e in logs if e["event"] == "logger write failed"]
    assert entry["level"] == "error" and entry["logger"] == "MemoryLogger" and entry["path"] == "/full/disk"
