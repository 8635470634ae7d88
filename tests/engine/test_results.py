"""Tests for engine/results.py: `self.log` storage, reduction, key naming and the trainer's three metric dicts.

Values and batches are fed by hand, the way the loops will: `set_batch` -> hooks call `log` -> `update_step` ->
`batch_end`, then `epoch_end_reached` -> epoch-end hooks log -> `update_epoch` -> `reset`.
"""

from __future__ import annotations

import dataclasses
import timeit
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import MisconfigurationException
from engine.results import (
    FX_DEFAULTS,
    FxOptions,
    LoggedMetrics,
    Metrics,
    ResultCollection,
    check_fx,
    extract_batch_size,
)

__all__: list[str] = []

# Every hook name in Lightning 2.6's `_FxValidator.functions` (names only), split by whether it may log.
LIGHTNING_LOGGING_HOOKS = {
    "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step", "optimizer_step",
    "configure_gradient_clipping", "clip_gradients", "on_before_zero_grad", "optimizer_zero_grad", "on_train_start",
    "on_validation_start", "on_test_start", "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_test_epoch_start", "on_test_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_batch_start", "on_validation_batch_end", "on_test_batch_start",
    "on_test_batch_end", "training_step", "validation_step", "test_step",
}  # fmt: skip
LIGHTNING_SILENT_HOOKS = {
    "lr_scheduler_step", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end", "on_train_end",
    "on_validation_end", "on_test_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start",
    "on_predict_epoch_end", "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "on_predict_batch_start", "on_predict_batch_end", "on_exception", "state_dict", "on_save_checkpoint",
    "on_load_checkpoint", "load_state_dict", "setup", "teardown", "configure_sharded_model", "configure_model",
    "predict_step", "configure_optimizers", "train_dataloader", "val_dataloader", "test_dataloader", "prepare_data",
    "configure_callbacks", "on_validation_model_zero_grad", "on_validation_model_eval", "on_test_model_eval",
    "on_validation_model_train", "on_test_model_train",
}  # fmt: skip


