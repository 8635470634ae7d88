"""DDP on the CPU: per-step time and weak scaling of 2 processes x 1 thread, statetrain vs a hand-written DDP loop.

Run `python benchmarks/ddp.py` (full: 3 interleaved rounds of 400 steps, about 3.5 minutes on 2 cores) or `--quick`
(1 round of 150 steps, under a minute). `--statetrain-worker` is internal: the statetrain DDP run is started as a
subprocess running this file with it, because statetrain's 'ddp' launcher re-runs the script for rank 1 (this
benchmark's own process must not be rank 0).

Workload: an MLP whose step is compute-bound (Linear 256->1024->1024->1, ReLU, SGD lr 1e-3, MSE), batch 64 per process,
`--steps` batches per process in one epoch; every variant starts from the same seed. Variants, interleaved round-robin:
  (a) raw 1x1     one process, one thread, hand-written loop (zero_grad, forward, backward, step);
  (b) raw DDP 2x1 torch.multiprocessing spawn, 2 ranks, gloo on 127.0.0.1 (a free port), one thread each,
                  DistributedDataParallel + DistributedSampler(shuffle, seed 0): each rank does (a)'s work per step;
  (e) = (b) plus one all_reduce of 4 flags and a host read per step, which is what statetrain's DDPSync does to
                  agree on stop/skip/validate/save requests: separates that cost from the rest of the engine;
  (c) st DDP 2x1  `Trainer(accelerator='cpu', devices=2, strategy='ddp')` in a subprocess; its launcher starts rank 1;
                  the DataLoader has shuffle=True so the inserted DistributedSampler matches (b)'s;
  (d) st 1x1      `Trainer(accelerator='cpu', devices=1)` in this process.
Time per step: the DataLoader's collate_fn appends one perf_counter() per batch (the same ~0.1 µs everywhere; the
statetrain runs also carry the launch-marks callback, a dict check per step, ~1 µs against ~10 ms steps);
per step = (last stamp - stamp[warmup]) / intervals, on rank 0, so process start, DDP construction and the first
`--warmup` steps are excluded. Also shown: the median interval and its 10th percentile
(p10: a step no other process preempted), which are less sensitive to other work on the machine.
Scaling efficiency (weak) = per step of 1 process / per step of 2 processes, same per-rank batch; engine overhead =
(c) / (b) - 1 (target <= 5%, issue #9). Launch-to-first-step: wall time (time.time()) from starting the process(es) to
the first training batch of rank 0 (a callback's on_train_batch_start of batch 0 for statetrain, the loop for (b)),
with rank 0's and rank 1's phases (interpreter + imports, Trainer(), fit() to on_fit_start, which holds starting rank
1, the process group and DDP(), then to batch 0). Sanity: rank 0's first batch in (b) and (c) must be the same, and
max|dW| (final weights of (c) vs (b), (d) vs (a)) is 0 when the math is the same. Nothing is asserted.
"""

from __future__ import annotations

import time

_T_START = time.time()  # this interpreter's first line (before torch is imported): the launch phases start here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, default_collate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout too

__all__ = ["main"]

SEED = 0
BATCH = 64
IN, HIDDEN = 256, 1024
LR = 1e-3
WORLD = 2
TARGET_OVERHEAD = 1.05  # issue #9: statetrain DDP <= 1.05x the hand-written DDP loop
LAUNCH_ENV = "STATETRAIN_BENCH_LAUNCH"  # time.time() when the benchmark started the statetrain subprocess

_STAMPS: list[float] = []


def stamping_collate(samples: list[Any]) -> Any:
    """default_collate plus one perf_counter() per batch: the same tiny cost in every variant."""
    _STAMPS.append(time.perf_counter())
    return default_collate(samples)


def make_net() -> nn.Sequential:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def make_dataset(steps: int, world: int) -> TensorDataset:
    """`steps` batches of BATCH for each of `world` processes (weak scaling: the per-rank work is fixed)."""
    g = torch.Generator().manual_seed(SEED + 1)
    n = steps * BATCH * world
    return TensorDataset(torch.randn(n, IN, generator=g), torch.randn(n, 1, generator=g))


def per_step(stamps: list[float], warmup: int) -> dict[str, float]:
    """Seconds per step from the batch stamps, skipping the first `warmup` steps: the mean (step_s), the median
    interval and its 10th percentile (p10_s: the step when no other process preempted it; robust to load)."""
    s = stamps[warmup:]
    if len(s) < 12:
        return {"step_s": float("nan"), "median_s": float("nan"), "p10_s": float("nan")}
    gaps = [b - a for a, b in zip(s, s[1:])]
    return {"step_s": (s[-1] - s[0]) / len(gaps), "median_s": statistics.median(gaps),
            "p10_s": statistics.quantiles(gaps, n=10)[0]}


