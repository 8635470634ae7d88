"""Import layering and Lightning's import paths.

Every `hooks` module, `engine.events` and each Lightning-path module must import on its own in a fresh interpreter
(no cycle through `engine/__init__` -> `engine.trainer` -> `hooks.callback`), and the light ones must not load the
Trainer. The Lightning paths (`engine.callbacks`, `engine.loggers[.logger|.tensorboard|.csv_logs]`,
`engine.profilers`, `engine.utilities[.rank_zero|.seed]`, `engine.core`) are the real classes, not copies.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[2]
HOOK_MODULES = sorted("hooks" if p.stem == "__init__" else f"hooks.{p.stem}" for p in (ROOT / "hooks").glob("*.py"))
LIGHTNING_PATHS = ["engine.callbacks", "engine.loggers", "engine.loggers.logger", "engine.loggers.tensorboard",
                   "engine.loggers.csv_logs", "engine.profilers", "engine.utilities", "engine.utilities.rank_zero",
                   "engine.utilities.seed", "engine.core"]
NO_TRAINER = ["engine", "engine.events", *LIGHTNING_PATHS]  # importing these alone must not load engine.trainer
_RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # the subprocesses start without these


# Runs in one fresh interpreter: preloads the heavy third-party packages (never engine/hooks/strategies), then
# forks one child per job, so each child imports its module with none of ours loaded, exactly as `python -c
# "import X"` would, without paying torch's ~1.5 s import per module. A child reports "" or the traceback.
_FORK_SERVER = r"""
import importlib, json, os, sys, traceback
import numpy, pydantic, torch, tqdm, yaml  # noqa: F401
ours = [m for m in sys.modules if m.split(".")[0] in ("engine", "hooks", "strategies")]
assert not ours, ours
jobs = json.loads(sys.argv[1])
pipes = {}
for key, (module, env, code) in jobs.items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.environ.update(env)
            importlib.import_module(module)
            exec(code)
            msg = ""
        except BaseException:
            msg = traceback.format_exc()
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    pipes[key] = (pid, r)
out = {}
for key, (pid, r) in pipes.items():
    with os.fdopen(r, "rb") as f:
        out[key] = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status and not out[key]:
        out[key] = f"child exited with status {status}"