def batch_of(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A real (x, y) batch with `n` rows."""
    return torch.randn(n, 3), torch.randint(0, 2, (n,))


def floats(d: dict[str, torch.Tensor]) -> dict[str, float]:
    """Tensor dict -> float dict for comparisons (test-side conversion)."""
    return {k: float(v) for k, v in d.items()}


# ------------------------------------------------------------------------------------------------------------------
# hook table and check_fx
# ------------------------------------------------------------------------------------------------------------------


def test_fx_table_covers_every_lightning_hook():
    assert LIGHTNING_LOGGING_HOOKS | LIGHTNING_SILENT_HOOKS <= set(FX_DEFAULTS)
    for hook in LIGHTNING_LOGGING_HOOKS:
        assert isinstance(FX_DEFAULTS[hook], FxOptions), hook
    for hook in LIGHTNING_SILENT_HOOKS:
        assert FX_DEFAULTS[hook] is None, hook


@pytest.mark.parametrize(
    ("fx", "expected"),
    [
        ("training_step", (True, False)),
        ("on_train_batch_start", (True, False)),
        ("on_train_batch_end", (True, False)),
        ("on_before_backward", (True, False)),
        ("on_after_backward", (True, False)),
        ("on_before_optimizer_step", (True, False)),
        ("optimizer_zero_grad", (True, False)),
        ("validation_step", (False, True)),
        ("test_step", (False, True)),
        ("on_validation_batch_end", (False, True)),
        ("on_test_batch_start", (False, True)),
        ("on_train_start", (False, True)),
        ("on_train_epoch_start", (False, True)),
        ("on_train_epoch_end", (False, True)),
        ("on_validation_epoch_end", (False, True)),
        ("on_test_epoch_end", (False, True)),
    ],
)
def test_check_fx_defaults(fx, expected):
    assert check_fx(fx, None, None) == expected


def test_check_fx_explicit_values_win_where_allowed():
    assert check_fx("training_step", False, True) == (False, True)
    assert check_fx("training_step", True, True) == (True, True)
    assert check_fx("validation_step", True, None) == (True, True)
    assert check_fx("on_train_epoch_end", False, True) == (False, True)


@pytest.mark.parametrize("fx", ["on_fit_start", "on_train_end", "predict_step", "setup", "on_sanity_check_end"])
def test_check_fx_hook_that_cannot_log(fx):
    match = rf"self.log\('x', ...\) called from '{fx}': this hook cannot log"
    with pytest.raises(MisconfigurationException, match=match):
        check_fx(fx, None, None, name="x")


def test_check_fx_value_not_allowed_in_epoch_hook():
    with pytest.raises(MisconfigurationException, match=r"'on_train_epoch_end' with on_step=True.*\(False,\)"):
        check_fx("on_train_epoch_end", True, None, name="x")
    with pytest.raises(MisconfigurationException, match=r"'on_validation_start' with on_epoch=False.*\(True,\)"):
        check_fx("on_validation_start", None, False, name="x")


def test_check_fx_on_step_and_on_epoch_both_false():
    with pytest.raises(MisconfigurationException, match=r"on_step=False, on_epoch=False would record nothing"):
        check_fx("training_step", False, False, name="loss")


def test_check_fx_unknown_hook():
    with pytest.raises(MisconfigurationException, match=r"'my_helper', which is not a hook statetrain knows"):
        check_fx("my_helper", None, None, name="x")


def test_errors_are_value_errors_like_lightning():
    with pytest.raises(ValueError):
        check_fx("on_fit_start", None, None)


# ------------------------------------------------------------------------------------------------------------------
# extract_batch_size
# ------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    tokens: torch.Tensor
    label: str


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (torch.zeros(5, 2), 5),
        (torch.tensor(3.0), 1),
        ((torch.zeros(4, 2), torch.zeros(4)), 4),
        ({"x": torch.zeros(6, 2), "y": torch.zeros(6)}, 6),
        ([{"ids": [torch.zeros(7, 3)]}], 7),
        (Sample(torch.zeros(9, 2), "meta"), 9),
        (("names", {"x": torch.zeros(2, 2)}), 2),
        ((torch.zeros(3, 2), "meta", 5, np.zeros(10)), 3),  # non-tensor leaves are skipped
    ],
)
def test_extract_batch_size(batch, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extract_batch_size(batch) == expected


def test_extract_batch_size_inconsistent_warns_and_keeps_first():
    with pytest.warns(UserWarning, match=r"ambiguous batch: the first tensor found has 4 rows, another has 2"):
        assert extract_batch_size([torch.zeros(4), torch.zeros(2)]) == 4


def test_extract_batch_size_without_tensor_raises():
    with pytest.raises(MisconfigurationException, match=r"no tensor found in a batch of type dict.*batch_size=N"):
        extract_batch_size({"text": "abc", "n": 3})


# ------------------------------------------------------------------------------------------------------------------
# log(): value validation and argument errors
# ------------------------------------------------------------------------------------------------------------------


def test_dict_value_points_to_log_dict():
    r = ResultCollection(training=True)
    with pytest.raises(MisconfigurationException, match=r"self.log\('m', value\) got a dict.*self.log_dict\(value\)"):
        r.log("training_step", "m", {"a": torch.tensor(1.0)})


def test_non_scalar_tensor_names_its_shape():
    r = ResultCollection(training=True)
    with pytest.raises(MisconfigurationException, match=r"'w'.*tensor of shape \(2, 3\) \(6 elements\).*\.mean\(\)"):
        r.log("training_step", "w", torch.zeros(2, 3))
    with pytest.raises(MisconfigurationException, match=r"shape \(0,\)"):
        r.log("training_step", "w", torch.zeros(0))


@pytest.mark.parametrize(("value", "type_name"), [("text", "str"), (None, "NoneType"), ([1.0, 2.0], "list")])
def test_unsupported_value_type(value, type_name):
    r = ResultCollection(training=True)
    with pytest.raises(MisconfigurationException, match=rf"'v', value\) got a value of type {type_name}; expected"):
        r.log("training_step", "v", value)


def test_single_element_tensor_is_squeezed():
    r = ResultCollection(training=True)
    r.log("training_step", "a", torch.tensor([[2.5]]))
    value = r.step_metrics().log["a"]
    assert value.shape == () and float(value) == 2.5


@pytest.mark.parametrize("reduce_fx", ["median", torch.median, torch.amax, lambda x: x])
def test_bad_reduce_fx(reduce_fx):
    r = ResultCollection(training=True)
    with pytest.raises(MisconfigurationException, match=r"reduce_fx=.* is not supported: use one of 'mean', 'sum'"):
        r.log("training_step", "x", 1.0, reduce_fx=reduce_fx)


def test_name_with_dataloader_suffix_rejected():
    r = ResultCollection(training=False)
    match = r"must not contain '/dataloader_idx_'.*add_dataloader_idx=False"
    with pytest.raises(MisconfigurationException, match=match):
        r.log("validation_step", "acc/dataloader_idx_0", 1.0)
    r.log("validation_step", "acc/dataloader_idx_0", 1.0, add_dataloader_idx=False)  # allowed when not appended


def test_hook_that_cannot_log_is_rejected_by_log():
    r = ResultCollection(training=True)
    with pytest.raises(MisconfigurationException, match=r"called from 'on_fit_start': this hook cannot log"):
        r.log("on_fit_start", "x", 1.0)


def test_same_key_with_different_arguments_in_one_hook():
    r = ResultCollection(training=True)
    r.log("training_step", "loss", 1.0, prog_bar=True)
    r.log("training_step", "loss", 2.0, prog_bar=True)  # same arguments: fine
    with pytest.raises(
        MisconfigurationException,
        match=r"self.log\('loss', ...\) was called twice in 'training_step' with different arguments "
        r"\(prog_bar=True before, False now\)",
    ):
        r.log("training_step", "loss", 3.0)
    with pytest.raises(MisconfigurationException, match=r"on_epoch=False before, True now"):
        r.log("training_step", "loss", 3.0, prog_bar=True, on_epoch=True)
    # the same name from another hook is another key
    r.log("on_train_batch_end", "loss", 3.0)
    # a batch size change is not an argument change
    r.log("training_step", "loss", 4.0, prog_bar=True, batch_size=7)


def test_equivalent_spellings_are_the_same_arguments():
    r = ResultCollection(training=True)
    r.log("training_step", "x", 1.0, on_epoch=True, reduce_fx="mean", logger=None)
    r.log("training_step", "x", 2.0, on_epoch=True, reduce_fx=torch.mean, logger=True)
    r.log("training_step", "x", 3.0, on_epoch=True, reduce_fx="AVG", on_step=True)
    assert float(r.epoch_metrics().log["x_epoch"]) == pytest.approx(2.0)


def test_mismatch_is_detected_after_reset():
    r = ResultCollection(training=True)
    r.log("training_step", "x", 1.0, prog_bar=True)
    r.reset()
    with pytest.raises(MisconfigurationException, match=r"twice in 'training_step'"):
        r.log("training_step", "x", 1.0)


def test_same_name_on_two_dataloaders_without_index_needs_distinct_names():
    r = ResultCollection(training=False)
    r.set_batch(batch_of(2), dataloader_idx=0, num_dataloaders=2)
    r.log("validation_step", "acc", 1.0, add_dataloader_idx=False)
    r.batch_end()
    r.set_batch(batch_of(2), dataloader_idx=1, num_dataloaders=2)
    with pytest.raises(MisconfigurationException, match=r"dataloader_idx=0 before, 1 now.*needs its own name"):
        r.log("validation_step", "acc", 1.0, add_dataloader_idx=False)


def test_unhashable_argument_is_validated_every_call():
    r = ResultCollection(training=True)
    group = ["rank0", "rank1"]  # stands for a process group object that cannot be hashed
    r.log("training_step", "x", 1.0, sync_dist_group=group)
    r.log("training_step", "x", 2.0, sync_dist_group=group)
    assert float(r.step_metrics().log["x"]) == 2.0
    with pytest.raises(MisconfigurationException, match=r"twice in 'training_step'.*sync_dist_group"):
        r.log("training_step", "x", 3.0, sync_dist_group=["other"])


# ------------------------------------------------------------------------------------------------------------------
# log(): value conversion
# ------------------------------------------------------------------------------------------------------------------


def test_python_numbers_become_float_tensors():
    r = ResultCollection(training=True)
    r.log("training_step", "f", 0.25)
    r.log("training_step", "i", 3)
    r.log("training_step", "b", True)
    r.log("training_step", "np", np.float32(1.5))
    log = r.step_metrics().log
    assert {k: (v.dtype, float(v)) for k, v in log.items()} == {
        "f": (torch.float32, 0.25),
        "i": (torch.float32, 3.0),
        "b": (torch.float32, 1.0),
        "np": (torch.float32, 1.5),
    }


def test_non_float_tensor_warns_once_and_is_cast():
    r = ResultCollection(training=True)
    with pytest.warns(UserWarning, match=r"self.log\('count', ...\) in 'training_step' got a torch.int64 tensor"):
        r.log("training_step", "count", torch.tensor(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.log("training_step", "count", torch.tensor(4))  # second time: silent
    value = r.step_metrics().log["count"]
    assert value.dtype == torch.float32 and float(value) == 4.0


def test_half_is_upcast_silently_and_double_is_kept():
    r = ResultCollection(training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.log("training_step", "h", torch.tensor(0.5, dtype=torch.float16))
        r.log("training_step", "d", torch.tensor(0.5, dtype=torch.float64))
    log = r.step_metrics().log
    assert log["h"].dtype == torch.float32 and log["d"].dtype == torch.float64


def test_values_are_detached_unless_enable_graph():
    model = nn.Linear(3, 1)
    loss = model(torch.randn(4, 3)).pow(2).mean()
    r = ResultCollection(training=True)
    r.log("training_step", "loss", loss, on_epoch=True)
    r.log("training_step", "graph", loss, on_epoch=True, enable_graph=True)
    step = r.step_metrics().log
    assert not step["loss_step"].requires_grad
    assert step["graph_step"].requires_grad and step["graph_step"].grad_fn is not None
    epoch = r.epoch_metrics().log
    assert not epoch["loss_epoch"].requires_grad and not epoch["graph_epoch"].requires_grad


def test_logged_parameter_or_view_is_copied_not_aliased():
    temperature = nn.Parameter(torch.tensor(1.0))
    weight = nn.Parameter(torch.ones(2, 2))
    counter = torch.tensor(5.0)
    r = ResultCollection(training=True)
    r.log("training_step", "temp", temperature, on_epoch=True)
    r.log("training_step", "w00", weight[0, 0], on_epoch=True)
    r.log("training_step", "counter", counter, on_epoch=True)
    with torch.no_grad():  # an optimizer step and an in-place counter update after logging
        temperature.add_(10.0)
        weight.mul_(3.0)
    counter += 1
    assert floats(r.step_metrics().log) == {"temp_step": 1.0, "w00_step": 1.0, "counter_step": 5.0}
    assert floats(r.epoch_metrics().log) == {"temp_epoch": 1.0, "w00_epoch": 1.0, "counter_epoch": 5.0}


# ------------------------------------------------------------------------------------------------------------------
# reductions and batch sizes
# ------------------------------------------------------------------------------------------------------------------


def test_epoch_mean_is_weighted_by_inferred_batch_size():
    r = ResultCollection(training=True)
    for value, size in [(1.0, 4), (2.0, 4), (4.0, 2)]:  # the last batch is smaller
        r.set_batch(batch_of(size))
        r.log("training_step", "loss", torch.tensor(value), on_step=False, on_epoch=True)
        r.batch_end()
    expected = (1.0 * 4 + 2.0 * 4 + 4.0 * 2) / 10
    assert float(r.epoch_metrics().log["loss"]) == pytest.approx(expected)


def test_explicit_batch_size_wins_over_inferred():
    r = ResultCollection(training=True)
    r.set_batch(batch_of(8))
    r.log("training_step", "a", 1.0, on_epoch=True, batch_size=1)
    r.batch_end()
    r.set_batch(batch_of(8))
    r.log("training_step", "a", 4.0, on_epoch=True, batch_size=3)
    r.batch_end()
    assert float(r.epoch_metrics().log["a_epoch"]) == pytest.approx((1.0 + 4.0 * 3) / 4)


def test_python_numbers_are_weighted_too():
    r = ResultCollection(training=False)
    for value, size in [(1.0, 3), (5.0, 1)]:
        r.set_batch(batch_of(size))
        r.log("validation_step", "acc", value)
        r.batch_end()
    assert float(r.epoch_metrics().log["acc"]) == pytest.approx((3.0 + 5.0) / 4)


def test_outside_a_batch_the_weight_is_one():
    r = ResultCollection(training=True)
    r.set_batch(batch_of(9))
    r.log("training_step", "x", 3.0, on_epoch=True, on_step=False)
    r.batch_end()
    r.log("on_train_epoch_end", "e", 1.0, batch_size=3)
    r.log("on_train_epoch_end", "e", 5.0)  # no batch: weight 1, nothing to infer from
    assert floats(r.epoch_metrics().log) == {"x": 3.0, "e": 2.0}


@pytest.mark.parametrize(
    ("reduce_fx", "expected"),
    [("sum", 9.0), (torch.sum, 9.0), ("max", 5.0), (torch.max, 5.0), ("min", -1.0), (min, -1.0), ("mean", 3.0)],
)
def test_reductions(reduce_fx, expected):
    r = ResultCollection(training=True)
    for value in (5.0, -1.0, 5.0):
        r.set_batch(batch_of(2))
        r.log("training_step", "x", torch.tensor(value), on_epoch=True, on_step=False, reduce_fx=reduce_fx)
        r.batch_end()
    assert float(r.epoch_metrics().log["x"]) == pytest.approx(expected)


def test_batch_size_only_inferred_for_mean_on_epoch(monkeypatch):
    import engine.results as results

    calls = []
    original = results.extract_batch_size
    monkeypatch.setattr(results, "extract_batch_size", lambda batch: calls.append(1) or original(batch))
    r = ResultCollection(training=True)
    r.set_batch({"text": ["no", "tensors"]})
    r.log("training_step", "step_only", 1.0)  # on_step only: no inference
    r.log("training_step", "total", 1.0, on_epoch=True, reduce_fx="sum")  # sum: no inference
    r.log("training_step", "peak", 1.0, on_epoch=True, reduce_fx="max")
    r.log("training_step", "given", 1.0, on_epoch=True, batch_size=2)
    assert calls == []
    with pytest.raises(MisconfigurationException, match=r"Could not infer the batch size.*batch_size=N"):
        r.log("training_step", "avg", 1.0, on_epoch=True)
    assert calls == [1]


def test_batch_size_inferred_once_per_batch(monkeypatch):
    import engine.results as results

    calls = []
    original = results.extract_batch_size
    monkeypatch.setattr(results, "extract_batch_size", lambda batch: calls.append(1) or original(batch))
    r = ResultCollection(training=True)
    for _ in range(3):
        r.set_batch(batch_of(4))
        r.log("training_step", "a", 1.0, on_epoch=True)
        r.log("training_step", "b", 2.0, on_epoch=True)
        r.log_dict("training_step", {"c": 3.0, "d": 4.0}, on_epoch=True)
        r.batch_end()
    assert len(calls) == 3


def test_many_steps_are_compacted_exactly():
    r = ResultCollection(training=True)
    values = torch.linspace(-3.0, 7.0, 2500, dtype=torch.float64)
    sizes = [(i % 5) + 1 for i in range(2500)]
    for value, size in zip(values, sizes):
        r.log("training_step", "m", value, on_step=False, on_epoch=True, batch_size=size)
        r.log("training_step", "mx", value, on_step=False, on_epoch=True, reduce_fx="max")
        r.log("training_step", "mn", value, on_step=False, on_epoch=True, reduce_fx="min")
        r.log("training_step", "s", value, on_step=False, on_epoch=True, reduce_fx="sum")
    weights = torch.tensor(sizes, dtype=torch.float64)
    log = r.epoch_metrics().log
    assert float(log["m"]) == pytest.approx(float((values * weights).sum() / weights.sum()), rel=1e-12)
    assert float(log["mx"]) == 7.0 and float(log["mn"]) == -3.0
    assert float(log["s"]) == pytest.approx(float(values.sum()), rel=1e-12)


def test_epoch_value_updates_when_more_values_arrive():
    r = ResultCollection(training=True)
    r.log("training_step", "x", 1.0, on_epoch=True, on_step=False)
    assert float(r.epoch_metrics().log["x"]) == 1.0
    r.log("training_step", "x", 3.0, on_epoch=True, on_step=False)
    assert float(r.epoch_metrics().log["x"]) == 2.0


# ------------------------------------------------------------------------------------------------------------------
# key naming and the three dicts
# ------------------------------------------------------------------------------------------------------------------


def test_training_forked_names_and_callback_dict():
    r = ResultCollection(training=True)
    r.set_batch(batch_of(2))
    r.log("training_step", "loss", 4.0, on_epoch=True, prog_bar=True)
    r.log("training_step", "plain", 1.0)
    step = r.step_metrics()
    assert isinstance(step, Metrics)
    assert floats(step.log) == {"loss_step": 4.0, "plain": 1.0}
    assert floats(step.callback) == {"loss": 4.0, "loss_step": 4.0, "plain": 1.0}
    assert floats(step.pbar) == {"loss_step": 4.0}
    r.batch_end()
    r.set_batch(batch_of(2))
    r.log("training_step", "loss", 2.0, on_epoch=True, prog_bar=True)
    r.log("training_step", "plain", 3.0)
    r.batch_end()
    epoch = r.epoch_metrics()
    assert floats(epoch.log) == {"loss_epoch": 3.0}
    assert floats(epoch.callback) == {"loss": 3.0, "loss_epoch": 3.0}
    assert floats(epoch.pbar) == {"loss_epoch": 3.0}


def test_logger_false_and_prog_bar_false_exclusions():
    r = ResultCollection(training=True)
    r.log("training_step", "hidden", 1.0, logger=False, prog_bar=True)
    r.log("training_step", "shown", 2.0)
    step = r.step_metrics()
    assert set(step.log) == {"shown"}
    assert set(step.pbar) == {"hidden"}
    assert set(step.callback) == {"hidden", "shown"}


def test_eval_step_values_stay_out_of_callback_metrics():
    r = ResultCollection(training=False)
    r.set_batch(batch_of(2))
    r.log("validation_step", "val_loss", 1.0, on_step=True, prog_bar=True)
    r.log("validation_step", "val_acc", 0.5)
    step = r.step_metrics()
    assert step.callback == {}
    assert floats(step.log) == {"val_loss_step": 1.0}
    assert floats(step.pbar) == {"val_loss_step": 1.0}
    r.batch_end()
    r.epoch_end_reached()
    epoch = r.epoch_metrics()
    assert floats(epoch.callback) == {"val_loss": 1.0, "val_loss_epoch": 1.0, "val_acc": 0.5}
    assert floats(epoch.log) == {"val_loss_epoch": 1.0, "val_acc": 0.5}


def test_step_values_persist_until_reset_like_lightning():
    # Lightning re-sends the latest step value of a key logged earlier in the epoch at later logger writes
    r = ResultCollection(training=True)
    r.set_batch(batch_of(2))
    r.log("training_step", "once", 7.0)
    r.log("training_step", "loss", 1.0)
    r.batch_end()
    r.set_batch(batch_of(2))
    r.log("training_step", "loss", 2.0)
    assert floats(r.step_metrics().log) == {"once": 7.0, "loss": 2.0}
    r.reset()
    assert r.step_metrics().log == {} and r.epoch_metrics().log == {}


def test_on_step_only_values_are_not_in_epoch_metrics_and_vice_versa():
    r = ResultCollection(training=True)
    r.log("training_step", "s", 1.0)
    r.log("training_step", "e", 2.0, on_step=False, on_epoch=True)
    assert set(r.step_metrics().log) == {"s"}
    assert set(r.epoch_metrics().log) == {"e"}


def test_multiple_dataloaders_suffix_and_outputs():
    r = ResultCollection(training=False)
    r.log("on_validation_epoch_start", "start", 9.0)
    for dl, values in enumerate([(1.0, 3.0), (10.0, 20.0)]):
        for value in values:
            r.set_batch(batch_of(2), dataloader_idx=dl, num_dataloaders=2)
            r.log("validation_step", "loss", value, on_step=True, prog_bar=True)
            r.log("validation_step", f"own_{dl}", value, add_dataloader_idx=False)
            step = r.step_metrics()  # only the current dataloader's values
            assert set(step.log) == {f"loss_step/dataloader_idx_{dl}"}  # own_{dl} is epoch-only
            assert set(step.pbar) == {f"loss_step/dataloader_idx_{dl}"}
            r.batch_end()
    r.epoch_end_reached()
    r.log("on_validation_epoch_end", "end", 5.0)
    epoch = r.epoch_metrics()
    assert floats(epoch.log) == {
        "start": 9.0,
        "loss_epoch/dataloader_idx_0": 2.0,
        "own_0": 2.0,
        "loss_epoch/dataloader_idx_1": 15.0,
        "own_1": 15.0,
        "end": 5.0,
    }
    assert floats(epoch.callback)["loss/dataloader_idx_1"] == 15.0
    outputs = r.dataloader_outputs(2)
    assert [floats(o) for o in outputs] == [
        {"loss_epoch/dataloader_idx_0": 2.0, "own_0": 2.0, "start": 9.0, "end": 5.0},
        {"loss_epoch/dataloader_idx_1": 15.0, "own_1": 15.0, "start": 9.0, "end": 5.0},
    ]


def test_single_dataloader_has_no_suffix():
    r = ResultCollection(training=False)
    r.set_batch(batch_of(2), dataloader_idx=0, num_dataloaders=1)
    r.log("validation_step", "acc", 1.0)
    r.batch_end()
    assert floats(r.epoch_metrics().log) == {"acc": 1.0}
    assert [floats(o) for o in r.dataloader_outputs(1)] == [{"acc": 1.0}]


def test_log_dict_logs_each_entry_and_rejects_non_mappings():
    r = ResultCollection(training=True)
    r.log_dict("training_step", {"a": 1.0, "b": torch.tensor(2.0)}, prog_bar=True, on_epoch=True)
    assert floats(r.step_metrics().pbar) == {"a_step": 1.0, "b_step": 2.0}
    with pytest.raises(MisconfigurationException, match=r"self.log_dict\(...\) in 'training_step' got a list"):
        r.log_dict("training_step", [("a", 1.0)])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------------
# LoggedMetrics
# ------------------------------------------------------------------------------------------------------------------


def run_train_epoch(
    r: ResultCollection, metrics: LoggedMetrics, losses: list[float], write_every: int = 1
) -> list[dict | None]:
    """Drive one training epoch the way the fit loop will; return what each step would send to the loggers."""
    writes = []
    metrics.attach(r)
    for i, loss in enumerate(losses):
        r.set_batch(batch_of(2))
        r.log("training_step", "loss", torch.tensor(loss), on_epoch=True, prog_bar=True)
        r.log("on_train_batch_end", "lr", 0.5, logger=True)
        writes.append(metrics.update_step(r, write_logs=(i + 1) % write_every == 0))
        r.batch_end()
    r.epoch_end_reached()
    return writes


def test_callback_metrics_step_then_epoch_value_replaces():
    r, m = ResultCollection(training=True), LoggedMetrics()
    run_train_epoch(r, m, [1.0, 3.0])
    assert floats(m.callback_metrics) == {"loss": 2.0, "loss_step": 3.0, "lr": 0.5, "loss_epoch": 2.0}  # live read
    out = m.update_epoch(r, write_logs=True)
    assert floats(out) == {"loss_epoch": 2.0}
    r.reset()
    m.attach(None)
    # stale values persist across epochs until overwritten
    assert floats(m.callback_metrics) == {"loss": 2.0, "loss_step": 3.0, "lr": 0.5, "loss_epoch": 2.0}
    assert floats(m.logged_metrics) == {"loss_step": 3.0, "lr": 0.5, "loss_epoch": 2.0}
    assert m.progress_bar_metrics == {"loss_step": 3.0, "loss_epoch": 2.0}


def test_update_step_returns_logger_dict_only_when_writing():
    r, m = ResultCollection(training=True), LoggedMetrics()
    writes = run_train_epoch(r, m, [1.0, 2.0, 3.0, 4.0], write_every=2)
    assert writes[0] is None and writes[2] is None
    assert floats(writes[1]) == {"loss_step": 2.0, "lr": 0.5}
    assert floats(writes[3]) == {"loss_step": 4.0, "lr": 0.5}
    # like Lightning, logged_metrics follows every batch even when nothing was written to the loggers
    assert floats(m.logged_metrics)["loss_step"] == 4.0


def test_nothing_to_write_returns_none():
    r, m = ResultCollection(training=True), LoggedMetrics()
    r.log("training_step", "quiet", 1.0, logger=False)
    assert m.update_step(r, write_logs=True) is None
    assert floats(m.callback_metrics) == {"quiet": 1.0}


def test_live_read_sees_values_logged_earlier_in_the_batch():
    r, m = ResultCollection(training=True), LoggedMetrics()
    m.attach(r)
    r.set_batch(batch_of(2))
    r.log("training_step", "loss", 0.5)
    # e.g. a checkpoint callback in on_train_batch_end, before the loop's update_step
    assert floats(m.callback_metrics) == {"loss": 0.5}
    r.epoch_end_reached()
    r.log("on_train_epoch_end", "epoch_acc", 0.75)
    # e.g. EarlyStopping in on_train_epoch_end sees the value the module logged in the same hook
    assert floats(m.callback_metrics)["epoch_acc"] == 0.75


def test_progress_bar_metrics_are_converted_lazily():
    r, m = ResultCollection(training=True), LoggedMetrics()
    r.log("training_step", "a", torch.tensor(1.5), prog_bar=True)
    r.log("training_step", "b", torch.tensor(2.5, dtype=torch.float64), prog_bar=True)
    m.update_step(r, write_logs=False)
    assert all(isinstance(v, torch.Tensor) for v in m._pbar.values())  # nothing converted yet
    pbar = m.progress_bar_metrics
    assert pbar == {"a": 1.5, "b": 2.5}
    assert all(type(v) is float for v in pbar.values())


def test_reset_clears_all_dicts():
    r, m = ResultCollection(training=False), LoggedMetrics()
    r.log("validation_step", "x", 1.0, prog_bar=True)
    m.update_epoch(r, write_logs=False)
    assert m.callback_metrics and m.logged_metrics and m.progress_bar_metrics
    m.reset()
    assert m.callback_metrics == {} and m.logged_metrics == {} and m.progress_bar_metrics == {}


def test_teardown_moves_tensors_to_cpu():
    r, m = ResultCollection(training=True), LoggedMetrics()
    r.log("training_step", "x", 1.0, prog_bar=True)
    m.update_step(r, write_logs=False)
    m.teardown()
    assert m.callback_metrics["x"].device.type == "cpu"
    assert m.progress_bar_metrics == {"x": 1.0}


# ------------------------------------------------------------------------------------------------------------------
# sync_dist hook point
# ------------------------------------------------------------------------------------------------------------------


def test_sync_fn_is_applied_only_to_sync_dist_keys():
    calls = []

    def two_ranks(tensor, reduce_op, group):  # pretend a second rank holds identical values
        calls.append((reduce_op, group))
        return tensor * 2 if reduce_op == "sum" else tensor

    r = ResultCollection(training=True, sync_fn=two_ranks)
    for size in (2, 4):
        r.set_batch(batch_of(size))
        r.log("training_step", "mean", float(size), on_epoch=True, sync_dist=True, sync_dist_group="g")
        r.log("training_step", "total", 1.0, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        r.log("training_step", "local", 1.0, on_epoch=True, reduce_fx="sum")
        once = dict(on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        r.log("training_step", "r0", 1.0, **once, rank_zero_only=True)
        r.batch_end()
    assert calls == [("mean", "g"), ("mean", "g")]  # step values, at log time
    epoch = r.epoch_metrics().log
    # weighted mean over both "ranks" is unchanged; sums double; no sync without sync_dist or with rank_zero_only
    assert float(epoch["mean_epoch"]) == pytest.approx((2 * 2 + 4 * 4) / 6)
    assert floats({k: epoch[k] for k in ("total", "local_epoch", "r0")}) == {"total": 4, "local_epoch": 2, "r0": 2}
    assert calls[2:] == [("sum", "g"), ("sum", "g"), ("sum", None)]
    r.epoch_metrics()
    assert len(calls) == 5  # epoch values are computed (and synced) once until new values arrive


def test_without_sync_fn_sync_dist_is_identity():
    r = ResultCollection(training=True)
    r.log("training_step", "x", 3.0, on_epoch=True, sync_dist=True)
    assert float(r.epoch_metrics().log["x_epoch"]) == 3.0


# ------------------------------------------------------------------------------------------------------------------
# performance: no host sync on the per-step path, and the cost of a repeat call
# ------------------------------------------------------------------------------------------------------------------


def test_per_step_path_never_reads_tensor_values(monkeypatch):
    model = nn.Linear(3, 1)
    r, m = ResultCollection(training=True), LoggedMetrics()
    m.attach(r)
    batches = [batch_of(4) for _ in range(3)] + [batch_of(2)]

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor value was read on the per-step path (host sync)")

    for attr in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    with pytest.raises(AssertionError, match="host sync"):
        torch.tensor(1.0).item()  # the patch is in force
    for epoch in range(2):
        for i in range(1100):  # enough to cross the compaction threshold
            x, y = batches[i % 4]
            r.set_batch((x, y))
            loss = model(x).squeeze(1).sub(y.float()).pow(2).mean()
            r.log("training_step", "train_loss", loss)
            r.log("training_step", "acc", (model(x) > 0).float().mean(), on_epoch=True, prog_bar=True)
            r.log("training_step", "count", i)
            r.log_dict("on_train_batch_end", {"a": loss, "b": 0.5}, on_epoch=True, reduce_fx="max")
            m.update_step(r, write_logs=False)
            r.batch_end()
        r.epoch_end_reached()
        m.update_epoch(r, write_logs=False)
        r.reset()
    monkeypatch.undo()
    assert set(m.progress_bar_metrics) == {"acc_step", "acc_epoch"}
    assert all(type(v) is float for v in m.progress_bar_metrics.values())


def test_print_fast_path_cost():
    model = nn.Linear(3, 1)
    x = torch.randn(8, 3)
    loss = model(x).pow(2).mean()
    r = ResultCollection(training=True)
    r.set_batch((x,))
    n = 20000
    cases = {
        "log('train_loss', loss) on_step": lambda: r.log("training_step", "train_loss", loss),
        "log(on_epoch=True, prog_bar=True)": lambda: r.log("training_step", "acc", loss, on_epoch=True, prog_bar=True),
        "log(python float)": lambda: r.log("training_step", "lr", 0.1),
        "set_batch": lambda: r.set_batch((x,)),
    }
    for label, fn in cases.items():
        fn()  # first call validates and caches
        per_call = timeit.timeit(fn, number=n) / n * 1e6
        print(f"{label:40s} {per_call:.2f} us/call")
