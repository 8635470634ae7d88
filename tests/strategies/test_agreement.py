"""Decisions agreed across 2 real gloo ranks (strategy='ddp'): a step skipped on one rank is skipped on all (and its
gradients dropped everywhere), a SIGTERM that reached one rank stops every rank at the same boundary with one
checkpoint; checked against a single-process loop written here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tests.strategies.test_ddp import leftover_processes

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("agreement_script.py")

pytestmark = pytest.mark.slow


def run(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, dict[int, dict], Path]:
    script = tmp_path / "train_agree.py"
    shutil.copy(SCRIPT, script)
    out = tmp_path / "out"
    out.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    environ.update(PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script), str(out), mode], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)
    records = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    return proc, records, script


def reference(accumulate: int, nan_batch: int) -> list[list[float]]:
    """One process on both ranks' batches concatenated; batch `nan_batch` of epoch 0 is skipped (its gradients
    dropped, as NonFiniteLoss('skip') does), the rest as the fit does (loss / accumulate, step when due)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    samplers = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in range(2)]
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        batches = list(zip(*[list(DataLoader(data, batch_size=4, sampler=s)) for s in samplers]))
        for i, (b0, b1) in enumerate(batches):
            if i % accumulate == 0:
                opt.zero_grad()
            x, y = torch.cat([b0[0], b1[0]]), torch.cat([b0[1], b1[1]])
            loss = torch.nn.functional.mse_loss(layer(x), y) / accumulate
            if epoch == 0 and i == nan_batch:
                opt.zero_grad(set_to_none=True)  # the NaN batch: no backward that counts, its step skipped
                continue
            loss.backward()
            if (i + 1) % accumulate == 0:
                opt.step()
    return [p.detach().flatten().tolist() for p in layer.parameters()]


@pytest.mark.parametrize(("mode", "accumulate", "steps"), [("nan", 1, 7), ("nan_acc", 2, 4)])
def test_a_step_skipped_on_one_rank_is_skipped_on_both(tmp_path: Path, mode: str, accumulate: int,
                                                       steps: int) -> None:
    proc, records, _ = run(tmp_path, mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = records[0], records[1]
    assert r0["weights"] == r1["weights"]  # the ranks never diverge
    assert all(torch.isfinite(torch.tensor(w)).all() for w in r0["weights"])
    want = reference(accumulate, nan_batch=2)
    for got, ref in zip(r0["weights"], want):
        assert torch.allclose(torch.tensor(got), torch.tensor(ref), atol=1e-6), (got, ref)
    # 4 batches per epoch (32 samples, 2 ranks x 4); the skipped step counts nowhere (with accumulation its
    # window still steps, on batch 3, with that batch's gradients only)
    assert r0["global_step"] == r1["global_step"] == steps
    assert (r0["skipped"], r1["skipped"]) == (0, 1)  # only rank 1 saw the NaN; rank 0 followed the agreement
    # a handler that may skip costs one more collective per micro-batch: 8 batches x 2 + 2 epoch ends
    assert r0["collectives"] == r1["collectives"] == 8 * 2 + 2


def test_without_a_skipping_handler_one_collective_per_step(tmp_path: Path) -> None:
    proc, records, _ = run(tmp_path, "plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records[0]["collectives"] == records[1]["collectives"] == 8 + 2  # batch ends + epoch ends


def test_sigterm_to_one_rank_stops_both_at_the_same_boundary(tmp_path: Path) -> None:
    proc, records, script = run(tmp_path, "sigterm")
    assert proc.returncode == 75, proc.stderr[-3000:]  # EX_TEMPFAIL: stopped after a checkpoint
    assert "stopped by SIGTERM after a checkpoint" in proc.stderr
    assert "rank 1" not in proc.stderr  # no rank reported as failed
    r0, r1 = records[0], records[1]
    assert r0["global_step"] == r1["global_step"] == 2  # batch 1 finished on both, then both stopped
    assert r0["weights"] == r1["weights"]
    ckpt = torch.load(tmp_path / "out" / "ckpts" / "on_signal.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert not leftover_processes(script)
