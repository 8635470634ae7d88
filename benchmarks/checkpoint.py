"""Checkpoint costs of statetrain: save/load against bare torch.save/torch.load, and a resume at batch 100,000.

Part 1 saves and loads a ~100 MB model (300 MB with its Adam state) through statetrain and through bare torch; part 2
fast-forwards a shuffled map-style DataLoader to batch 100,000 without loading the samples before it.

Run `python benchmarks/checkpoint.py` (full, about 2.5 minutes) or `--quick` (fewer repeats, about 1.5 minutes). `--dir`
chooses where the files are written (the filesystem decides what fsync costs). Nothing is asserted: the targets are
printed as PASS/MISS. The per-step cost of the default ModelCheckpoint is in benchmarks/overhead.py (its "defaults"
rows). See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout too
import engine as st  # noqa: E402
from engine import checkpoint as st_checkpoint  # noqa: E402
from engine.loops.data import resume_iterator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import silenced  # noqa: E402  (one way of muting the frameworks, shared with overhead.py)

__all__ = ["main"]

SEED = 0
WIDTH = 2048            # nn.Linear(2048, 2048): 4,196,352 float32 parameters, 16.8 MB each
LAYERS = 6              # 6 of them: 25.2M parameters, 100.7 MB of weights (Adam doubles that in its state)
TARGET_RATIO = 1.2      # issue target: statetrain's save and load <= 1.2x bare torch.save / torch.load
SKIP_BATCH = 100_000    # resume at the 100,000th batch of the epoch (skip the 99,999 before it)
RESUME_BATCH_SIZE = 32
TARGET_RESUME_S = 1.0   # issue target: fast-forward + first batch under 1 s
MB = 1e6


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return float("nan")
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q3 - q1


# -- 1. save / load of a ~100 MB model -------------------------------------------------------------------------------
class BigNet(st.LightningModule):
    """LAYERS x nn.Linear(WIDTH, WIDTH) with ReLUs; Adam."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(LAYERS):
            layers.append(nn.Linear(WIDTH, WIDTH))
            if i < LAYERS - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.net(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-4)


def trained() -> tuple[BigNet, Any, torch.optim.Optimizer]:
    """BigNet after one real training step (trainer.fit, max_steps=1): Adam's state exists."""
    torch.manual_seed(SEED)
    model = BigNet()
    loader = DataLoader(TensorDataset(torch.randn(64, WIDTH)), batch_size=32)
    with silenced():
        trainer = st.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, num_sanity_val_steps=0)
        trainer.fit(model, loader)
    optimizer = trainer.optimizers[0]
    if not optimizer.state_dict()["state"]:
        raise RuntimeError("the optimizer has no state after one step")
    return model, trainer, optimizer


def bare_save(obj: Callable[[], Any], path: str, fsync: bool = False) -> None:
    """`torch.save(obj(), path)`, what users write; with fsync, through a file object that is flushed and fsync'ed
    before it is closed (durable, as statetrain's writes are, but in place: no temp file, no rename)."""
    if not fsync:
        torch.save(obj(), path)
        return
    with open(path, "wb") as f:
        torch.save(obj(), f)
        f.flush()
        os.fsync(f.fileno())


def remove(path: str) -> Callable[[], None]:
    """An untimed preparation: delete `path`, so the timed write goes to a new file (as ModelCheckpoint's
    epoch=..-step=.. names do) instead of replacing one."""
    def prepare() -> None:
        if os.path.exists(path):
            os.unlink(path)
    return prepare


@dataclass
class Op:
    """One timed operation: `fn()` runs it; `path` is the file it writes or reads; `prepare()` runs untimed before."""

    key: str
    label: str
    fn: Callable[[], Any]
    path: str
    prepare: Callable[[], None] | None = None


