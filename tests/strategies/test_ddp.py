"""DDP with real gloo process groups on 127.0.0.1: the real launchers start real processes (the script is copied to
tmp_path and run as a program), and the results are checked against a single-process loop written here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_script.py")

pytestmark = pytest.mark.slow


def run_script(tmp_path: Path, strategy: str, mode: str, timeout: float = 60, **env: str) -> tuple:
    script = tmp_path / "train_ddp.py"
    shutil.copy(SCRIPT, script)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), str(out), strategy, mode], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - start
    records = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    return proc, records, elapsed, script


def leftover_processes(script: Path) -> list[int]:
    """Processes whose command line names the test's script (there must be none once the job ended)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = next((ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if str(script) in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


def reference(epochs: int, accumulate: int = 2, world: int = 2) -> tuple[list[list[float]], float]:
    """One process, the same data: each micro-batch is the ranks' batches concatenated (DistributedSampler order,
    seed 0, set_epoch every epoch), the loss divided by `accumulate`; returns the final weights and the last
    epoch's mean loss (what sync_dist gives)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    last_losses: list[float] = []
    for epoch in range(epochs):
        loaders = []
        for rank in range(world):
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            loaders.append(DataLoader(data, batch_size=4, sampler=sampler))
        last_losses = []
        for i, parts in enumerate(zip(*loaders)):
            x = torch.cat([p[0] for p in parts])
            y = torch.cat([p[1] for p in parts])
            loss = torch.nn.functional.mse_loss(layer(x), y)
            last_losses.append(float(loss.detach()))
            (loss / accumulate).backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
    return [p.detach().flatten().tolist() for p in layer.parameters()], sum(last_losses) / len(last_losses)


def assert_close_weights(got: list[list[float]], want: list[list[float]], atol: float = 1e-6) -> None:
    for a, b in zip(got, want):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=atol, rtol=0), (a, b)


def test_subprocess_launcher_matches_single_process(tmp_path: Path) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(records) == [0, 1]
    r0, r1 = records[0], records[1]
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["weights"] == r1["weights"]  # identical on both ranks
    assert r0["global_step"] == 4
    assert r0["threads"] == r1["threads"] == 1  # one intra-op thread per rank (OMP_NUM_THREADS unset)
    weights, mean_loss = reference(epochs=2)
    assert_close_weights(r0["weights"], weights)
    # sync_dist: the epoch mean weighted by batch sizes across ranks equals the single-process epoch mean
    assert r0["train_loss"] == pytest.approx(mean_loss, abs=1e-6) and r1["train_loss"] == r0["train_loss"]
    # no_sync: local gradients differ on the first micro-batch of each window, agree after the synced backward
    pairs = list(zip(r0["grads"], r1["grads"]))
    assert [a == b for a, b in pairs] == [False, True] * 4
    # the strategy's collectives and self.all_gather
    for r in (r0, r1):
        assert r["all_gather"] == [[0, 0], [1, 10]]
        assert r["broadcast"] == {"from": 0}
        assert (r["reduce_sum"], r["reduce_mean"], r["reduce_max"]) == (3.0, 1.5, 2.0)
    assert not leftover_processes(script)


def test_spawn_returns_results_to_the_parent(tmp_path: Path) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp_spawn", "train", timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the parent (rank 0's view after the workers finished) writes rank0.json with the weights sent back
    weights, mean_loss = reference(epochs=2)
    assert_close_weights(records[0]["weights"], weights)
    assert records[0]["train_loss"] == pytest.approx(mean_loss, abs=1e-6)
    assert records[0]["global_step"] == 4
    assert not leftover_processes(script)


def test_stop_requested_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "stop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records[0]["global_step"] == records[1]["global_step"] == 3
    assert records[0]["weights"] == records[1]["weights"]


def test_loggers_write_on_rank_zero_only(tmp_path: Path) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "logged")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    rows = list(csv.DictReader((tmp_path / "out" / "logs" / "version_0" / "metrics.csv").open()))
    epoch_rows = [r for r in rows if r.get("train_loss")]
    assert len(epoch_rows) == 2  # one per epoch, written once (rank 1 writes nothing)
    assert float(epoch_rows[-1]["train_loss"]) == pytest.approx(records[0]["train_loss"], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "out" / "logs").iterdir()) == ["version_0"]


def test_checkpoints_go_where_rank_zero_says(tmp_path: Path) -> None:
    """ModelCheckpoint's folder and the traces' folder are rank 0's (its logger's version), broadcast to every rank."""
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "ckpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = records[0], records[1]
    assert r0["ckpt_dir"] == r1["ckpt_dir"] == str(tmp_path / "out" / "logs" / "version_0" / "checkpoints")
    assert r0["best"] == r1["best"] and Path(r0["best"]).is_file()
    assert r0["version"] == r1["version"] == 0  # rank 1's logger takes rank 0's version
    assert r0["log_dir"] == r1["log_dir"] == str(tmp_path / "out" / "logs" / "version_0")
    assert sorted(p.name for p in (tmp_path / "out" / "logs").iterdir()) == ["version_0"]
    traces = sorted(p.name for p in (tmp_path / "out" / "logs" / "version_0").glob("trace*.jsonl"))
    assert traces == ["trace.jsonl", "trace.rank1.jsonl"]  # each rank's trace in rank 0's log folder


def test_weight_averaging_under_ddp_gives_every_rank_the_same_average(tmp_path: Path) -> None:
    """The averaged model is a copy of the module alone (copying the Trainer failed on its process-group locks)."""
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "ema")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records[0]["weights"] == records[1]["weights"]
    (tmp_path / "plain").mkdir()
    plain = run_script(tmp_path / "plain", "ddp", "train")[1]
    assert records[0]["weights"] != plain[0]["weights"]  # the averaged weights were swapped in at the end


def test_early_stopping_on_one_rank_stops_both_in_the_same_epoch(tmp_path: Path) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "early")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 1's metric never improves: patience 1 stops it after its second epoch, and rank 0 with it
    assert records[0]["epoch"] == records[1]["epoch"] == 2
    assert records[0]["global_step"] == records[1]["global_step"] == 4
    assert records[0]["weights"] == records[1]["weights"]


@pytest.mark.parametrize("mode", ["fail", "fail0", "kill"])
def test_a_failing_rank_ends_the_job_fast_with_its_traceback_once(tmp_path: Path, mode: str) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp", mode)
    ended = time.time()
    assert proc.returncode != 0
    failed_at = min(float(p.read_text()) for p in (tmp_path / "out").glob("failing*.txt"))
    assert ended - failed_at < 15, ended - failed_at  # from the failure to the job's end; no 30-min timeout
    if mode == "fail":
        assert proc.stderr.count("ValueError: boom on rank 1 at step 3") == 1, proc.stderr[-3000:]
        assert "[rank 1] failed" in proc.stderr
    elif mode == "fail0":  # the launcher's own rank: its exception propagates as usual, the children are killed
        assert proc.stderr.count("ValueError: boom on rank 0 at step 3") == 1, proc.stderr[-3000:]
        assert "was killed by" not in proc.stderr
    else:
        assert "rank 1 was killed by SIGKILL" in proc.stderr, proc.stderr[-3000:]
    assert not records  # nobody finished
    print(f"{mode}: job ended {ended - failed_at:.2f} s after the failure (launch + failure {elapsed:.1f} s)")
    time.sleep(0.5)
    assert not leftover_processes(script)


def test_ctrl_c_on_the_launcher_stops_every_rank(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    shutil.copy(SCRIPT, script)
    out = tmp_path / "out"
    out.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    environ.update(PYTHONPATH=str(ROOT), TEST_MAX_EPOCHS="1000")
    proc = subprocess.Popen([sys.executable, str(script), str(out), "ddp", "stop_never"], env=environ, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(leftover_processes(script)) < 2:
        time.sleep(0.2)
    time.sleep(3)  # both ranks inside fit
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C: stop now
    try:
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0
    time.sleep(0.5)
    assert not leftover_processes(script)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, nnodes: int, nproc: int) -> tuple:
    """torchrun on this machine, `nnodes` agents on one c10d rendezvous at 127.0.0.1 (simulated nodes)."""
    script = tmp_path / "train_ddp.py"
    shutil.copy(SCRIPT, script)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    environ.update(PYTHONPATH=str(ROOT), TEST_DEVICES=str(nproc), TEST_NUM_NODES=str(nnodes))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--local-addr=127.0.0.1",
               str(script), str(out), "ddp", "train"]
    agents = [subprocess.Popen(command, env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(nnodes)]
    outputs = [a.communicate(timeout=120) for a in agents]
    records = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    return [a.returncode for a in agents], outputs, records


@pytest.mark.parametrize(("nnodes", "nproc"), [(1, 2), (2, 1)])
def test_torchrun_single_node_and_two_simulated_nodes(tmp_path: Path, nnodes: int, nproc: int) -> None:
    codes, outputs, records = torchrun(tmp_path, nnodes, nproc)
    assert codes == [0] * nnodes, [o[1][-2000:] for o in outputs]
    assert sorted(records) == [0, 1]
    assert records[0]["weights"] == records[1]["weights"]
    weights, _ = reference(epochs=2)
    assert_close_weights(records[0]["weights"], weights)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (nccl)")
def test_nccl_on_two_gpus_matches_single_process(tmp_path: Path) -> None:
    proc, records, elapsed, script = run_script(tmp_path, "ddp", "train", TEST_ACCELERATOR="cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records[0]["weights"] == records[1]["weights"]
    weights, _ = reference(epochs=2)
    assert_close_weights(records[0]["weights"], weights, atol=1e-5)
