"""Per-step cost of the optimisation handlers (clipping, accumulation, bf16 autocast) beyond the operation itself.

For each feature, a hand-written PyTorch loop doing the operation and statetrain doing it through its handler run
interleaved in one process, one thread, on the seed model with 50,000 samples. The handler's own cost is

    (statetrain with the feature - hand loop with the feature) - (statetrain plain - hand loop plain)

i.e. what the feature costs in statetrain beyond the operation and beyond the engine's base overhead. Target
(issue #8): at most 10 µs per step. Prints figures; asserts nothing.

    python benchmarks/handlers.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout too
import engine as st  # noqa: E402

FEATURES: dict[str, dict[str, Any]] = {
    "plain": {},
    "clip norm 0.5": {"gradient_clip_val": 0.5},
    "accumulate 4": {"accumulate_grad_batches": 4},
    "bf16-mixed": {"precision": "bf16-mixed"},
}


class Seed(st.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(10, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 10, generator=g), torch.randn(n, 1, generator=g)), batch_size=32)


def hand(feature: str, data: DataLoader) -> Callable[[], float]:
    def run() -> float:
        model = Seed()
        opt = model.configure_optimizers()
        n = FEATURES[feature].get("accumulate_grad_batches", 1)
        last = len(data) - 1
        t = time.perf_counter()
        for i, batch in enumerate(data):
            if feature == "bf16-mixed":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model.training_step(batch, i)
            else:
                loss = model.training_step(batch, i)
            if n > 1:
                loss = loss / n
            if i % n == 0:
                opt.zero_grad()
            loss.backward()
            if (i + 1) % n == 0 or i == last:
                if feature.startswith("clip"):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
        return (time.perf_counter() - t) / len(data)
    return run


def engine(feature: str, data: DataLoader, root: str) -> Callable[[], float]:
    def run() -> float:
        trainer = st.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
                             **FEATURES[feature])
        model = Seed()
        t = time.perf_counter()
        trainer.fit(model, data)
        return (time.perf_counter() - t) / len(data)
    return run


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    opts = args.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    data = loader(10_000 if opts.quick else 50_000)
    rounds = 3 if opts.quick else 9
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as root:
        runs = [((f, kind), fn) for f in FEATURES for kind, fn in
                (("hand", hand(f, data)), ("statetrain", engine(f, data, root)))]
        for r in range(rounds):
            for key, fn in runs[r % len(runs):] + runs[: r % len(runs)]:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    times.setdefault(key, []).append(fn())
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    print(f"{len(data)} steps per fit, {rounds} interleaved rounds (µs per step)")
    # the minimum is the figure least disturbed by other load on the machine; the median is shown beside it
    for label, stat in (("minimum", min), ("median", statistics.median)):
        fig = {k: stat(v) * 1e6 for k, v in times.items()}
        base = fig[("plain", "statetrain")] - fig[("plain", "hand")]
        print(f"-- {label} of the rounds")
        print(f"{'feature':<16}{'hand loop':>11}{'statetrain':>12}{'over hand':>11}{'handler cost':>14}")
        for f in FEATURES:
            h, s = fig[(f, "hand")], fig[(f, "statetrain")]
            cost = (s - h) - base
            verdict = "" if f == "plain" else ("PASS" if cost <= 10 else "MISS")
            extra = "(base)" if f == "plain" else f"{cost:+.1f}"
            print(f"{f:<16}{h:>11.1f}{s:>12.1f}{s - h:>+11.1f}{extra:>14}  {verdict}")
    print("handler cost = (statetrain - hand) with the feature, minus the same for the plain fit; target <= 10 µs")


if __name__ == "__main__":
    main()
