"""CSVLogger: metrics.csv read back with the csv module (Lightning's columns, header growth rewrites the whole
file atomically, buffering), hparams.yaml, versions, write failures, and a real Trainer run."""

from __future__ import annotations

import argparse
import csv
import errno
import os
import types

import pytest
import torch
import yaml
from torch import nn

import engine as pl
from engine.errors import MisconfigurationException
from hooks import csv_logger as csv_mod
from engine.utilities import cloud_io
from hooks.csv_logger import CSVLogger
from hooks.logger import LoggerError, NoOpExperiment


def read_csv(lg: CSVLogger) -> tuple[list[str], list[dict[str, str]]]:
    with open(os.path.join(lg.log_dir, "metrics.csv"), newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_rows_and_lightnings_sorted_columns(tmp_path):
    lg = CSVLogger(tmp_path)
    lg.log_metrics({"loss": 0.5, "epoch": 0}, 0)
    lg.log_metrics({"val_loss": torch.tensor(0.25), "epoch": 0}, 1)
    lg.log_metrics({"b": 1 / 3}, 2)
    lg.finalize("success")
    assert lg.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    header, rows = read_csv(lg)
    assert header == ["b", "epoch", "loss", "step", "val_loss"]  # 'step' sorted in with the rest, as Lightning
    assert rows == [
        {"b": "", "epoch": "0", "loss": "0.5", "step": "0", "val_loss": ""},
        {"b": "", "epoch": "0", "loss": "", "step": "1", "val_loss": "0.25"},
        {"b": repr(1 / 3), "epoch": "", "loss": "", "step": "2", "val_loss": ""},
    ]


def test_header_growth_rewrites_the_whole_file(tmp_path):
    lg = CSVLogger(tmp_path, flush_logs_every_n_steps=1)  # every row is written at once
    lg.log_metrics({"loss": 1.0}, 0)
    lg.log_metrics({"loss": 0.5}, 1)
    assert read_csv(lg) == (["loss", "step"], [{"loss": "1.0", "step": "0"}, {"loss": "0.5", "step": "1"}])
    lg.log_metrics({"acc": 0.9, "loss": 0.25}, 2)  # a new column after rows were written
    lg.log_metrics({"loss": 0.125}, 3)  # appended under the wider header
    lg.log_metrics({"lr": 0.01}, 4)  # grows again
    lg.finalize("success")
    header, rows = read_csv(lg)
    assert header == ["acc", "loss", "lr", "step"]
    assert rows == [
        {"acc": "", "loss": "1.0", "lr": "", "step": "0"},
        {"acc": "", "loss": "0.5", "lr": "", "step": "1"},
        {"acc": "0.9", "loss": "0.25", "lr": "", "step": "2"},
        {"acc": "", "loss": "0.125", "lr": "", "step": "3"},
        {"acc": "", "loss": "", "lr": "0.01", "step": "4"},
    ]
    assert sorted(os.listdir(lg.log_dir)) == ["metrics.csv"]  # no temp files left behind


def test_buffered_until_flush_step_save_or_finalize(tmp_path):
    lg = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = os.path.join(lg.log_dir, "metrics.csv")
    lg.log_metrics({"x": 0.0}, 0)
    lg.log_metrics({"x": 1.0}, 1)
    assert not os.path.exists(path)
    lg.log_metrics({"x": 2.0}, 2)  # (2 + 1) % 3 == 0
    assert [r["step"] for r in read_csv(lg)[1]] == ["0", "1", "2"]
    lg.log_metrics({"x": 3.0}, 3)
    assert len(read_csv(lg)[1]) == 3
    lg.save()
    assert len(read_csv(lg)[1]) == 4
    lg.log_metrics({"x": 4.0}, 4)
    lg.finalize("success")
    assert [r["x"] for r in read_csv(lg)[1]] == ["0.0", "1.0", "2.0", "3.0", "4.0"]


def test_step_none_counts_rows_and_prefix(tmp_path):
    lg = CSVLogger(tmp_path, prefix="train")
    lg.log_metrics({"loss": 1.0})
    lg.log_metrics({"loss": 2.0})
    lg.finalize("success")
    assert read_csv(lg) == (["step", "train-loss"], [{"step": "0", "train-loss": "1.0"},
                                                    {"step": "1", "train-loss": "2.0"}])


def test_hparams_yaml_nested_sanitized_and_merged(tmp_path):
    lg = CSVLogger(tmp_path)
    lg.log_hyperparams({"lr": 0.1, "opt": {"name": "adam", "betas": (0.9, 0.99)}, "act": nn.ReLU})
    lg.log_hyperparams(argparse.Namespace(wd=0.01), metrics={"hp": 1.0})
    lg.finalize("success")
    with open(os.path.join(lg.log_dir, "hparams.yaml")) as fh:
        assert yaml.safe_load(fh) == {"lr": 0.1, "opt": {"name": "adam", "betas": [0.9, 0.99]},
                                      "act": "<class 'torch.nn.modules.activation.ReLU'>", "wd": 0.01}
    assert read_csv(lg) == (["hp", "step"], [{"hp": "1.0", "step": "0"}])


def test_versions_and_reused_version_overwrites(tmp_path):
    for n in range(3):
        (tmp_path / "lightning_logs" / f"version_{n}").mkdir(parents=True)
    lg = CSVLogger(tmp_path)
    assert lg.version == 3 and lg.root_dir == str(tmp_path / "lightning_logs") and lg.save_dir == str(tmp_path)
    assert CSVLogger(tmp_path, name=None, version="run").log_dir == str(tmp_path / "run")
    first = CSVLogger(tmp_path, version=9)
    first.log_metrics({"a": 1.0}, 0)
    first.finalize("success")
    again = CSVLogger(tmp_path, version=9)
    with pytest.warns(UserWarning, match=r"Experiment logs directory .*version_9 exists and is not empty\. Previous "
                      r"log files in this directory will be deleted when the new ones are saved!"):
        again.log_metrics({"b": 2.0}, 0)
    again.finalize("success")
    assert read_csv(again) == (["b", "step"], [{"b": "2.0", "step": "0"}])


def test_bad_arguments():
    with pytest.raises(MisconfigurationException, match=r"flush_logs_every_n_steps=0\): expected an int >= 1"):
        CSVLogger(".", flush_logs_every_n_steps=0)
    with pytest.raises(TypeError, match=r"CSVLogger\(version=\[1\]\): expected None"):
        CSVLogger(".", version=[1])  # type: ignore[arg-type]


# -- failures ---------------------------------------------------------------------------------------------------------
def exercise(lg: CSVLogger) -> None:
    lg.log_hyperparams({"lr": 0.1})
    for step in range(30):
        lg.log_metrics({"loss": float(step)}, step)
        lg.save()
    lg.finalize("failed")


def test_save_dir_is_a_file(tmp_path, errors):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    lg = CSVLogger(blocker, strict=True)
    exercise(lg)
    assert isinstance(lg.error, OSError) and lg.version == 0
    assert isinstance(lg.experiment, NoOpExperiment)
    assert len(errors.messages) == 1 and "CSVLogger" in errors.messages[0] and "strict=True" in errors.messages[0]


def enospc(*args: object, **kwargs: object):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_on_the_first_write(tmp_path, errors, monkeypatch):
    monkeypatch.setattr(cloud_io, "tempfile", types.SimpleNamespace(mkstemp=enospc))  # the atomic-write helper
    lg = CSVLogger(tmp_path)
    exercise(lg)
    assert lg.error.errno == errno.ENOSPC
    assert len(errors.messages) == 1 and "hparams.yaml" in errors.messages[0]
    assert os.listdir(lg.log_dir) == []


def test_disk_full_while_appending(tmp_path, errors, monkeypatch):
    lg = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    lg.log_metrics({"loss": 1.0}, 0)
    monkeypatch.setattr(csv_mod, "open", enospc, raising=False)  # the append path opens the file itself
    lg.log_metrics({"loss": 2.0}, 1)
    lg.log_metrics({"loss": 3.0, "acc": 1.0}, 2)
    lg.finalize("success")
    assert lg.error.errno == errno.ENOSPC
    assert len(errors.messages) == 1 and "metrics.csv" in errors.messages[0]
    monkeypatch.undo()
    assert read_csv(lg) == (["loss", "step"], [{"loss": "1.0", "step": "0"}])  # what was written stays intact


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path, errors):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        lg = CSVLogger(ro)
        exercise(lg)
        assert isinstance(lg.error, PermissionError) and len(errors.messages) == 1
    finally:
        ro.chmod(0o755)


