"""What tracing costs: the recorder's own work per training batch, timed apart; per training step at trace level
'step' and 'epoch' against the same run without a trace; and reading + diffing two 1,000,000-record traces.

Run `python benchmarks/tracing.py` (about two minutes on 2 cores) or `--quick`. The fits are the overhead benchmark's
workload (b) (`Linear(10, 1)`, 50,000 samples, batch 32, Adam, `self.log('train_loss', loss)` every step; 1,563
steps) with `Trainer(logger=False, enable_progress_bar=False)` and `trace=False | TraceConfig(level=...)`, run
round-robin; the table shows medians over rounds of the fit's wall time per step and the overhead against the
untraced run of the same round (target at 'step': <= 5%). The 1M-record traces are written by `TraceWriter` from
records of a real run (fingerprint, loss, lr, Timestamp); the diff compares two equal traces, the worst case (every
record compared), then one that differs in its last record.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import engine as st  # noqa: E402
from overhead import Workload, module_classes, silenced  # noqa: E402

from engine.trace import TraceConfig, diff_traces, read_trace  # noqa: E402
from engine.trace.schema import TraceHeader  # noqa: E402
from engine.trace.writer import TraceWriter  # noqa: E402

TARGET_STEP = 1.05


def fit_time(level: str | None, workload: Workload, root: str) -> float:
    """Wall seconds of one fit with trace level `level` (None: no trace)."""
    _, logging_ = module_classes(st.LightningModule)
    torch.manual_seed(0)
    model = logging_()
    trace = False if level is None else TraceConfig(path=os.path.join(root, f"{level}.jsonl"), level=level)
    trainer = st.Trainer(max_epochs=workload.epochs, default_root_dir=root, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False, trace=trace)
    with silenced():
        start = time.perf_counter()
        trainer.fit(model, workload.loader)
        return time.perf_counter() - start


def bench_steps(rounds: int) -> None:
    torch.set_num_threads(1)
    workload = Workload("(b) 50k samples", 50_000, 1)
    levels = [None, "epoch", "step"]
    times: dict[str | None, list[float]] = {lv: [] for lv in levels}
    ratios: dict[str | None, list[float]] = {lv: [] for lv in levels}
    with tempfile.TemporaryDirectory() as root:
        fit_time("step", Workload("warm", 1000, 1), root)
        for r in range(rounds):
            order = levels[r % 3:] + levels[:r % 3]
            got = {lv: fit_time(lv, workload, root) for lv in order}
            for lv in levels:
                times[lv].append(got[lv] / workload.steps)
                ratios[lv].append(got[lv] / got[None])
        size = os.path.getsize(os.path.join(root, "step.jsonl"))
    print(f"per-step cost of tracing, {workload.name}, {workload.steps} steps, {rounds} rounds (medians)")
    print(f"  {'trace':<8}{'fit/step':>12}{'vs no trace':>14}{'overhead':>12}")
    for lv in levels:
        t, ratio = statistics.median(times[lv]), statistics.median(ratios[lv])
        extra = (t - statistics.median(times[None])) * 1e6
        print(f"  {str(lv or 'off'):<8}{t * 1e6:>10.1f}us{ratio:>13.3f}x{extra:>10.1f}us")
    verdict = "PASS" if statistics.median(ratios["step"]) <= TARGET_STEP else "MISS"
    print(f"  target 'step' <= {TARGET_STEP:.2f}x: {verdict}; trace file at 'step': {size / 1e6:.2f} MB "
          f"({size / workload.steps:.0f} B/step)")


def bench_record_cost(n: int = 20_000) -> None:
    """The recorder's own cost per training batch (record built, tensors converted and the line written at the
    flush), timed apart from a fit, next to the raw loop's step on the same data: a figure that machine load
    disturbs less than the difference of two fits."""
    import types

    from engine import events as ev
    from engine.state import Timestamp
    from hooks.trace_recorder import TraceRecorder
    from overhead import RawModel

    torch.set_num_threads(1)
    workload = Workload("(b) 50k samples", 50_000, 1)
    model = RawModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for i, batch in enumerate(workload.loader):
        loss = model.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    raw = (time.perf_counter() - start) / workload.steps
    batches = [b for _, b in zip(range(64), workload.loader)]
    with tempfile.TemporaryDirectory() as root:
        machine = types.SimpleNamespace(position="optimizer_step", name="fit", to_mermaid=lambda: "")
        run = types.SimpleNamespace(stage="train", global_rank=0, world_size=1, machine=machine, trainer=None,
                                    eval_machine=types.SimpleNamespace(position=None, name="evaluate",
                                                                       to_mermaid=lambda: ""),
                                    pipeline=types.SimpleNamespace(optimizers=[opt],
                                                                   context=types.SimpleNamespace(grad_norm=None)))
        recorder = TraceRecorder(TraceConfig(path=os.path.join(root, "t.jsonl")))
        recorder.record(ev.Setup(run, Timestamp(), "fit"))
        recorder.record(ev.FitStarted(run, Timestamp()))
        events = [ev.BatchEnded(run, Timestamp(0, i, i + 1, i + 1, 32 * (i + 1)), {"loss": torch.tensor(0.5 + i)},
                                batches[i % 64], i) for i in range(n)]
        start = time.perf_counter()
        for e in events:
            recorder.on_batch_ended(e)
        recorder.close()
        per = (time.perf_counter() - start) / n
    print(f"recorder cost per training batch at 'step' (record + convert + write): {per * 1e6:.2f} us; raw loop "
          f"step on the same data: {raw * 1e6:.1f} us -> {per / raw * 100:.1f}% of a raw step")


def synth_trace(path: str, n: int, template: list[dict], tail_change: bool = False) -> None:
    """`n` records cycled from `template` (BatchEnded of a real run), with seq and Timestamp advancing."""
    writer = TraceWriter(path, flush_every=65536)
    header = TraceHeader(engine=st.__version__, torch=torch.__version__, python=sys.version.split()[0],
                         created=time.time(), trace=TraceConfig()).model_dump()
    writer.open(header)
    m = len(template)
    for i in range(n):
        rec = copy.copy(template[i % m])
        rec["seq"] = i
        rec["ts"] = [i // 50_000, i % 50_000, i + 1, i + 1, 32 * (i + 1)]
        if tail_change and i == n - 1:
            rec["loss"] = rec["loss"] + 1.0
        rec["wall"] = time.time()
        writer.add(rec)
    writer.close()


def bench_diff(n: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        with silenced():
            fit_time("step", Workload("template", 3200, 1), root)
        template = [r for r in read_trace(os.path.join(root, "step.jsonl")).records if r["ev"] == "BatchEnded"]
        a, b, c = (os.path.join(root, f"{x}.jsonl") for x in "abc")
        t0 = time.perf_counter()
        synth_trace(a, n, template)
        write_s = time.perf_counter() - t0
        synth_trace(b, n, template)
        synth_trace(c, n, template, tail_change=True)
        t0 = time.perf_counter()
        records = len(read_trace(a).records)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        equal = diff_traces(a, b)
        equal_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        differ = diff_traces(a, c)
        differ_s = time.perf_counter() - t0
        size = os.path.getsize(a)
    print(f"\n{n:,}-record traces ({size / 1e6:.0f} MB each): write {write_s:.2f} s, read_trace (parse all) "
          f"{read_s:.2f} s ({records:,} records)")
    print(f"  diff equal traces: {equal_s:.2f} s (equal={equal.equal}); diff differing at the last record: "
          f"{differ_s:.2f} s (found at record {differ.divergence.index}); target < 10 s: "
          f"{'PASS' if max(equal_s, differ_s) < 10 else 'MISS'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds and 200,000-record traces")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--records", type=int, default=None)
    args = parser.parse_args(argv)
    bench_record_cost()
    bench_steps(args.rounds or (3 if args.quick else 9))
    bench_diff(args.records or (200_000 if args.quick else 1_000_000))


if __name__ == "__main__":
    main()
