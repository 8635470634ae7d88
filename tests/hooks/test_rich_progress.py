"""RichProgressBar: draws epochs, validation and metrics through rich; a clear error without rich."""

from __future__ import annotations

import importlib.util
import io
from typing import Any

import pytest
import torch

pytest.importorskip("rich")

from engine.callbacks import RichProgressBar  # noqa: E402


def _bar(buf: io.StringIO, **kwargs: Any) -> RichProgressBar:
    return RichProgressBar(leave=True, console_kwargs={"file": buf, "force_terminal": True, "width": 160,
                                                       "color_system": None}, **kwargs)


def test_fit_draws_epochs_validation_and_metrics(kit: Any) -> None:
    class M(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self._loss(batch)
            self.log("train_loss", loss, prog_bar=True)
            return loss

    buf = io.StringIO()
    bar = _bar(buf)
    trainer = kit.trainer(max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[bar])
    assert trainer.progress_bar_callback is bar  # replaces the default TQDMProgressBar
    trainer.fit(M(), kit.loader(8, batch_size=2), kit.loader(4, batch_size=2))
    out = buf.getvalue()
    assert "Epoch 0" in out and "Epoch 1" in out
    assert "4/4" in out and "Validation" in out and "Sanity Checking" in out
    assert "train_loss:" in out
    assert bar.progress is None  # stopped at the end of the run


def test_test_and_predict_bars_and_disable(kit: Any) -> None:
    buf = io.StringIO()
    bar = _bar(buf)
    trainer = kit.trainer(logger=False, callbacks=[bar])
    trainer.test(kit.Model(), kit.loader(6, batch_size=2))
    trainer.predict(kit.Model(), kit.loader(6, batch_size=2))
    out = buf.getvalue()
    assert "Testing" in out and "Predicting" in out and "3/3" in out
    quiet = io.StringIO()
    bar = _bar(quiet, refresh_rate=0)
    assert bar.is_disabled
    kit.trainer(logger=False, callbacks=[bar]).test(kit.Model(), kit.loader(4))
    assert quiet.getvalue() == ""


def test_without_rich_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"requires `rich`.*pip install -U rich"):
        RichProgressBar()


def test_refresh_rate_is_validated() -> None:
    with pytest.raises(ValueError, match=r"RichProgressBar\(refresh_rate=-1\)"):
        RichProgressBar(refresh_rate=-1)