def timed(op: Op) -> float:
    """Wall time of op.fn(), after op.prepare(), an os.sync() (no dirty pages of earlier writes left to compete) and a
    collected heap, all untimed; what fn returns is dropped after the clock stops."""
    if op.prepare is not None:
        op.prepare()
    os.sync()
    gc.collect()
    t0 = time.perf_counter()
    result = op.fn()
    t1 = time.perf_counter()
    del result
    gc.collect()
    return t1 - t0


def round_robin(ops: list[Op], repeats: int, what: str) -> dict[str, list[float]]:
    """`repeats` rounds of every op in turn, the starting op rotating each round; after one untimed warm-up each."""
    for op in ops:
        timed(op)
    times: dict[str, list[float]] = {op.key: [] for op in ops}
    for r in range(repeats):
        for op in ops[r % len(ops):] + ops[:r % len(ops)]:
            times[op.key].append(timed(op))
        print(f"  {what}: repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


STAGES = ("build the dict (state_dicts, run state, RNG)", "  of which rng_state()",
          "open (bare: truncates the old file)", "torch.save serialize + write + flush", "fsync of the file",
          "rename over the old file", "fsync of the directory")


def st_stages(trainer: Any, path: str) -> dict[str, float]:
    """trainer.save_checkpoint(path) over an existing file, taken apart as RunContext.save_checkpoint and
    engine/checkpoint.py `save` do it: build the dict (+ on_save_checkpoint), torch.save it into a temp file in the
    target's directory, flush, fsync, rename over the target, fsync the directory."""
    from pathlib import Path

    rc = trainer._rc  # the run context: save_checkpoint = checkpoint.build + on_save_checkpoint + checkpoint.save
    pc = time.perf_counter
    t0 = pc()
    ckpt = st_checkpoint.build(rc)
    rc.call_module("on_save_checkpoint", ckpt)
    t1 = pc()
    st_checkpoint.rng_state()
    t2 = pc()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        t3 = pc()
        torch.save(ckpt, f)
        f.flush()
        t4 = pc()
        os.fsync(f.fileno())
        t5 = pc()
    os.replace(tmp, path)
    t6 = pc()
    st_checkpoint._fsync_dir(Path(os.path.dirname(path)))
    t7 = pc()
    return dict(zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)))


def bare_stages(obj: Callable[[], Any], path: str) -> dict[str, float]:
    """torch.save(obj(), path) over an existing file, taken apart: open 'wb' (truncation frees the old file), write."""
    pc = time.perf_counter
    t0 = pc()
    o = obj()
    t1 = pc()
    with open(path, "wb") as f:
        t2 = pc()
        torch.save(o, f)
        f.flush()
        t3 = pc()
    return dict(zip(STAGES, (t1 - t0, 0.0, t2 - t1, t3 - t2, 0.0, 0.0, 0.0)))


def load_stages(path: str) -> dict[str, float]:
    """engine.checkpoint.load(path) taken apart: torch.load(weights_only=True) under the allowed globals, then
    migrate()."""
    t0 = time.perf_counter()
    with torch.serialization.safe_globals(st_checkpoint.safe_globals()):
        ckpt = torch.load(path, weights_only=True)
    t1 = time.perf_counter()
    st_checkpoint.migrate(ckpt, path)
    t2 = time.perf_counter()
    del ckpt
    return {"torch.load(weights_only=True)": t1 - t0, "migrate()": t2 - t1}


