"""Graceful stops, in real processes: Ctrl-C (KeyboardInterrupt) exits 130 without a traceback after on_exception
and the loggers' flush; SIGTERM (or a first SIGINT) during fit finishes the step, writes on_signal.ckpt, and exits 75;
resuming from it with ckpt_path='last' is bit-exact; a second SIGINT stops at once. Signal handlers exist only
during fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import engine as pl

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch, engine as pl
    from test_resume import Net, data, trainer

    root, mode = Path(sys.argv[1]), sys.argv[2]
    class Marks(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if mode == "raise" and trainer.global_step == 4:
                raise KeyboardInterrupt
            if trainer.global_step == 4:
                (root / "ready").write_text("x")
            if mode in ("term", "int2") and trainer.global_step >= 4:
                time.sleep(0.2)  # slow steps, so the signal lands inside one
        def on_exception(self, trainer, pl_module, exc):
            (root / "on_exception").write_text(type(exc).__name__)
    root.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(123)
    if mode == "resume":
        model = Net(seed=4)
        trainer(root).fit(model, *data(), ckpt_path="last")
    else:
        model = Net()
        trainer(root, Marks()).fit(model, *data())
    torch.save(model.state_dict(), root / "final.pt")
""")


def start(tmp_path: Path, root: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    return subprocess.Popen([sys.executable, str(script), str(root), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the fit never got going"
        time.sleep(0.02)


@pytest.mark.slow
def test_keyboard_interrupt_exits_130_without_a_traceback(tmp_path: Path) -> None:
    proc = start(tmp_path, tmp_path / "run", "raise")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Detected KeyboardInterrupt, attempting graceful shutdown" in err and "Traceback" not in err
    assert (tmp_path / "run" / "on_exception").read_text() == "KeyboardInterrupt"


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_resumes_bit_exactly(tmp_path: Path) -> None:
    ref = start(tmp_path, tmp_path / "ref", "ref")
    assert ref.wait(timeout=120) == 0
    proc = start(tmp_path, tmp_path / "run", "term")
    wait_for(tmp_path / "run" / "ready", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGTERM after a checkpoint" in err and "Traceback" not in err
    assert (tmp_path / "run" / "ckpt" / "on_signal.ckpt").is_file()
    assert (tmp_path / "run" / "on_exception").read_text() == "SignalStop"
    resumed = start(tmp_path, tmp_path / "run", "resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    a, b = torch.load(tmp_path / "ref" / "final.pt"), torch.load(tmp_path / "run" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_second_sigint_stops_at_once(tmp_path: Path) -> None:
    proc = start(tmp_path, tmp_path / "run", "int2")
    wait_for(tmp_path / "run" / "ready", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # two signals sent back to back are one pending signal to the process
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Detected KeyboardInterrupt" in err


def test_signal_handlers_exist_only_during_fit(kit) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen = []
    t = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    t.on(pl.BatchStarted)(lambda e: seen.append(signal.getsignal(signal.SIGTERM)))
    t.fit(kit.Model(), kit.loader(2, batch_size=2))
    assert seen and seen[0] not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
