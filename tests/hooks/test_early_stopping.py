"""EarlyStopping in real tiny fits: patience, min_delta, modes, thresholds, non-finite values, strictness, where the
check runs, min_epochs, state round-trip and the recorded stop request."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

from engine.errors import MisconfigurationException
from engine.log import capture_logs
from hooks.early_stopping import EarlyStopping, EarlyStoppingReason

QUIET = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


class Spy(EarlyStopping):
    """Records (hook, epoch) for every check that actually ran."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[tuple[str, int]] = []
        self._hook = ""

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._hook = "on_train_epoch_end"
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._hook = "on_validation_end"
        super().on_validation_end(trainer, pl_module)

    def _run_early_stopping_check(self, trainer: Any) -> None:
        self.checks.append((self._hook, trainer.current_epoch))
        super()._run_early_stopping_check(trainer)


def scripted(kit: Any, values: list[float], key: str = "score") -> Any:
    """A model logging values[i] as `key` at the end of the i-th (non-sanity) validation run."""

    class Scripted(kit.Model):
        def __init__(self) -> None:
            super().__init__()
            self.values = list(values)
            self.runs = 0

        def on_validation_epoch_end(self) -> None:
            if self.trainer.sanity_checking:
                return
            self.log(key, float(self.values[self.runs]))
            self.runs += 1

    return Scripted()


def fit(kit: Any, es: EarlyStopping, values: list[float], max_epochs: int = 10, **flags: Any) -> Any:
    model = scripted(kit, values + [values[-1]] * 20)
    trainer = kit.trainer(max_epochs=max_epochs, callbacks=[es], **{**QUIET, **flags})
    trainer.fit(model, kit.loader(8, batch_size=2), kit.loader(4, batch_size=2))
    return trainer, model


def es_requests(trainer: Any) -> list[Any]:
    return [r for r in trainer.control.history if r.by == "EarlyStopping"]


# -- construction --------------------------------------------------------------------------------------------------
def test_defaults_and_bad_mode() -> None:
    es = EarlyStopping("val_loss")
    assert (es.patience, es.min_delta, es.mode, es.strict, es.check_finite, es.verbose) == (3, 0.0, "min", True, True,
                                                                                         False)
    assert es.wait_count == 0 and es.stopped_epoch == 0
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and es.stopping_reason_message is None
    assert torch.is_tensor(es.best_score) and es.best_score.item() == math.inf
    assert EarlyStopping("acc", mode="max").best_score.item() == -math.inf
    assert EarlyStopping.is_monitor is True
    with pytest.raises(MisconfigurationException, match=r"`mode` can be min, max, got 'auto'"):
        EarlyStopping("val_loss", mode="auto")


def test_state_key_includes_monitor_and_mode() -> None:
    assert EarlyStopping("val_loss").state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    assert EarlyStopping("acc", mode="max").state_key != EarlyStopping("acc", mode="min").state_key


# -- patience, min_delta, modes --------------------------------------------------------------------------------------
def test_patience_counts_checks_and_stop_epoch_is_exact(kit) -> None:
    # best 1.0 at check 3; checks 4, 5, 6 do not improve -> patience 3 exhausted at epoch 6
    es = Spy("score", patience=3)
    trainer, model = fit(kit, es, [3.0, 2.0, 2.5, 1.0, 1.5, 1.6, 1.7])
    assert es.checks == [("on_train_epoch_end", e) for e in range(7)]
    assert es.stopped_epoch == 6 and model.runs == 7 and trainer.current_epoch == 7
    assert es.wait_count == 3 and es.best_score.item() == 1.0
    assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert "did not improve in the last 3 records" in es.stopping_reason_message
    assert "Best score: 1.000" in es.stopping_reason_message


def test_no_stop_while_improving(kit) -> None:
    es = EarlyStopping("score", patience=1)
    trainer, model = fit(kit, es, [5.0, 4.0, 3.0, 2.0], max_epochs=4)
    assert es.stopped_epoch == 0 and es.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    assert es_requests(trainer) == [] and model.runs == 4 and es.best_score.item() == 2.0