# -- with the Trainer -------------------------------------------------------------------------------------------------
class Reg(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def fit(kit, logger, **flags):
    data = torch.utils.data.DataLoader(kit.dataset(8), batch_size=2)
    trainer = kit.trainer(logger=logger, max_epochs=2, log_every_n_steps=2, enable_progress_bar=False, **flags)
    trainer.fit(Reg(), data)
    return trainer


def test_trainer_writes_step_rows_and_hparams(tmp_path, kit):
    lg = CSVLogger(tmp_path)
    trainer = fit(kit, lg)
    assert trainer.log_dir == lg.log_dir
    header, rows = read_csv(lg)
    assert header == ["epoch", "step", "train_loss"]
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "1"), ("0", "3"), ("1", "5"), ("1", "7")]
    assert all(float(r["train_loss"]) >= 0 for r in rows)
    with open(os.path.join(lg.log_dir, "hparams.yaml")) as fh:
        assert yaml.safe_load(fh)["lr"] == 0.1


def test_trainer_survives_a_failing_logger_and_strict_raises_after_the_run(tmp_path, kit, errors):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # checkpoints would go under the same unwritable directory, and a failed checkpoint fails the run (it is not
    # optional like logging): this test is about the logger
    trainer = fit(kit, CSVLogger(blocker), enable_checkpointing=False)
    assert trainer.global_step == 8 and len(errors.messages) == 1
    with pytest.raises(LoggerError, match="CSVLogger could not write"):
        fit(kit, CSVLogger(blocker, strict=True), enable_checkpointing=False)
