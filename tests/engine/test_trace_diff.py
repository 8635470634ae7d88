"""Diff two traces and verify a run against one: equal seeds are equal; an LR change from step 37, two swapped
batches in epoch 1 and an unseeded dropout are each found where they happen, by `diff` and by `verify_trace`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import engine as pl
from engine import events as ev
from engine.trace import TraceDivergence, diff_traces, read_trace

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0, logger=False)
N = 64  # 32 batches of 2 per epoch


class SwapSampler:
    """Batches of two consecutive indices; in epoch `swap_epoch` batches 3 and 5 trade places."""

    def __init__(self, n: int, swap_epoch: int | None = None) -> None:
        self.n, self.swap_epoch, self.epoch = n, swap_epoch, -1

    def __iter__(self) -> Any:
        self.epoch += 1
        batches = [[i, i + 1] for i in range(0, self.n, 2)]
        if self.epoch == self.swap_epoch:
            batches[3], batches[5] = batches[5], batches[3]
        return iter(batches)

    def __len__(self) -> int:
        return self.n // 2


class LRFrom37:
    """A handler that lowers the learning rate once 37 optimizer steps are done."""

    def on_optimizer_stepped(self, event: ev.OptimizerStepped) -> None:
        if event.timestamp.global_step >= 37:
            for group in event.optimizer.param_groups:
                group["lr"] = 0.01


def run(kit: Any, path: Path, seed: int = 0, swap_epoch: int | None = None, model: Any = None, **flags: Any) -> Any:
    pl.seed_everything(seed)
    model = model or kit.Model()
    loader = DataLoader(kit.dataset(N), batch_sampler=SwapSampler(N, swap_epoch))
    trainer = kit.trainer(max_epochs=2, trace=str(path) if path else False, **{**QUIET, **flags})
    trainer.fit(model, loader)
    return model


def test_same_seed_is_equal_and_the_cli_says_so(kit: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(kit, a)
    run(kit, b)
    report = diff_traces(a, b)
    assert report.equal and report.divergence is None and report.compared == len(read_trace(a).records)
    cli = [sys.executable, "-m", "engine", "trace", "diff"]
    proc = subprocess.run(cli + [str(a), str(b)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "equal" in proc.stdout, proc.stderr


def test_lr_change_from_step_37_is_named_by_diff_and_verify(kit: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(kit, a)
    run(kit, b, callbacks=[LRFrom37()])
    div = diff_traces(a, b).divergence
    assert div.kind == "numeric" and div.event == "BatchEnded" and div.global_step == 37
    assert div.what.startswith("lr[0]") and "0.05" in div.what and "0.01" in div.what
    assert "context (A | B)" in str(div) and len(div.context_a) >= 4
    proc = subprocess.run([sys.executable, "-m", "engine", "trace", "diff", str(a), str(b)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "s37" in proc.stdout and "lr[0]" in proc.stdout, proc.stderr
    with pytest.raises(TraceDivergence) as info:
        run(kit, None, callbacks=[LRFrom37()], verify_trace=str(a), default_root_dir=str(tmp_path))
    err = info.value
    assert err.report.global_step == 37 and err.report.kind == "numeric" and "lr[0]" in str(err)
    ckpt = torch.load(err.checkpoint, weights_only=True)
    assert ckpt["global_step"] == 37 and Path(err.checkpoint).parent == tmp_path


def test_verify_passes_on_an_identical_rerun(kit: Any, tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    run(kit, a)
    run(kit, None, verify_trace=str(a))  # no divergence: no exception


def test_swapped_batches_in_epoch_1_name_the_batch(kit: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(kit, a)
    run(kit, b, swap_epoch=1)
    div = diff_traces(a, b).divergence
    assert div.kind == "data" and div.batch_idx == 3 and div.timestamp.epoch == 1
    assert div.timestamp.batch_in_epoch == 3 and "fingerprint" in div.what
    with pytest.raises(TraceDivergence) as info:
        run(kit, None, swap_epoch=1, verify_trace=str(a), default_root_dir=str(tmp_path))
    assert info.value.report.kind == "data" and info.value.report.batch_idx == 3


class Dropped(pl.LightningModule):
    """Dropout on the input from epoch 1 on, drawn from the global RNG the test does not seed the same way."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.losses: list[tuple[int, int, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if self.current_epoch >= 1:
            x = nn.functional.dropout(x, 0.5, training=True)
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.losses.append((self.current_epoch, batch_idx, loss.item()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_unseeded_dropout_is_found_at_the_first_changed_loss(kit: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ma = run(kit, a, seed=1, model=Dropped())
    mb = run(kit, b, seed=2, model=Dropped())
    first = next(la[:2] for la, lb in zip(ma.losses, mb.losses) if la[2] != lb[2])  # the reference, from the models
    div = diff_traces(a, b).divergence
    assert div.kind == "numeric" and div.what.startswith("loss")
    assert (div.timestamp.epoch, div.timestamp.batch_in_epoch) == first == (1, 0)
    with pytest.raises(TraceDivergence) as info:
        run(kit, None, seed=3, model=Dropped(), verify_trace=str(a), default_root_dir=str(tmp_path))
    ts = info.value.report.timestamp
    assert (ts.epoch, ts.batch_in_epoch) == (1, 0) and info.value.report.what.startswith("loss")


def test_tolerances_and_missing_events(kit: Any, tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    run(kit, a)
    lines = a.read_text().splitlines(keepends=True)
    import json

    def rewrite(name: str, edit: Any) -> Path:
        out = []
        for line in lines:
            rec = json.loads(line)
            out.append(json.dumps(edit(rec)) + "\n" if rec.get("ev") == "BatchEnded" and rec["seq"] == 20 else line)
        p = tmp_path / name
        p.write_text("".join(out))
        return p

    nudged = rewrite("n.jsonl", lambda r: {**r, "loss": r["loss"] * (1 + 1e-9)})
    assert not diff_traces(a, nudged).equal
    assert diff_traces(a, nudged, rtol=1e-6).equal
    short = tmp_path / "short.jsonl"
    short.write_text("".join(lines[:-5]))
    div = diff_traces(a, short).divergence
    assert div.kind == "event" and "B ends after" in div.what
    stop = rewrite("s.jsonl", lambda r: {**r, "ev": "ControlRequested",
                                         "request": {"action": "stop", "by": "EarlyStopping", "reason": "patience"}})
    div = diff_traces(a, stop).divergence
    assert div.kind == "control" and "in B only" in div.what and "EarlyStopping" in div.what


def test_full_level_traces_of_equal_runs_are_equal(kit: Any, tmp_path: Path) -> None:
    from engine.trace import TraceConfig

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for p in (a, b):
        pl.seed_everything(0)
        trainer = kit.trainer(max_epochs=1, trace=TraceConfig(path=str(p), level="full"), **QUIET)
        trainer.fit(kit.Model(), kit.loader(8, batch_size=2))
    assert read_trace(a).of("StateChanged") and diff_traces(a, b).equal