def test_min_delta(kit) -> None:
    # an improvement must exceed min_delta: 9.5 (by exactly 0.5) is not one, 9.25 (by 0.75) is, 9.0 is not
    es = EarlyStopping("score", patience=2, min_delta=0.5)
    assert es.min_delta == -0.5  # stored signed, as Lightning does
    fit(kit, es, [10.0, 9.5, 9.25, 9.0, 8.875])
    assert es.best_score.item() == 9.25 and es.stopped_epoch == 4 and es.wait_count == 2
    assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED


def test_mode_max(kit) -> None:
    es = EarlyStopping("score", mode="max", patience=2, min_delta=0.25)
    assert es.min_delta == 0.25
    fit(kit, es, [1.0, 2.0, 2.25, 1.0])  # 2.25 is not > 2.0 + 0.25
    assert es.best_score.item() == 2.0 and es.stopped_epoch == 3
    assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED


# -- thresholds and non-finite values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "values", "threshold"), [("min", [2.0, 1.0, 0.25], 0.5),
                                                           ("max", [0.1, 0.5, 0.95], 0.9)])
def test_stopping_threshold(kit, mode, values, threshold) -> None:
    es = EarlyStopping("score", mode=mode, patience=100, stopping_threshold=threshold)
    trainer, _ = fit(kit, es, values)
    assert es.stopped_epoch == 2 and es.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD
    assert es.stopping_reason_message.startswith("Stopping threshold reached: score = ")
    assert trainer.current_epoch == 3


def test_divergence_threshold(kit) -> None:
    es = EarlyStopping("score", patience=100, divergence_threshold=10.0)
    fit(kit, es, [1.0, 5.0, 11.0])
    assert es.stopped_epoch == 2 and es.stopping_reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD
    assert es.stopping_reason_message.startswith("Divergence threshold reached: score = ")
    assert es.best_score.item() == 1.0


def test_stopping_threshold_is_checked_before_divergence(kit) -> None:
    es = EarlyStopping("score", patience=100, stopping_threshold=20.0, divergence_threshold=10.0)
    fit(kit, es, [15.0])  # both hold: the stopping threshold wins
    assert es.stopped_epoch == 0 and es.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_stops_first(kit, bad) -> None:
    # -inf would also pass the stopping threshold; non-finite is checked first
    es = EarlyStopping("score", patience=100, stopping_threshold=0.0)
    fit(kit, es, [1.0, 2.0, bad])
    assert es.stopped_epoch == 2 and es.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC
    assert "is not finite" in es.stopping_reason_message and "Previous best value was 1.000" in \
        es.stopping_reason_message


def test_check_finite_false_treats_nan_as_no_improvement(kit) -> None:
    es = EarlyStopping("score", patience=2, check_finite=False)
    fit(kit, es, [1.0, math.nan, math.nan])
    assert es.stopped_epoch == 2 and es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert es.best_score.item() == 1.0


# -- strictness ------------------------------------------------------------------------------------------------------
def test_strict_missing_monitor_raises_with_available_keys(kit) -> None:
    es = EarlyStopping("val_acc")
    trainer = kit.trainer(max_epochs=2, callbacks=[es], **QUIET)
    msg = (r"Early stopping conditioned on metric `val_acc` which is not available\. Pass in or modify your "
           r"`EarlyStopping` callback to use any of the following: `val_loss`")
    with pytest.raises(RuntimeError, match=msg):
        trainer.fit(kit.Model(), kit.loader(4), kit.loader(4))


def test_not_strict_missing_monitor_skips_silently(kit) -> None:
    es = EarlyStopping("val_acc", strict=False, patience=1)
    trainer = kit.trainer(max_epochs=3, callbacks=[es], **QUIET)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=RuntimeWarning)
        trainer.fit(kit.Model(), kit.loader(4), kit.loader(4))
    assert trainer.current_epoch == 3 and es.wait_count == 0 and es_requests(trainer) == []


