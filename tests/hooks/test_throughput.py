"""ThroughputMonitor: keys, steps and rolling-window rates on real fits with a fake perf_counter (key names and
logging steps checked against Lightning 2.6.6: 8 batches, log_every_n_steps=2, window_size=3 -> steps 1, 3, 5, 7,
rates from step 3 on)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hooks.logger import Logger
from hooks.throughput import ThroughputMonitor


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "rec"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def throughput(self) -> list[tuple[int, dict[str, float]]]:
        return [(s, m) for s, m in self.rows if "train/time" in m]


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("hooks.throughput.perf_counter", c)
    return c


def timed_model(kit: Any, clock: Clock, train_s: float = 1.0, val_s: float = 5.0) -> Any:
    class Timed(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            clock.now += train_s
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            clock.now += val_s
            super().validation_step(batch, batch_idx)

    return Timed()


def run(kit: Any, clock: Clock, monitor: ThroughputMonitor, n: int = 16, val: bool = False,
        **flags: Any) -> RecordingLogger:
    logger = RecordingLogger()
    trainer = kit.trainer(max_epochs=1, logger=logger, callbacks=[monitor], log_every_n_steps=2,
                          enable_progress_bar=False, num_sanity_val_steps=0, **flags)
    trainer.fit(timed_model(kit, clock), kit.loader(n, batch_size=2), kit.loader(4, batch_size=2) if val else None)
    return logger


def test_keys_steps_and_window_rates(kit: Any, clock: Clock) -> None:
    rows = run(kit, clock, ThroughputMonitor(window_size=3)).throughput()
    assert [s for s, _ in rows] == [1, 3, 5, 7]
    assert rows[0][1] == {"train/time": 2.0, "train/batches": 2, "train/samples": 4, "epoch": 0}
    # batch k ends at k + 1 s; at k = 3 the window holds batches 2..4 -> 2 batches / 2 s, 4 samples / 2 s
    assert rows[1][1] == {"train/time": 4.0, "train/batches": 4, "train/samples": 8, "epoch": 0,
                          "train/batches_per_sec": 1.0, "train/samples_per_sec": 2.0,
                          "train/device/batches_per_sec": 1.0, "train/device/samples_per_sec": 2.0}
    assert rows[3][1]["train/samples"] == 16 and rows[3][1]["train/time"] == 8.0


def test_batch_size_fn_and_separator(kit: Any, clock: Clock) -> None:
    mon = ThroughputMonitor(batch_size_fn=lambda b: 3 * len(b[0]), window_size=2, separator=".")
    rows = [(s, m) for s, m in run(kit, clock, mon, n=8).rows if "train.time" in m]
    assert rows[-1][1]["train.samples"] == 24
    assert rows[-1][1]["train.samples_per_sec"] == 6.0 and rows[-1][1]["train.device.batches_per_sec"] == 1.0


def test_rates_use_only_the_last_window(kit: Any, clock: Clock) -> None:
    class Slowing(ThroughputMonitor):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.timestamp.batches_seen > 4:  # batches 5.. take 3 s instead of 1 s
                clock.now += 2.0
            super().on_train_batch_end(trainer, *args)

    rows = run(kit, clock, Slowing(window_size=3)).throughput()
    assert rows[-1][1]["train/batches_per_sec"] == pytest.approx(2 / 6)


def test_validation_inside_fit_is_not_training_time(kit: Any, clock: Clock) -> None:
    rows = run(kit, clock, ThroughputMonitor(window_size=2), val=True, val_check_interval=4).throughput()
    # validation (2 batches x 5 s) runs after batches 3 and 7; train/time counts the 8 training seconds only
    assert [(s, m["train/time"]) for s, m in rows] == [(1, 2.0), (3, 4.0), (5, 6.0), (7, 8.0)]
    assert rows[2][1]["train/batches_per_sec"] == 1.0


def test_no_rates_until_the_window_is_full(kit: Any, clock: Clock) -> None:
    rows = run(kit, clock, ThroughputMonitor()).throughput()
    assert rows and not any("train/batches_per_sec" in m for _, m in rows)


def test_cuda_sync_only_on_logging_batches(kit: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: syncs.append(1))

    class OnCuda(ThroughputMonitor):
        def _reset(self, trainer: Any) -> None:
            super()._reset(trainer)
            self._cuda = True  # what a CUDA root device sets

    rows = run(kit, clock, OnCuda(window_size=2)).throughput()
    assert len(syncs) == len(rows) == 4  # 8 batches, 4 logging batches, no sync on the others


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"window_size=1.*int >= 2"):
        ThroughputMonitor(window_size=1)
    with pytest.raises(TypeError, match="batch_size_fn=3"):
        ThroughputMonitor(batch_size_fn=3)  # type: ignore[arg-type]