def flat_weights(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- (a) one process, hand-written -------------------------------------------------------------------------------------
def raw_single(steps: int, warmup: int, out: str) -> dict[str, Any]:
    net = make_net()
    loader = DataLoader(make_dataset(steps, 1), batch_size=BATCH, collate_fn=stamping_collate)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    _STAMPS.clear()
    net.train()
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    torch.save(flat_weights(net), out)
    return {**per_step(_STAMPS, warmup), "steps": len(_STAMPS), "threads": torch.get_num_threads()}


# -- (b) hand-written DDP, torch.multiprocessing spawn -----------------------------------------------------------------
def _raw_ddp_rank(rank: int, port: int, steps: int, warmup: int, out_dir: str, launched: float,
                  agree: bool) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    t_imported = time.time()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    model = DistributedDataParallel(make_net())
    t_ddp = time.time()
    sampler = DistributedSampler(make_dataset(steps, WORLD), num_replicas=WORLD, rank=rank, shuffle=True, seed=SEED)
    sampler.set_epoch(0)
    loader = DataLoader(sampler.dataset, batch_size=BATCH, sampler=sampler, collate_fn=stamping_collate)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    _STAMPS.clear()
    first, first_sum = 0.0, 0.0
    model.train()
    for i, (x, y) in enumerate(loader):
        if i == 0:
            first = time.time()
            first_sum = float(x.sum())
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if agree:  # what statetrain's DDPSync does after every batch: agree on 4 control flags, read them on the host
            flags = torch.zeros(4)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags.tolist()
    record = {**per_step(_STAMPS, warmup), "steps": len(_STAMPS), "threads": torch.get_num_threads(),
              "first_batch_sum": first_sum, "launch_to_first_s": first - launched,
              "phases": {"spawn+imports": t_imported - launched, "group+DDP()": t_ddp - t_imported,
                         "to batch 0": first - t_ddp}}
    if rank == 0:
        torch.save(flat_weights(model.module), os.path.join(out_dir, "raw_ddp.pt"))
    with open(os.path.join(out_dir, f"raw_ddp.rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


def raw_ddp(steps: int, warmup: int, out_dir: str, agree: bool = False) -> dict[str, Any]:
    import torch.multiprocessing as mp

    launched = time.time()
    mp.start_processes(_raw_ddp_rank, args=(free_port(), steps, warmup, out_dir, launched, agree), nprocs=WORLD,
                       start_method="spawn", join=True)
    return _read_ranks(out_dir, "raw_ddp")


def _read_ranks(out_dir: str, name: str) -> dict[str, Any]:
    ranks = []
    for r in range(WORLD):
        with open(os.path.join(out_dir, f"{name}.rank{r}.json")) as f:
            ranks.append(json.load(f))
    result = dict(ranks[0])
    result["rank1"] = ranks[1]
    return result


# -- (c), (d) statetrain -----------------------------------------------------------------------------------------------
def statetrain_fit(devices: int, steps: int, warmup: int, weights_out: str, record_out: str | None) -> dict[str, Any]:
    """Fit the MLP with statetrain on `devices` CPU processes (2: this process is rank 0 and its launcher starts
    rank 1); returns rank 0's record (rank r writes `record_out.rank{r}.json` when given)."""
    t_imported0 = time.time()
    import engine as st

    launched = float(os.environ.get(LAUNCH_ENV, _T_START))
    marks: dict[str, float] = {}

    class Net(st.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    class Marks(st.Callback):
        """Wall-clock marks of the launch phases (on_train_batch_start keeps one dict lookup per step)."""

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            marks["fit_start"] = time.time()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            marks["train_start"] = time.time()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if "first" not in marks:
                marks["first"] = time.time()
                marks["first_sum"] = float(batch[0].sum())

    t_imported = time.time()
    model = Net()
    # shuffle=True under DDP: the DistributedSampler statetrain inserts then shuffles with seed 0, as (b)'s does
    # (without it, statetrain's train sampler is not shuffled: the data loop asks for stage 'fit', the strategy
    # shuffles for 'train'); with 1 process the loader is (a)'s, unshuffled
    loader = DataLoader(make_dataset(steps, devices), batch_size=BATCH, shuffle=devices > 1,
                        collate_fn=stamping_collate)
    kwargs: dict[str, Any] = dict(strategy="ddp") if devices > 1 else {}
    trainer = st.Trainer(accelerator="cpu", devices=devices, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[Marks()], **kwargs)
    t_trainer = time.time()
    _STAMPS.clear()
    trainer.fit(model, loader)
    rank = trainer.global_rank
    first = marks.get("first", float("nan"))
    record = {**per_step(_STAMPS, warmup), "steps": len(_STAMPS), "threads": torch.get_num_threads(),
              "first_batch_sum": marks.get("first_sum"), "world_size": trainer.world_size,
              "launch_to_first_s": first - launched,
              "phases": {"interpreter+imports": t_imported - (launched if rank == 0 else _T_START),
                         "(engine import)": t_imported - t_imported0,
                         "Trainer()": t_trainer - t_imported,
                         "fit() to on_fit_start (launch, group, DDP())": marks.get("fit_start", t_trainer) - t_trainer,
                         "to on_train_start": marks.get("train_start", 0) - marks.get("fit_start", 0),
                         "to batch 0": first - marks.get("train_start", first)}}
    if rank == 0:
        torch.save(flat_weights(model), weights_out)
    if rank == 1:
        record["started_after_launch_s"] = _T_START - launched
    if record_out is not None:
        with open(f"{record_out}.rank{rank}.json", "w") as f:
            json.dump(record, f)
    return record


def statetrain_ddp(steps: int, warmup: int, out_dir: str) -> dict[str, Any]:
    """(c): a fresh interpreter runs this file with --statetrain-worker (it becomes rank 0 and starts rank 1)."""
    record = os.path.join(out_dir, "st_ddp")
    cmd = [sys.executable, os.path.abspath(__file__), "--statetrain-worker", "--steps", str(steps),
           "--warmup", str(warmup), "--out", record]
    env = dict(os.environ)
    env[LAUNCH_ENV] = repr(time.time())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the statetrain DDP worker exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return _read_ranks(out_dir, "st_ddp")


def statetrain_single(steps: int, warmup: int, out: str) -> dict[str, Any]:
    import contextlib
    import io
    import warnings

    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        return statetrain_fit(1, steps, warmup, out, None)


# -- measuring and reporting ------------------------------------------------------------------------------------------
def measure(rounds: int, steps: int, warmup: int, root: str) -> dict[str, list[dict[str, Any]]]:
    """`rounds` rounds of every variant; the first variant rotates each round (slow load drifts hit all alike)."""
    variants: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
        ("a", lambda r: raw_single(steps, warmup, os.path.join(root, f"a{r}.pt"))),
        ("b", lambda r: raw_ddp(steps, warmup, _fresh(root, f"b{r}"))),
        ("e", lambda r: raw_ddp(steps, warmup, _fresh(root, f"e{r}"), agree=True)),
        ("c", lambda r: statetrain_ddp(steps, warmup, _fresh(root, f"c{r}"))),
        ("d", lambda r: statetrain_single(steps, warmup, os.path.join(root, f"d{r}.pt"))),
    ]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k, _ in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for key, fn in order:
            t0 = time.perf_counter()
            rec = fn(r)
            rec["wall_s"] = time.perf_counter() - t0
            runs[key].append(rec)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return runs


def _fresh(root: str, name: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path


def _weights(root: str, key: str, r: int) -> torch.Tensor:
    path = {"a": f"a{r}.pt", "b": f"b{r}/raw_ddp.pt", "c": f"c{r}/st_ddp.pt", "d": f"d{r}.pt"}[key]
    return torch.load(os.path.join(root, path), weights_only=True)


def report(runs: dict[str, list[dict[str, Any]]], root: str, steps: int, warmup: int) -> None:
    med = statistics.median
    labels = {"a": "(a) raw, 1 process x 1 thread", "b": "(b) raw DDP, 2 x 1 (spawn)",
              "c": "(c) statetrain DDP, 2 x 1", "d": "(d) statetrain, 1 x 1",
              "e": "(e) = (b) + 1 flag all_reduce"}
    rounds = len(runs["a"])
    print(f"\nMLP {IN}->{HIDDEN}->{HIDDEN}->1, batch {BATCH} per process, {steps} steps per process, first {warmup} "
          f"excluded; {rounds} interleaved round(s); per-step figures are medians over rounds (min..max)")
    head = (f"{'variant':<32}{'ms/step':>9}{'min..max':>15}{'median gap':>12}{'p10 gap':>9}{'threads':>9}"
            f"{'run wall s':>12}")
    print(head)
    print("-" * len(head))
    for k in "abecd":
        rs = runs[k]
        steps_ms = [x["step_s"] * 1e3 for x in rs]
        threads = str(rs[0]["threads"]) + (f"+{rs[0]['rank1']['threads']}" if "rank1" in rs[0] else "")
        print(f"{labels[k]:<32}{med(steps_ms):>9.2f}{f'{min(steps_ms):.2f}..{max(steps_ms):.2f}':>15}"
              f"{med(x['median_s'] * 1e3 for x in rs):>12.2f}{med(x['p10_s'] * 1e3 for x in rs):>9.2f}{threads:>9}"
              f"{med(x['wall_s'] for x in rs):>12.1f}")

    def paired(num: str, den: str, field: str = "step_s") -> list[float]:
        return [n[field] / d[field] for n, d in zip(runs[num], runs[den])]

    eff_raw = [1 / x for x in paired("b", "a")]
    eff_st = [1 / x for x in paired("c", "d")]
    eff_st_raw = [1 / x for x in paired("c", "a")]
    over = paired("c", "b")
    over_single = paired("d", "a")
    over_agree = paired("e", "b")
    over_ce = paired("c", "e")
    rng = lambda v: f"(rounds: {', '.join(f'{x:.3f}' for x in v)})"  # noqa: E731
    print(f"\nweak-scaling efficiency, raw DDP (a)/(b):                   {med(eff_raw):.3f}  {rng(eff_raw)}")
    print(f"weak-scaling efficiency, statetrain (d)/(c):                {med(eff_st):.3f}  {rng(eff_st)}")
    print(f"weak-scaling efficiency, statetrain DDP vs raw 1x1 (a)/(c): {med(eff_st_raw):.3f}  {rng(eff_st_raw)}")
    print(f"statetrain 1x1 over raw 1x1 (d)/(a):                        {med(over_single):.3f}x {rng(over_single)}")
    verdict = "PASS" if med(over) <= TARGET_OVERHEAD else "MISS"
    print(f"target: statetrain DDP (c) <= {TARGET_OVERHEAD:.2f}x raw DDP (b): {med(over):.3f}x {rng(over)}  {verdict}")
    for field, what in (("median_s", "median gap"), ("p10_s", "p10 gap")):
        print(f"  same ratio from the {what}s (less sensitive to other processes): "
              f"{med(paired('c', 'b', field)):.3f}x {rng(paired('c', 'b', field))}; scaling (a)/(b) "
              f"{med(1 / x for x in paired('b', 'a', field)):.3f}, "
              f"(d)/(c) {med(1 / x for x in paired('c', 'd', field)):.3f}")

    print(f"cost of one flag all_reduce per step (e)/(b):              {med(over_agree):.3f}x {rng(over_agree)}")
    print(f"statetrain DDP over (e), i.e. all but that all_reduce (c)/(e): {med(over_ce):.3f}x {rng(over_ce)}")
    dw_c = max(float((_weights(root, "c", r) - _weights(root, "b", r)).abs().max()) for r in range(rounds))
    dw_d = max(float((_weights(root, "d", r) - _weights(root, "a", r)).abs().max()) for r in range(rounds))
    same_data = all(c["first_batch_sum"] == b["first_batch_sum"] for c, b in zip(runs["c"], runs["b"]))
    print(f"rank 0's first batch identical in (b) and (c): {same_data}")
    print(f"max|dW| final weights: (c) vs (b) {dw_c:.1e}, (d) vs (a) {dw_d:.1e} (same data order and math: ~0)")

    print("\nlaunch to first training batch of rank 0 (wall, medians over rounds), and where the time went:")
    for k, name in (("b", "raw DDP, torch.multiprocessing spawn"), ("c", "statetrain 'ddp' subprocess launcher")):
        rs = runs[k]
        print(f"  {name}: {med(x['launch_to_first_s'] for x in rs):.2f} s")
        for who, recs in (("rank 0", rs), ("rank 1", [x["rank1"] for x in rs])):
            phases = ", ".join(f"{p} {med(x['phases'][p] for x in recs):.2f}" for p in recs[0]["phases"])
            extra = ""
            if "started_after_launch_s" in recs[0]:
                extra = f"; its interpreter started {med(x['started_after_launch_s'] for x in recs):.2f} s after launch"
            print(f"    {who}: {phases}{extra}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 150 steps (under a minute)")
    parser.add_argument("--steps", type=int, default=None, help="batches per process (default 400, quick 150)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps excluded (default 50, quick 30)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--statetrain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (150 if args.quick else 400)
    warmup = args.warmup if args.warmup is not None else (30 if args.quick else 50)
    if args.statetrain_worker:
        statetrain_fit(WORLD, steps, warmup, f"{args.out}.pt", args.out)
        return
    rounds = args.rounds or (1 if args.quick else 3)

    torch.set_num_threads(1)
    print(f"statetrain DDP benchmark ({'quick' if args.quick else 'full'}): torch {torch.__version__}, gloo, "
          f"{WORLD} processes x 1 thread vs 1 x 1; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
          flush=True)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="statetrain-ddp-bench-") as root:
        runs = measure(rounds, steps, warmup, root)
        report(runs, root, steps, warmup)
    load = os.getloadavg()[0]
    print(f"\nTotal {time.perf_counter() - start:.0f} s; load average {load_before:.2f} before, {load:.2f} after on "
          f"{os.cpu_count()} CPUs" + ("  (other processes competed for the CPUs: expect noise; 2 ranks need both "
                                     "cores, so any other work slows the DDP rows most)"
                                     if max(load, load_before) > 1.0 else ""))


if __name__ == "__main__":
    main()