def test_not_strict_verbose_warns(kit) -> None:
    es = EarlyStopping("val_acc", strict=False, verbose=True)
    trainer = kit.trainer(max_epochs=1, callbacks=[es], **QUIET)
    with pytest.warns(RuntimeWarning, match="metric `val_acc` which is not available"):
        trainer.fit(kit.Model(), kit.loader(4), kit.loader(4))


# -- where the check runs ------------------------------------------------------------------------------------------
def test_default_checks_on_train_epoch_end_after_the_module(kit) -> None:
    order: list[str] = []

    class Tracing(Spy):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            order.append("es")
            super().on_train_epoch_end(trainer, pl_module)

    class Model(kit.Model):
        def on_train_epoch_end(self) -> None:
            order.append("module")

    es = Tracing("val_loss", patience=100)
    trainer = kit.trainer(max_epochs=2, callbacks=[es], **QUIET)
    trainer.fit(Model(), kit.loader(4), kit.loader(4))
    assert es._check_on_train_epoch_end is True
    assert es.checks == [("on_train_epoch_end", 0), ("on_train_epoch_end", 1)]
    assert order == ["module", "es", "module", "es"]


def test_mid_epoch_validation_checks_on_validation_end(kit) -> None:
    # val_check_interval=0.5: two validation runs per epoch, each one a check; patience 1 runs out at the 3rd run
    # (the middle of epoch 1), and the epoch ends there
    es = Spy("score", patience=1)
    rec = kit.Recorder()
    model = scripted(kit, [5.0, 4.0, 4.0, 4.0])
    trainer = kit.trainer(max_epochs=10, callbacks=[es, rec], val_check_interval=0.5, **QUIET)
    trainer.fit(model, kit.loader(8, batch_size=2), kit.loader(4))
    assert es._check_on_train_epoch_end is False
    assert es.checks == [("on_validation_end", 0), ("on_validation_end", 0), ("on_validation_end", 1)]
    assert es.stopped_epoch == 1 and model.runs == 3
    assert rec.epoch_ends() == [(0, 4), (1, 6)]


def test_explicit_check_on_train_epoch_end_with_mid_epoch_validation(kit) -> None:
    es = Spy("score", patience=1, check_on_train_epoch_end=True)
    model = scripted(kit, [5.0, 4.0, 4.0, 3.0, 3.0, 3.0])
    trainer = kit.trainer(max_epochs=10, callbacks=[es], val_check_interval=0.5, **QUIET)
    trainer.fit(model, kit.loader(8, batch_size=2), kit.loader(4))
    # once per epoch, on the last validation value: 4.0, 3.0, 3.0 -> stops at epoch 2
    assert es.checks == [("on_train_epoch_end", e) for e in range(3)]
    assert es.stopped_epoch == 2 and es.best_score.item() == 3.0


def test_check_val_every_n_epoch_checks_on_validation_end(kit) -> None:
    es = Spy("score", patience=1)
    model = scripted(kit, [5.0, 5.0])
    trainer = kit.trainer(max_epochs=10, callbacks=[es], check_val_every_n_epoch=2, **QUIET)
    trainer.fit(model, kit.loader(4), kit.loader(4))
    assert es._check_on_train_epoch_end is False
    assert es.checks == [("on_validation_end", 1), ("on_validation_end", 3)]
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4


def test_not_run_in_sanity_check_nor_outside_fit(kit) -> None:
    es = Spy("nope", check_on_train_epoch_end=False)  # strict: any check would raise
    trainer = kit.trainer(max_epochs=1, limit_train_batches=0, callbacks=[es], num_sanity_val_steps=2, **QUIET)
    model = kit.Model()
    trainer.validate(model, kit.loader(4), verbose=False)
    trainer.test(model, kit.loader(4), verbose=False)
    assert es.checks == []

    es = Spy("val_loss", check_on_train_epoch_end=False)
    rec = kit.Recorder()
    trainer = kit.trainer(max_epochs=1, callbacks=[es, rec], num_sanity_val_steps=2, **QUIET)
    trainer.fit(kit.Model(), kit.loader(4), kit.loader(4))
    assert rec.val_runs(sanity=True) and es.checks == [("on_validation_end", 0)]