def bench_save_load(root: str, repeats: int) -> None:
    """Save and load tables, the targets, and where the time of statetrain's full save goes."""
    model, trainer, optimizer = trained()
    n_params = sum(p.numel() for p in model.parameters())
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    print(f"\n1. Save/load: {LAYERS} x nn.Linear({WIDTH}, {WIDTH}) = {n_params / 1e6:.1f}M float32 parameters "
          f"({weights_mb:.1f} MB), Adam state initialised by trainer.fit(max_steps=1); files in {root}; "
          f"{repeats} interleaved rounds, medians; os.sync() before every timed call (untimed)", flush=True)
    keys = ("st_w", "bare_w", "bare_w_fs", "st_full", "bare_full", "bare_full_fs", "st_new", "bare_new", "bare_new_fs")
    p = {k: os.path.join(root, f"{k}.ckpt") for k in keys}

    def model_only() -> Any:
        return model.state_dict()

    def model_opt() -> Any:  # the same tensors as statetrain's checkpoint: weights + Adam state
        return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}

    with silenced():
        saves = [
            Op("st_w", "statetrain save_checkpoint(weights_only=True)",
               lambda: trainer.save_checkpoint(p["st_w"], weights_only=True), p["st_w"]),
            Op("bare_w", "torch.save(model.state_dict(), path)", lambda: bare_save(model_only, p["bare_w"]),
               p["bare_w"]),
            Op("bare_w_fs", "  the same + flush + fsync", lambda: bare_save(model_only, p["bare_w_fs"], True),
               p["bare_w_fs"]),
            Op("st_full", "statetrain save_checkpoint()", lambda: trainer.save_checkpoint(p["st_full"]),
               p["st_full"]),
            Op("bare_full", "torch.save({state_dict, optimizer_states}, path)",
               lambda: bare_save(model_opt, p["bare_full"]), p["bare_full"]),
            Op("bare_full_fs", "  the same + flush + fsync", lambda: bare_save(model_opt, p["bare_full_fs"], True),
               p["bare_full_fs"]),
            Op("st_new", "statetrain save_checkpoint(), new path",
               lambda: trainer.save_checkpoint(p["st_new"]), p["st_new"], remove(p["st_new"])),
            Op("bare_new", "torch.save({...}, path), new path", lambda: bare_save(model_opt, p["bare_new"]),
               p["bare_new"], remove(p["bare_new"])),
            Op("bare_new_fs", "  the same + flush + fsync", lambda: bare_save(model_opt, p["bare_new_fs"], True),
               p["bare_new_fs"], remove(p["bare_new_fs"])),
        ]
        save_t = round_robin(saves, repeats, "save")
        loads = [
            Op("st_w", "engine.checkpoint.load(weights-only ckpt)", lambda: st_checkpoint.load(p["st_w"]), p["st_w"]),
            Op("st_w_raw", "  torch.load(same file, weights_only=True)",
               lambda: torch.load(p["st_w"], weights_only=True), p["st_w"]),
            Op("bare_w", "torch.load(bare state_dict, weights_only=True)",
               lambda: torch.load(p["bare_w"], weights_only=True), p["bare_w"]),
            Op("st_full", "engine.checkpoint.load(full ckpt)", lambda: st_checkpoint.load(p["st_full"]), p["st_full"]),
            Op("st_full_raw", "  torch.load(same file, weights_only=True)",
               lambda: torch.load(p["st_full"], weights_only=True), p["st_full"]),
            Op("bare_full", "torch.load(bare model+optimizer, weights_only=True)",
               lambda: torch.load(p["bare_full"], weights_only=True), p["bare_full"]),
        ]
        load_t = round_robin(loads, repeats, "load")
        n_stages = max(4, repeats // 2)
        st_parts: list[dict[str, float]] = []
        bare_parts: list[dict[str, float]] = []
        for r in range(n_stages):  # alternate which goes first
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                os.sync()
                gc.collect()
                if which == 0:
                    st_parts.append(st_stages(trainer, p["st_full"]))
                else:
                    bare_parts.append(bare_stages(model_opt, p["bare_full"]))
                gc.collect()
        load_parts = [load_stages(p["st_full"]) for _ in range(n_stages)]

    med = statistics.median

    def table(title: str, ops: list[Op], times: dict[str, list[float]]) -> None:
        print(f"\n{title}")
        head = f"{'operation':<52}{'median':>9}{'IQR':>8}{'min':>8}{'file':>9}{'MB/s':>8}"
        print(head)
        print(f"{'':<52}{'ms':>9}{'ms':>8}{'ms':>8}{'MB':>9}")
        print("-" * len(head))
        for op in ops:
            ts = times[op.key]
            size = os.path.getsize(op.path) / MB
            print(f"{op.label:<52}{med(ts) * 1e3:>9.1f}{_iqr(ts) * 1e3:>8.1f}{min(ts) * 1e3:>8.1f}{size:>9.1f}"
                  f"{size / med(ts):>8.0f}")

    def paired(times: dict[str, list[float]], a: str, b: str) -> float:
        """Median over rounds of a/b within the same round (cancels slow load changes)."""
        return med(x / y for x, y in zip(times[a], times[b]))

    table("Save, over the file of the previous round unless 'new path' (lower is better):", saves, save_t)
    table("Load (from the page cache: every file was just written; lower is better):", loads, load_t)

    print("\nRatios: medians of per-round pairs")
    for what, times, a, b in (("save, model only, over the old file", save_t, "st_w", "bare_w"),
                              ("save, model + optimizer, over the old file", save_t, "st_full", "bare_full"),
                              ("save, model + optimizer, new path", save_t, "st_new", "bare_new"),
                              ("load, model only", load_t, "st_w", "bare_w"),
                              ("load, model + optimizer", load_t, "st_full", "bare_full")):
        ratio = paired(times, a, b)
        extra = ""
        if times is save_t:
            extra = (f"   [vs bare + fsync: {paired(times, a, b + '_fs'):.2f}x; bare + fsync vs bare: "
                     f"{paired(times, b + '_fs', b):.2f}x]")
        print(f"target {what:<43} statetrain <= {TARGET_RATIO:.1f}x bare: {ratio:.2f}x  "
              f"{'PASS' if ratio <= TARGET_RATIO else 'MISS'}{extra}")
    load_raw = paired(load_t, "st_full", "st_full_raw")
    sizes = {k: os.path.getsize(v) for k, v in p.items()}
    print(f"file size, statetrain over bare: model only +{(sizes['st_w'] - sizes['bare_w']) / 1e3:.1f} kB, "
          f"model + optimizer +{(sizes['st_full'] - sizes['bare_full']) / 1e3:.1f} kB (run state, RNG states, "
          f"hyperparameters: the same tensors otherwise)")

    print(f"\nWhere the time of a full save over the old file goes (both taken apart; medians of {n_stages}, "
          "interleaved):")
    print(f"  {'stage':<46}{'statetrain':>11}{'bare':>9}")
    st_total = bare_total = 0.0
    for k in STAGES:
        s_v, b_v = med(x[k] for x in st_parts), med(x[k] for x in bare_parts)
        if not k.startswith("  "):
            st_total += s_v
            bare_total += b_v
        print(f"  {k:<46}{s_v * 1e3:>8.1f} ms{b_v * 1e3:>6.1f} ms")
    print(f"  {'sum':<46}{st_total * 1e3:>8.1f} ms{bare_total * 1e3:>6.1f} ms")
    print(f"Where engine.checkpoint.load of the full checkpoint goes (medians of {n_stages}); it takes "
          f"{load_raw:.2f}x torch.load of the same file:")
    for k in load_parts[0]:
        print(f"  {k:<46}{med(x[k] for x in load_parts) * 1e3:>8.2f} ms")


# -- 2. mid-epoch resume at batch 100,000 -----------------------------------------------------------------------------
class CountingDataset(Dataset):
    """n samples (features, index); counts its __getitem__ calls, so a skip that loads samples shows."""

    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(SEED))
        self.calls = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.calls += 1
        return self.x[i], i


