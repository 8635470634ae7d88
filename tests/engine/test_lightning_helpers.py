"""Small Lightning helpers users import: `utilities.model_helpers.is_overridden`, `core.saving.load_hparams_from_yaml`
(reading the hparams.yaml a real logger wrote) and `loggers.DummyLogger`."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest

import engine as pl
from engine.core.saving import load_hparams_from_yaml, save_hparams_to_yaml
from engine.loggers import DummyLogger
from engine.utilities.model_helpers import is_overridden


def test_is_overridden_for_modules_datamodules_and_callbacks(kit: Any) -> None:
    class CB(pl.Callback):
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None: ...

        @functools.wraps(pl.Callback.on_fit_end)
        def on_fit_end(self, *args: Any) -> None: ...

    class DM(pl.LightningDataModule):
        def train_dataloader(self) -> Any: ...

    model = kit.Model()
    assert is_overridden("training_step", model) and is_overridden("configure_optimizers", model)
    assert not is_overridden("on_fit_start", model)
    assert is_overridden("on_fit_start", CB()) and not is_overridden("on_train_start", CB())
    assert not is_overridden("on_fit_end", CB())  # wraps() points back at the base hook
    assert is_overridden("train_dataloader", DM()) and not is_overridden("val_dataloader", DM())
    model.on_train_start = Mock()
    assert is_overridden("on_train_start", model)
    assert is_overridden("step", object(), parent=object) is False  # no such method on the instance
    assert not is_overridden("training_step", None)
    with pytest.raises(ValueError, match="expected a LightningModule, LightningDataModule or Callback"):
        is_overridden("forward", object())


def test_load_hparams_from_yaml_reads_what_the_csv_logger_wrote(kit: Any, tmp_path: Path) -> None:
    class M(kit.Model):
        def __init__(self, lr: float = 0.05, layers: int = 3, name: str = "tiny") -> None:
            super().__init__(lr=lr)
            self.save_hyperparameters()

    logger = pl.CSVLogger(tmp_path, name="hp")
    kit.trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                limit_val_batches=0).fit(M(lr=0.2, layers=5), kit.loader(4))
    hparams = load_hparams_from_yaml(Path(logger.log_dir) / "hparams.yaml", use_omegaconf=False)
    assert {k: hparams[k] for k in ("lr", "layers", "name")} == {"lr": 0.2, "layers": 5, "name": "tiny"}
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_yaml(tmp_path / "nope.yaml") == {}
    out = tmp_path / "sub" / "hp.yaml"
    save_hparams_to_yaml(out, {"a": 1, "b": [1, 2]})
    assert load_hparams_from_yaml(out, use_omegaconf=False) == {"a": 1, "b": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in out.parent.iterdir()] == ["hp.yaml"]  # no temporary file left behind


def test_dummy_logger_accepts_anything_and_records_nothing(kit: Any, tmp_path: Path) -> None:
    logger = DummyLogger()
    logger.log_metrics({"a": 1.0}, step=3)
    logger.log_hyperparams({"lr": 0.1})
    logger.anything_at_all(1, key=2)
    logger.experiment.add_scalar("x", 1.0)
    assert logger[0] is logger and list(logger) == [] and logger.name == "" and logger.version == ""
    trainer = kit.trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                          limit_val_batches=0)
    trainer.fit(kit.Model(), kit.loader(4))
    assert trainer.logger is logger
    assert not (tmp_path / "lightning_logs").exists()  # no logger directory made
