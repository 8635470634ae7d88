"""Default Trainer logging end to end: what `Trainer()` writes, at Lightning's x-axis steps, read back for real."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl


class Model(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=1)


def _scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_default_trainer_writes_tensorboard_at_lightnings_steps(tmp_path) -> None:
    """60 batches/epoch, 2 epochs, log_every_n_steps=50 (default): step metrics at steps 49 and 99, train epoch
    metrics at the last step of each epoch (59, 119), and validation epoch metrics at that same step (validation
    runs inside the last batch, before it is counted), each write with an `epoch` scalar; hparams from
    save_hyperparameters() and the Trainer config."""
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=2, enable_model_summary=False)
    trainer.fit(Model(), _loader(60), _loader(4))
    assert trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    scalars = _scalars(trainer.log_dir)
    assert [s for s, _ in scalars["train_loss_step"]] == [49, 99]
    assert [s for s, _ in scalars["train_loss_epoch"]] == [59, 119]
    assert [s for s, _ in scalars["val_loss"]] == [59, 119]
    epoch_values = {step: value for step, value in scalars["epoch"]}
    assert epoch_values[49] == 0 and epoch_values[99] == 1
    # the last epoch value written equals what trainer.callback_metrics holds
    assert scalars["train_loss_epoch"][-1][1] == pytest.approx(trainer.callback_metrics["train_loss_epoch"].item())
    assert scalars["val_loss"][-1][1] == pytest.approx(trainer.callback_metrics["val_loss"].item())
    hparams = (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    assert "lr: 0.05" in hparams and "max_epochs: 2" in hparams


def test_second_run_gets_the_next_version(tmp_path) -> None:
    for _ in range(2):
        pl.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, enable_model_summary=False,
                   enable_progress_bar=False).fit(Model(), _loader(4))
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]


def test_validate_and_test_write_epoch_metrics(tmp_path) -> None:
    class WithTest(Model):
        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

    trainer = pl.Trainer(default_root_dir=tmp_path, enable_model_summary=False, enable_progress_bar=False)
    model = WithTest()
    trainer.validate(model, _loader(4), verbose=False)
    trainer.test(model, _loader(4), verbose=False)
    version_dirs = sorted((tmp_path / "lightning_logs").iterdir())
    found = {}
    for d in version_dirs:
        found.update(_scalars(str(d)))
    assert "val_loss" in found and "test_loss" in found


def test_profiler_simple_flag_reports_states_and_handlers(tmp_path, capsys) -> None:
    from engine.log import capture_logs

    with capture_logs() as events:
        pl.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=4, profiler="simple",
                   enable_model_summary=False, enable_progress_bar=False).fit(Model(), _loader(8), _loader(2))
    reports = [e for e in events if e.get("event") == "profiler report"]
    assert reports, [e.get("event") for e in events]
    text = reports[-1]["report"]
    for state in ("state:batch", "state:backward", "state:optimizer_step", "state:validation", "state:epoch_end"):
        assert state in text
    assert "Action" in text and "Count" in text


def test_json_log_format_flag_gives_json_lines(tmp_path) -> None:
    code = (
        "import torch, engine as pl\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "class M(pl.LightningModule):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.l = torch.nn.Linear(2, 1)\n"
        "    def training_step(self, b, i):\n"
        "        return self.l(b[0]).pow(2).mean()\n"
        "    def configure_optimizers(self):\n"
        "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "pl.Trainer(max_epochs=1, log_format='json', enable_progress_bar=False).fit(\n"
        "    M(), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    events = [json.loads(line)["event"] for line in lines]
    assert "fit started" in events and "Model summary" in events
    assert any("max_epochs=1" in e for e in events)