print(json.dumps(out))
"""


def _start(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -c code *args` from the repository root, without the rank variables of the calling environment."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in _RANK_ENV or k in (env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


_NO_TRAINER = "assert 'engine.trainer' not in sys.modules, 'this import loaded engine.trainer'"


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, str]:
    """Job key -> "" when its module imported alone in a fresh process (and its check passed), else the traceback."""
    jobs = {m: (m, {}, "") for m in HOOK_MODULES}
    jobs.update({m: (m, {}, _NO_TRAINER) for m in NO_TRAINER})
    read_rank = "r = sys.modules['engine.utilities.rank_zero'].rank_zero_only.rank; assert r == {}, r"
    jobs["rank-from-env"] = ("engine.utilities.rank_zero", {"RANK": "3", "LOCAL_RANK": "1"}, read_rank.format(3))
    jobs["rank-default"] = ("engine.utilities.rank_zero", {}, read_rank.format(0))
    # the case the fork server stands for, once for real and alongside it: a plain `python -c "import hooks.callback"`
    plain = _start("import sys, hooks.callback; assert 'engine.trainer' not in sys.modules")
    rc, out, err = _finish(_start(_FORK_SERVER, json.dumps(jobs)))
    assert rc == 0, err[-3000:]
    reports = json.loads(out.strip().splitlines()[-1])
    rc, _, err = _finish(plain)
    reports["plain:hooks.callback"] = "" if rc == 0 else err or f"exit status {rc}"
    return reports


def _assert_ok(report: str) -> None:
    assert report == "", report[-3000:]


def test_hooks_callback_imports_in_a_plain_fresh_interpreter(fresh_imports):
    """`python -c "import hooks.callback"` raised ImportError (a cycle through engine/__init__ and the Trainer)."""
    _assert_ok(fresh_imports["plain:hooks.callback"])


@pytest.mark.parametrize("module", HOOK_MODULES)
def test_every_hooks_module_imports_on_its_own(fresh_imports, module):
    _assert_ok(fresh_imports[module])


@pytest.mark.parametrize("module", NO_TRAINER)
def test_light_imports_do_not_load_the_trainer(fresh_imports, module):
    _assert_ok(fresh_imports[module])


def test_rank_zero_only_rank_is_read_from_the_environment(fresh_imports):
    _assert_ok(fresh_imports["rank-from-env"])  # RANK wins over LOCAL_RANK, as in Lightning
    _assert_ok(fresh_imports["rank-default"])  # none set: rank 0


def test_lazy_names_of_the_engine_package():
    import engine as pl
    import engine.trainer
    import hooks.callback

    from engine import Callback, Trainer

    assert Trainer is engine.trainer.Trainer is pl.Trainer
    assert Callback is hooks.callback.Callback is pl.Callback
    for name in pl.__all__:
        assert getattr(pl, name) is not None, name
    assert pl.loggers.CSVLogger is pl.CSVLogger  # submodules as attributes, as `pl.loggers` in Lightning
    assert "Trainer" in dir(pl) and "callbacks" in dir(pl)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        pl.Nope  # noqa: B018


def test_lightning_paths_are_the_real_classes():
    import engine.callbacks
    import engine.core
    import engine.loggers
    import engine.loggers.csv_logs
    import engine.loggers.logger
    import engine.loggers.tensorboard
    import engine.profilers
    import engine.utilities
    import engine.utilities.rank_zero
    import engine.utilities.seed
    import hooks
    from engine.datamodule import LightningDataModule, move_data_to_device
    from engine.hparams import AttributeDict
    from engine.module import LightningModule
    from engine.seed import seed_everything

    for name in engine.callbacks.__all__:
        assert getattr(engine.callbacks, name) is getattr(hooks, name), name
    for name in engine.loggers.__all__:
        assert getattr(engine.loggers, name) is getattr(hooks, name), name
    for name in engine.profilers.__all__:
        assert getattr(engine.profilers, name) is getattr(hooks, name), name
    assert engine.loggers.logger.Logger is hooks.Logger
    assert engine.loggers.tensorboard.TensorBoardLogger is hooks.TensorBoardLogger
    assert engine.loggers.csv_logs.CSVLogger is hooks.CSVLogger
    assert engine.core.LightningModule is LightningModule
    assert engine.core.LightningDataModule is LightningDataModule
    u = engine.utilities
    assert u.seed_everything is engine.utilities.seed.seed_everything is seed_everything
    assert u.AttributeDict is AttributeDict
    assert u.move_data_to_device is move_data_to_device
    assert u.rank_zero_only is engine.utilities.rank_zero.rank_zero_only
    assert u.isolate_rng is engine.utilities.seed.isolate_rng
    for mod in (engine.callbacks, engine.loggers, engine.profilers, engine.utilities, engine.core):
        assert sorted(mod.__all__) == sorted(set(mod.__all__))
        assert all(hasattr(mod, n) for n in mod.__all__)


def test_rank_zero_only_runs_on_rank_zero_only(monkeypatch):
    from engine.utilities import rank_zero_only

    calls = []

    @rank_zero_only
    def record(x: int) -> int:
        """doc kept"""
        calls.append(x)
        return x * 2

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert record(2) == 4 and calls == [2]
    assert record.__name__ == "record" and record.__doc__ == "doc kept"
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert record(3) is None and calls == [2]
    assert rank_zero_only(lambda: 1, default="skipped")() == "skipped"
    monkeypatch.setattr(rank_zero_only, "rank", None)
    with pytest.raises(RuntimeError, match="rank_zero_only.rank"):
        record(4)


def test_rank_zero_messages(monkeypatch, caplog):
    from engine.utilities import rank_zero_debug, rank_zero_deprecation, rank_zero_info, rank_zero_only, rank_zero_warn

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with caplog.at_level("DEBUG", logger="engine.utilities.rank_zero"):
        rank_zero_info("hello %s", "world")
        rank_zero_debug("details")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", "hello world"), ("DEBUG", "details")]
    assert {r.filename for r in caplog.records} == {Path(__file__).name}  # records point at the caller
    with pytest.warns(UserWarning, match="careful") as rec:
        rank_zero_warn("careful")
    assert rec[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="old") as rec:
        rank_zero_deprecation("old")
    assert rec[0].filename == __file__
    with pytest.warns(RuntimeWarning):
        rank_zero_warn("typed", category=RuntimeWarning)

    monkeypatch.setattr(rank_zero_only, "rank", 2)
    caplog.clear()
    with caplog.at_level("DEBUG", logger="engine.utilities.rank_zero"), warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_zero_info("hidden")
        rank_zero_debug("hidden")
        rank_zero_warn("hidden")
        rank_zero_deprecation("hidden")
    assert caplog.records == []


def test_isolate_rng_and_reset_seed(monkeypatch):
    from engine.utilities.seed import isolate_rng, reset_seed, seed_everything

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    reset_seed()  # nothing exported: a no-op, no warning
    seed_everything(7)
    first = (torch.rand(1).item(), random.random())
    reset_seed()
    assert (torch.rand(1).item(), random.random()) == first

    before = torch.get_rng_state(), random.getstate()
    with isolate_rng():
        torch.rand(3)
        random.random()
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    with pytest.raises(ValueError), isolate_rng(include_cuda=False):
        torch.rand(3)
        raise ValueError
    assert torch.equal(torch.get_rng_state(), before[0])
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def test_ported_lightning_program(tmp_path):
    """A Lightning script with only its imports renamed trains for 2 steps and writes its CSV metrics."""
    import engine as pl
    from engine.callbacks import LearningRateMonitor, ModelSummary
    from engine.loggers import CSVLogger
    from engine.utilities import rank_zero_only

    said = []

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        @rank_zero_only
        def on_train_end(self) -> None:
            said.append(self.trainer.global_step)

    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)), batch_size=2)
    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(max_steps=2, logger=logger, enable_progress_bar=False, enable_checkpointing=False,
                         log_every_n_steps=1, callbacks=[ModelSummary(max_depth=1), LearningRateMonitor()])
    trainer.fit(Regressor(), data)

    assert trainer.global_step == 2 and said == [2]
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r.get("train_loss")] == ["0", "1"]
    assert {float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")} == {0.1}