def bench_resume(repeats: int) -> None:
    n = SKIP_BATCH * RESUME_BATCH_SIZE
    dataset = CountingDataset(n)
    loader = DataLoader(dataset, batch_size=RESUME_BATCH_SIZE, shuffle=True)
    print(f"\n2. Mid-epoch resume at batch {SKIP_BATCH:,}: map-style DataLoader over {n:,} samples, batch_size="
          f"{RESUME_BATCH_SIZE}, shuffle=True, num_workers=0; resume_iterator(loader, skip={SKIP_BATCH - 1:,}) + the "
          f"first next(); {repeats} repeats, medians")
    torch.manual_seed(SEED)
    rng = torch.get_rng_state()

    creates, firsts, totals, calls = [], [], [], []
    batch = None
    for _ in range(repeats):
        torch.set_rng_state(rng)
        dataset.calls = 0
        gc.collect()
        t0 = time.perf_counter()
        it = resume_iterator(loader, skip=SKIP_BATCH - 1)
        t1 = time.perf_counter()
        batch = next(it)
        t2 = time.perf_counter()
        creates.append(t1 - t0)
        firsts.append(t2 - t1)
        totals.append(t2 - t0)
        calls.append(dataset.calls)
        del it

    # the reference: a fresh iter(loader) from the same RNG state, iterated (and loaded) up to batch 100,000
    torch.set_rng_state(rng)
    dataset.calls = 0
    t0 = time.perf_counter()
    ref_it = iter(loader)
    for _ in range(SKIP_BATCH - 1):
        next(ref_it)
    ref = next(ref_it)
    naive = time.perf_counter() - t0
    naive_calls = dataset.calls
    del ref_it

    same = batch is not None and torch.equal(batch[0], ref[0]) and torch.equal(batch[1], ref[1])
    med = statistics.median
    print(f"  {'resume_iterator() call':<60}{med(creates) * 1e3:>9.2f} ms")
    print(f"  {f'first next() (replays {SKIP_BATCH - 1:,} batches of indices, loads one)':<60}"
          f"{med(firsts) * 1e3:>9.1f} ms")
    print(f"  {'total':<60}{med(totals) * 1e3:>9.1f} ms  (min {min(totals) * 1e3:.1f}, "
          f"max {max(totals) * 1e3:.1f})")
    print(f"  __getitem__ calls per resume: {sorted(set(calls))} (one batch = {RESUME_BATCH_SIZE})")
    print(f"  reference: fresh iter(loader) after the same torch.set_rng_state, {SKIP_BATCH:,} next() calls: "
          f"{naive:.1f} s, {naive_calls:,} __getitem__ calls")
    print(f"  resumed batch == reference batch {SKIP_BATCH:,} (features and sample indices): {same}; first indices "
          f"{batch[1][:4].tolist()}")
    ok = med(totals) < TARGET_RESUME_S and set(calls) == {RESUME_BATCH_SIZE} and same
    print(f"\ntarget resume at batch {SKIP_BATCH:,} < {TARGET_RESUME_S:.0f} s, one batch loaded, same batch: "
          f"{med(totals):.3f} s  {'PASS' if ok else 'MISS'}")


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run both measurements, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 1.5 minutes)")
    parser.add_argument("--dir", default=None, help="where to write the checkpoint files (default: a temp dir)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    save_repeats, resume_repeats = (3, 3) if args.quick else (9, 7)
    print(f"statetrain checkpoint benchmark ({'quick' if args.quick else 'full'}): torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="statetrain-ckpt-bench-", dir=args.dir) as root:
        bench_save_load(root, save_repeats)
    bench_resume(resume_repeats)
    print("\n3. Per-step cost of the default ModelCheckpoint: see benchmarks/overhead.py (its 'defaults' rows run "
          "with ModelCheckpoint; 'fixed' holds the checkpoint write at the end of the fit).")
    load = os.getloadavg()[0]
    print(f"\nTotal {time.perf_counter() - start:.0f} s; load average {load_before:.2f} before, {load:.2f} after on "
          f"{os.cpu_count()} CPUs" + ("  (other processes competed for the CPUs: expect noise)"
                                     if max(load, load_before) > 1.5 else ""))


if __name__ == "__main__":
    main()
