"""NonFiniteLoss: a NaN loss stops the fit before backward ('error'), skips its step ('skip'), or warns ('warn')."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import engine as pl
from engine.errors import MisconfigurationException
from hooks.nonfinite import NonFiniteLoss, NonFiniteLossError

QUIET = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, max_epochs=1)


def poisoned(kit: Any, at: int) -> Any:
    class Poisoned(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if batch_idx == at else loss
    return Poisoned()


def finite(model: Any) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_error_stops_before_backward_naming_the_batch(kit: Any) -> None:
    model = poisoned(kit, 2)
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at epoch 0, batch 2 \(global step 2\): stopped"):
        kit.trainer(callbacks=[NonFiniteLoss()], **QUIET).fit(model, kit.loader(10, batch_size=2))
    assert finite(model)


def test_skip_skips_the_step_and_its_gradients(kit: Any) -> None:
    model = poisoned(kit, 2)
    handler = NonFiniteLoss("skip")
    trainer = kit.trainer(callbacks=[handler], **QUIET)
    trainer.fit(model, kit.loader(10, batch_size=2))
    assert finite(model) and handler.skipped == 1 and trainer.global_step == 4
    assert [r.action for r in trainer.control.history] == ["skip_step"]


def test_warn_goes_on(kit: Any) -> None:
    model = poisoned(kit, 2)
    with pytest.warns(RuntimeWarning, match="the loss is nan at epoch 0, batch 2"):
        kit.trainer(callbacks=[NonFiniteLoss("warn")], **QUIET).fit(model, kit.loader(10, batch_size=2))
    assert not finite(model)


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(MisconfigurationException, match="expected one of"):
        NonFiniteLoss("ignore")


def test_on_by_default_and_the_flag_sets_the_policy(kit: Any) -> None:
    model = poisoned(kit, 1)
    with pytest.raises(NonFiniteLossError, match=r"batch 1 \(global step 1\)"):
        kit.trainer(**QUIET).fit(model, kit.loader(10, batch_size=2))
    assert finite(model)
    trainer = kit.trainer(on_nonfinite_loss="skip", **QUIET)
    trainer.fit(model := poisoned(kit, 1), kit.loader(10, batch_size=2))
    assert finite(model) and trainer.global_step == 4
    assert [type(c).__name__ for c in trainer.callbacks].count("NonFiniteLoss") == 1


def test_none_removes_the_check_and_a_given_handler_replaces_the_default(kit: Any) -> None:
    model = poisoned(kit, 1)
    trainer = kit.trainer(on_nonfinite_loss=None, **QUIET)
    trainer.fit(model, kit.loader(10, batch_size=2))
    assert not finite(model) and not any(isinstance(c, NonFiniteLoss) for c in trainer.callbacks)
    mine = NonFiniteLoss("warn")
    trainer = kit.trainer(callbacks=[mine], **QUIET)
    assert [c for c in trainer.callbacks if isinstance(c, NonFiniteLoss)] == [mine]
    assert not any(isinstance(c, NonFiniteLoss) for c in kit.trainer(barebones=True, max_epochs=1).callbacks)


def test_a_bad_flag_value_names_the_accepted_ones(kit: Any) -> None:
    with pytest.raises(MisconfigurationException, match=r"on_nonfinite_loss.*'error', 'skip', 'warn' or None"):
        pl.Trainer(on_nonfinite_loss="ignore")
