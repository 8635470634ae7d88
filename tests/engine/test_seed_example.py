"""examples/seed.py, the project's seed program, runs unchanged: as a script in a fresh process and in-process."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine as pl

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed.py"
TIME_LIMIT_S = 60  # the script itself takes a few seconds on 2 CPU cores


def test_seed_script_runs_in_a_fresh_process(tmp_path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SEED)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=2 * TIME_LIMIT_S)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"examples/seed.py failed:\n{proc.stdout}\n{proc.stderr}"
    assert elapsed < TIME_LIMIT_S
    assert "Traceback" not in proc.stderr
    assert "Trainable params" in proc.stderr  # the default model summary, through the framework's message log
    assert "Epoch 2: 32/32" in proc.stdout  # the default progress bar (not a terminal: plain lines)
    assert "max_epochs=3" in proc.stderr
    events = list((tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    assert events, "the default TensorBoard logger wrote nothing under the working directory"


class EpochCounter(pl.Callback):
    def __init__(self) -> None:
        self.epochs = 0
        self.batches = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def test_seed_program_in_process_trains_three_epochs(monkeypatch, tmp_path) -> None:
    counter = EpochCounter()

    class CountingTrainer(pl.Trainer):
        def __init__(self, **kwargs):
            super().__init__(callbacks=[counter], **kwargs)

    monkeypatch.setattr(pl, "Trainer", CountingTrainer)
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(SEED), run_name="__main__")
    trainer, model = ns["trainer"], ns["model"]
    assert counter.epochs == 3 and counter.batches == 3 * 32  # 1000 samples in batches of 32 -> 32 batches
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * 32
    assert trainer.state.status == "finished"
    assert "train_loss" in trainer.callback_metrics
    assert trainer.lightning_module is model and model.training


@pytest.mark.parametrize("max_epochs", [1, 2])
def test_seed_model_with_other_epoch_counts(monkeypatch, tmp_path, max_epochs) -> None:
    """The same program with max_epochs changed: epochs and steps follow."""
    source = SEED.read_text().replace("max_epochs=3", f"max_epochs={max_epochs}")
    assert f"max_epochs={max_epochs}" in source
    counter = EpochCounter()

    class CountingTrainer(pl.Trainer):
        def __init__(self, **kwargs):
            super().__init__(callbacks=[counter], enable_model_summary=False, **kwargs)

    monkeypatch.setattr(pl, "Trainer", CountingTrainer)
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__main__"}
    exec(compile(source, str(SEED), "exec"), ns)
    assert counter.epochs == max_epochs and ns["trainer"].global_step == 32 * max_epochs