def test_not_run_with_fast_dev_run(kit) -> None:
    es = Spy("nope")
    trainer = kit.trainer(fast_dev_run=True, callbacks=[es], **QUIET)
    trainer.fit(kit.Model(), kit.loader(4), kit.loader(4))  # strict, missing key: no error
    assert len(es.checks) == 1 and es_requests(trainer) == []


# -- the stop request ------------------------------------------------------------------------------------------------
def test_stop_request_is_recorded_with_reason(kit) -> None:
    es = EarlyStopping("score", patience=1)
    trainer, _ = fit(kit, es, [2.0, 3.0])
    (req,) = es_requests(trainer)
    assert req.action == "stop" and req.reason == es.stopping_reason_message
    assert req.timestamp.epoch == 1
    assert trainer.should_stop and trainer.control.stop_requested


def test_min_epochs_keeps_training_after_stop_request(kit) -> None:
    es = EarlyStopping("score", patience=1)
    with pytest.warns(UserWarning, match="min_epochs=4"):
        trainer, model = fit(kit, es, [5.0], min_epochs=4)
    assert trainer.current_epoch == 4 and model.runs == 4
    assert [r.timestamp.epoch for r in es_requests(trainer)] == [1, 2, 3]
    assert es.stopped_epoch == 3 and es.wait_count == 3


def test_reduce_boolean_decision_is_used_when_the_strategy_has_it(kit) -> None:
    es = EarlyStopping("score", patience=100)
    model = scripted(kit, [5.0, 4.0, 3.0])
    trainer = kit.trainer(max_epochs=3, callbacks=[es], **QUIET)
    calls = []

    def reduce(decision: bool, all: bool = True) -> bool:
        calls.append((decision, all))
        return True  # another rank wants to stop

    trainer.strategy.reduce_boolean_decision = reduce
    trainer.fit(model, kit.loader(4), kit.loader(4))
    assert calls == [(False, False)] and es.stopped_epoch == 0 and model.runs == 1


def test_logging(kit) -> None:
    with capture_logs() as quiet:
        fit(kit, EarlyStopping("score", patience=1), [2.0, 1.0, 1.5])
    events = [e["event"] for e in quiet]
    assert not any("improved" in e for e in events)
    assert any(e.startswith("Monitored metric score did not improve") for e in events)

    with capture_logs() as loud:
        fit(kit, EarlyStopping("score", patience=1, verbose=True), [2.0, 1.0, 1.5])
    events = [e["event"] for e in loud]
    assert "Metric score improved. New best score: 2.000" in events
    assert "Metric score improved by 1.000 >= min_delta = 0.0. New best score: 1.000" in events


# -- state ---------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_weights_only(kit, tmp_path) -> None:
    es = EarlyStopping("score", patience=2, mode="max")
    fit(kit, es, [1.0, 3.0, 2.0, 2.0])
    state = es.state_dict()
    assert state["stopping_reason"] == EarlyStoppingReason.PATIENCE_EXHAUSTED.value
    path = tmp_path / "es.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)

    fresh = EarlyStopping("score", mode="max")
    fresh.load_state_dict(loaded)
    assert (fresh.wait_count, fresh.stopped_epoch, fresh.patience) == (2, 3, 2)
    assert torch.equal(fresh.best_score, torch.tensor(3.0))
    assert fresh.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert fresh.stopping_reason_message == es.stopping_reason_message


def test_load_state_dict_without_reason_defaults_to_not_stopped() -> None:
    es = EarlyStopping("val_loss")
    es.load_state_dict({"wait_count": 1, "stopped_epoch": 0, "best_score": torch.tensor(0.5), "patience": 3})
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and es.stopping_reason_message is None
    assert es.wait_count == 1 and es.best_score.item() == 0.5
