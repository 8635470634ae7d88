"""`self.log(name, metric)` with a torchmetrics.Metric and `self.log_dict(collection)` (Lightning's semantics):
the step value is what the metric's forward returned for that batch, the epoch value is `compute()` over the
epoch, and the metric is `reset()` at every epoch end. torchmetrics is imported only when a Metric is logged."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

torchmetrics = pytest.importorskip("torchmetrics")

import engine as pl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class SumLogger(pl.Callback):
    """Records the metric values the trainer exposes after each batch and at each epoch end."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epochs: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append(float(trainer.callback_metrics["total_step"]))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.epochs.append(float(trainer.callback_metrics["total_epoch"]))


def _module(kit: Any) -> Any:
    class M(kit.Model):
        def __init__(self) -> None:
            super().__init__()
            self.total = torchmetrics.SumMetric()
            self.acc = torchmetrics.MeanMetric()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self._loss(batch)
            self.total(batch[0][:, 0])  # forward: returns (and caches) this batch's sum, accumulates the epoch's
            self.log("total", self.total, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.acc.update(batch[1][:, 0])
            self.log("val_mean", self.acc)

    return M()


def test_step_value_is_forward_epoch_value_is_compute_and_reset_each_epoch(kit: Any) -> None:
    loader = kit.loader(8, batch_size=2)
    rec = SumLogger()
    model = _module(kit)
    trainer = kit.trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[rec], num_sanity_val_steps=0)
    trainer.fit(model, loader, kit.loader(6, batch_size=4, seed=1))
    x0 = [float(b[0][:, 0].sum()) for b in loader]  # reference: the batch sums, computed here by hand
    assert rec.steps == pytest.approx(x0 * 2)
    # compute() over one epoch only: the metric was reset after epoch 0 (cumulative would be twice the sum)
    assert rec.epochs == pytest.approx([sum(x0), sum(x0)])
    val_y = torch.cat([b[1][:, 0] for b in kit.loader(6, batch_size=4, seed=1)])
    # the plain mean of every value the metric saw, not a batch-size weighted mean of per-batch values
    assert float(trainer.callback_metrics["val_mean"]) == pytest.approx(float(val_y.mean()))
    assert float(model.total.sum_value) == 0.0  # reset at the last epoch end too


def test_validate_returns_compute_and_log_dict_takes_a_metric_collection(kit: Any) -> None:
    class M(kit.Model):
        def __init__(self) -> None:
            super().__init__()
            self.metrics = torchmetrics.MetricCollection(
                {"vsum": torchmetrics.SumMetric(), "vmax": torchmetrics.MaxMetric()}, prefix="val_")

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.metrics.update(batch[1][:, 0])
            self.log_dict(self.metrics)

    model = M()
    loader = kit.loader(6, batch_size=4, seed=3)
    trainer = kit.trainer(logger=False, enable_progress_bar=False)
    out = trainer.validate(model, loader)
    y = torch.cat([b[1][:, 0] for b in loader])
    assert out[0] == pytest.approx({"val_vsum": float(y.sum()), "val_vmax": float(y.max())})
    out2 = trainer.validate(model, loader)  # reset after the first run: same values, not doubled
    assert out2[0] == pytest.approx(out[0])


def test_metric_logged_to_a_logger_per_step_and_per_epoch(kit: Any, tmp_path: Path) -> None:
    model = _module(kit)
    logger = pl.CSVLogger(tmp_path, name="m")
    trainer = kit.trainer(max_epochs=1, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                          enable_progress_bar=False, limit_val_batches=0)
    loader = kit.loader(4, batch_size=2)
    trainer.fit(model, loader)
    text = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = text[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in text[1:]]
    step_values = [float(r["total_step"]) for r in rows if r.get("total_step")]
    epoch_values = [float(r["total_epoch"]) for r in rows if r.get("total_epoch")]
    sums = [float(b[0][:, 0].sum()) for b in loader]
    assert step_values == pytest.approx(sums)
    assert epoch_values == pytest.approx([sum(sums)])


def test_tensor_only_runs_never_import_torchmetrics() -> None:
    code = textwrap.dedent("""
        import sys, torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset
        import engine as pl

        class M(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = nn.Linear(2, 1)
            def training_step(self, batch, batch_idx):
                loss = self.layer(batch[0]).pow(2).mean()
                self.log("loss", loss, on_epoch=True)
                self.log_dict({"a": 1.0})
                return loss
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        dl = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
        pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(M(), dl)
        print("torchmetrics" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_metric_that_computes_a_non_tensor_is_refused_by_name(kit: Any) -> None:
    class Weird(torchmetrics.Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("n", default=torch.tensor(0.0), dist_reduce_fx="sum")

        def update(self, x: torch.Tensor) -> None:
            self.n += x.numel()

        def compute(self) -> dict:
            return {"n": self.n}

    class M(kit.Model):
        def __init__(self) -> None:
            super().__init__()
            self.weird = Weird()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.weird.update(batch[0])
            self.log("weird", self.weird)

    trainer = kit.trainer(logger=False, enable_progress_bar=False)
    match = r"self.log\('weird', metric\): Weird.compute\(\) returned a dict"
    with pytest.raises(pl.MisconfigurationException, match=match):
        trainer.validate(M(), kit.loader(4))
