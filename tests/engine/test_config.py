"""TrainerConfig: Lightning's defaults, every validation message, the not-yet table and the effective() resolution."""

from __future__ import annotations

import json
import os
import pathlib
import re
import warnings
from datetime import timedelta

import pytest
import torch

from engine.config import _NOT_YET, FlagTypeError, RunSettings, TrainerConfig
from engine.errors import MisconfigurationException

# Lightning 2.x `Trainer.__init__` signature defaults (reference §1), plus `suggest_integrations` from master.
LIGHTNING_DEFAULTS = {
    "accelerator": "auto",
    "strategy": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "precision": None,
    "logger": None,
    "callbacks": None,
    "fast_dev_run": False,
    "max_epochs": None,
    "min_epochs": None,
    "max_steps": -1,
    "min_steps": None,
    "max_time": None,
    "limit_train_batches": None,
    "limit_val_batches": None,
    "limit_test_batches": None,
    "limit_predict_batches": None,
    "overfit_batches": 0.0,
    "val_check_interval": None,
    "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": None,
    "log_every_n_steps": None,
    "enable_checkpointing": None,
    "enable_progress_bar": None,
    "enable_model_summary": None,
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "gradient_clip_algorithm": None,
    "deterministic": None,
    "benchmark": None,
    "inference_mode": True,
    "use_distributed_sampler": True,
    "profiler": None,
    "detect_anomaly": False,
    "barebones": False,
    "plugins": None,
    "sync_batchnorm": False,
    "reload_dataloaders_every_n_epochs": 0,
    "default_root_dir": None,
    "enable_autolog_hparams": True,
    "model_registry": None,
    "suggest_integrations": True,
}


class Thing:
    """Stands in for an object flag value (Callback, Logger, Accelerator, Strategy, Profiler, plugin)."""


class MyCallback:
    pass


def build(**kwargs):
    return TrainerConfig.from_kwargs(**kwargs)


# ------------------------------------------------------------------------------------------------------ defaults
EXTENSIONS = {"log_format": None, "on_nonfinite_loss": "error", "trace": None, "verify_trace": None}  # statetrain's documented additions to Lightning's flags


def test_has_exactly_lightnings_42_flags_with_its_defaults():
    assert len(TrainerConfig.model_fields) == 42 + len(EXTENSIONS)
    assert {name: f.default for name, f in TrainerConfig.model_fields.items()} == {**LIGHTNING_DEFAULTS, **EXTENSIONS}
    cfg = build()
    assert cfg == TrainerConfig()
    cfg.check_implemented()  # defaults never ask for a missing feature


def test_default_effective_settings_match_lightning():
    s = build().effective()
    assert isinstance(s, RunSettings)
    assert not hasattr(s, "__dict__")  # slotted: cheap attribute reads on the hot path
    assert (s.max_epochs, s.min_epochs, s.max_steps, s.min_steps) == (1000, 0, -1, None)
    assert (s.limit_train_batches, s.limit_val_batches, s.limit_test_batches, s.limit_predict_batches) == (1.0,) * 4
    assert (s.overfit_batches, s.val_check_interval, s.check_val_every_n_epoch) == (0.0, 1.0, 1)
    assert (s.num_sanity_val_steps, s.log_every_n_steps, s.enable_model_summary) == (2, 50, True)
    assert (s.deterministic, s.benchmark, s.inference_mode, s.detect_anomaly, s.barebones) == (
        False, None, True, False, False,
    )  # fmt: skip
    assert (s.fast_dev_run, s.reload_dataloaders_every_n_epochs, s.accumulate_grad_batches) == (0, 0, 1)
    assert (s.precision, s.accelerator, s.strategy, s.devices, s.num_nodes) == ("32-true", "auto", "auto", "auto", 1)
    assert (s.gradient_clip_val, s.gradient_clip_algorithm) == (None, "norm")
    assert (s.max_time_seconds, s.val_check_time_interval) == (None, None)
    assert s.default_root_dir == os.getcwd()
    assert s.callbacks == []
    assert s.use_distributed_sampler and s.enable_autolog_hparams


def test_valid_values_are_kept():
    cb = MyCallback()
    cfg = build(
        max_epochs=3, min_epochs=1, max_steps=100, min_steps=2, limit_train_batches=0.5, limit_val_batches=4,
        limit_test_batches=0, limit_predict_batches=1.0, val_check_interval=0.25, check_val_every_n_epoch=2,
        num_sanity_val_steps=-1, log_every_n_steps=10, accelerator="cpu", devices=1, callbacks=[cb],
        deterministic="warn", benchmark=False, inference_mode=False, reload_dataloaders_every_n_epochs=2,
        enable_model_summary=False, detect_anomaly=True, use_distributed_sampler=False, default_root_dir="/tmp/x",
    )  # fmt: skip
    assert cfg.callbacks[0] is cb  # objects are not copied
    s = cfg.effective()
    assert (s.max_epochs, s.min_epochs, s.max_steps, s.min_steps) == (3, 1, 100, 2)
    assert (s.limit_train_batches, s.limit_val_batches, s.limit_test_batches) == (0.5, 4, 0)
    assert (s.val_check_interval, s.check_val_every_n_epoch, s.num_sanity_val_steps) == (0.25, 2, -1)
    assert (s.log_every_n_steps, s.deterministic, s.benchmark, s.inference_mode) == (10, "warn", False, False)
    assert s.callbacks == [cb] and s.default_root_dir == "/tmp/x" and s.detect_anomaly


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"limit_train_batches": 10.0}, "limit_train_batches", 10),  # integral float > 1 is a count (Lightning)
        ({"overfit_batches": 3.0}, "overfit_batches", 3),
        ({"val_check_interval": 50.0}, "val_check_interval", 50),
        ({"limit_val_batches": torch.tensor(3).numpy()[()]}, "limit_val_batches", 3),  # numpy int
        ({"gradient_clip_algorithm": "VALUE"}, "gradient_clip_algorithm", "value"),
        ({"strategy": "DDP"}, "strategy", "ddp"),
        ({"profiler": "Simple"}, "profiler", "simple"),
        ({"devices": (0, 1)}, "devices", [0, 1]),
        ({"devices": " 0,1 "}, "devices", " 0,1 "),
    ],
)
def test_values_are_normalised(kwargs, field, expected):
    value = getattr(build(**kwargs), field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("value", ["00:01:00:00", timedelta(hours=1), {"minutes": 60}])
def test_max_time_forms_are_accepted(value):
    cfg = build(max_time=value)
    assert cfg.max_time == value
    assert cfg.effective().max_time_seconds == 3600.0


# ------------------------------------------------------------------------------------------------- unknown flags
@pytest.mark.parametrize(
    ("flag", "suggestion"),
    [("max_epoch", "max_epochs"), ("limit_train_batch", "limit_train_batches"), ("acelerator", "accelerator"),
     ("gradient_clip", "gradient_clip_val"), ("num_sanity_steps", "num_sanity_val_steps")],
)  # fmt: skip
def test_unknown_flag_suggests_the_closest(flag, suggestion):
    with pytest.raises(MisconfigurationException, match=rf"Trainer\({flag}=3\): unknown flag '{flag}'; did you mean '{suggestion}'\?"):
        build(**{flag: 3})


def test_unknown_flag_without_close_match_lists_valid_flags():
    with pytest.raises(MisconfigurationException, match=r"unknown flag 'zzz'; valid flags are: accelerator, strategy"):
        build(zzz=1)


def test_unknown_flag_is_a_value_error_and_direct_construction_forbids_extras():
    with pytest.raises(ValueError, match="max_epoch"):
        build(max_epoch=3)
    with pytest.raises(ValueError, match="max_epoch"):
        TrainerConfig(max_epoch=3)


@pytest.mark.parametrize(
    ("flag", "value", "fix"),
    [
        ("gpus", 2, r"accelerator='gpu', devices=2"),
        ("tpu_cores", 8, r"accelerator='tpu', devices=8"),
        ("num_processes", 4, r"accelerator='cpu', devices=4"),
        ("ipus", 1, "lightning-graphcore"),
        ("resume_from_checkpoint", "last.ckpt", r"trainer\.fit\(model, ckpt_path='last\.ckpt'\)"),
        ("replace_sampler_ddp", False, "use_distributed_sampler=False"),
        ("auto_lr_find", True, r"Tuner\(trainer\)\.lr_find"),
        ("auto_scale_batch_size", True, r"Tuner\(trainer\)\.scale_batch_size"),
        ("track_grad_norm", 2, "on_before_optimizer_step"),
        ("weights_summary", "top", "enable_model_summary"),
        ("progress_bar_refresh_rate", 10, "TQDMProgressBar"),
        ("checkpoint_callback", False, "enable_checkpointing=False"),
        ("flush_logs_every_n_steps", 100, "on the logger"),
        ("terminate_on_nan", True, "detect_anomaly=True"),
        ("auto_select_gpus", True, "devices='auto'"),
        ("amp_backend", "apex", "precision='16-mixed'"),
        ("amp_level", "O2", "precision='16-mixed'"),
        ("move_metrics_to_cpu", True, "no replacement"),
        ("multiple_trainloader_mode", "min_size", r"CombinedLoader\(loaders, mode='min_size'\)"),
        ("stochastic_weight_avg", True, "StochasticWeightAveraging"),
    ],
)
def test_removed_lightning_1x_flags_say_what_to_use(flag, value, fix):
    pattern = rf"Trainer\({flag}=.*\): '{flag}' is a Lightning 1\.x flag that was removed in Lightning 2\.0; .*{fix}"
    with pytest.raises(MisconfigurationException, match=pattern):
        build(**{flag: value})


# --------------------------------------------------------------------------------------------------- bad values
# (flags, match) for values of the right type but outside the accepted range -> MisconfigurationException only.
BAD_VALUES = [
    ({"max_epochs": -5}, r"Trainer\(max_epochs=-5\): max_epochs must be -1 \(infinite\) or an int >= 0, got -5"),
    ({"max_steps": -2}, r"Trainer\(max_steps=-2\): max_steps must be -1 \(infinite\) or an int >= 0, got -2"),
    ({"min_epochs": -1}, r"Trainer\(min_epochs=-1\): min_epochs must be None or an int >= 0, got -1"),
    ({"min_steps": -1}, r"Trainer\(min_steps=-1\): min_steps must be None or an int >= 0, got -1"),
    ({"limit_train_batches": 1.5}, r"Trainer\(limit_train_batches=1\.5\): .*float in \[0\.0, 1\.0\].*int >= 0.*got 1\.5"),
    ({"limit_val_batches": -1}, r"Trainer\(limit_val_batches=-1\): limit_val_batches must be a float in \[0\.0, 1\.0\]"),
    ({"limit_test_batches": -0.1}, r"Trainer\(limit_test_batches=-0\.1\): limit_test_batches must be"),
    ({"limit_predict_batches": float("nan")}, r"Trainer\(limit_predict_batches=nan\): limit_predict_batches must"),
    ({"overfit_batches": 2.5}, r"Trainer\(overfit_batches=2\.5\): overfit_batches must be a float in \[0\.0, 1\.0\]"),
    ({"overfit_batches": -1}, r"Trainer\(overfit_batches=-1\): overfit_batches must be"),
    ({"val_check_interval": 1.5}, r"Trainer\(val_check_interval=1\.5\): val_check_interval must be a float in \[0\.0, 1\.0\].*int > 0"),
    ({"val_check_interval": 0}, r"Trainer\(val_check_interval=0\): val_check_interval must be"),
    ({"val_check_interval": "1h"}, r"Trainer\(val_check_interval='1h'\): val_check_interval must be a 'DD:HH:MM:SS' string"),
    ({"check_val_every_n_epoch": 0}, r"Trainer\(check_val_every_n_epoch=0\): check_val_every_n_epoch must be None or an int >= 1, got 0"),
    ({"num_sanity_val_steps": -2}, r"Trainer\(num_sanity_val_steps=-2\): num_sanity_val_steps must be None, -1 \(all val batches\) or an int >= 0"),
    ({"log_every_n_steps": -1}, r"Trainer\(log_every_n_steps=-1\): log_every_n_steps must be None or an int >= 0, got -1"),
    ({"accumulate_grad_batches": 0}, r"Trainer\(accumulate_grad_batches=0\): accumulate_grad_batches must be an int >= 1, got 0"),
    ({"gradient_clip_val": -1.0}, r"Trainer\(gradient_clip_val=-1\.0\): gradient_clip_val must be an int or a float >= 0"),
    ({"gradient_clip_algorithm": "l2"}, r"Trainer\(gradient_clip_algorithm='l2'\): gradient_clip_algorithm must be 'norm' or 'value'"),
    ({"deterministic": "yes"}, r"Trainer\(deterministic='yes'\): deterministic must be True, False, 'warn' or None"),
    ({"accelerator": "tpux"}, r"Trainer\(accelerator='tpux'\): accelerator must be one of 'auto', 'cpu', 'cuda', 'gpu', 'mps', 'tpu' or an Accelerator, got 'tpux'"),
    ({"accelerator": "hpu"}, r"Trainer\(accelerator='hpu'\): .*lightning-habana"),
    ({"strategy": "ddpp"}, r"Trainer\(strategy='ddpp'\): strategy must be a Strategy instance or a registered name: auto, single_device, ddp"),
    ({"strategy": "dp"}, r"Trainer\(strategy='dp'\): DataParallel was removed in Lightning 2\.0; use strategy='ddp'"),
    ({"devices": 0}, r"Trainer\(devices=0\): devices must be 'auto', an int >= 1 .*zero devices is not valid.*got 0"),
    ({"devices": []}, r"Trainer\(devices=\[\]\): devices must be .*zero devices is not valid"),
    ({"devices": "0"}, r"Trainer\(devices='0'\): devices must be .*zero devices is not valid"),
    ({"devices": -2}, r"Trainer\(devices=-2\): devices must be 'auto'"),
    ({"devices": "gpu"}, r"Trainer\(devices='gpu'\): devices must be 'auto'"),
    ({"devices": "0,0"}, r"Trainer\(devices='0,0'\): .*indices must be unique"),
    ({"devices": [0, 0]}, r"Trainer\(devices=\[0, 0\]\): .*indices must be >= 0 and unique"),
    ({"devices": [-1]}, r"Trainer\(devices=\[-1\]\): .*indices must be >= 0 and unique"),
    ({"num_nodes": 0}, r"Trainer\(num_nodes=0\): num_nodes must be an int >= 1, got 0"),
    ({"fast_dev_run": -1}, r"Trainer\(fast_dev_run=-1\): fast_dev_run must be True/False or an int >= 0"),
    ({"reload_dataloaders_every_n_epochs": -1}, r"Trainer\(reload_dataloaders_every_n_epochs=-1\): .* an int >= 0"),
    ({"precision": "fp16"}, r"Trainer\(precision='fp16'\): precision must be one of '32-true', '64-true', '16-mixed'.*got 'fp16'"),
    ({"precision": 8}, r"Trainer\(precision=8\): precision must be one of"),
    ({"profiler": "fancy"}, r"Trainer\(profiler='fancy'\): profiler must be None, one of 'simple', 'advanced', 'pytorch', 'xla'"),
    ({"max_time": "1:00"}, r"Trainer\(max_time='1:00'\): max_time must be a 'DD:HH:MM:SS' string"),
    ({"max_time": "00:1:00:00"}, r"Trainer\(max_time='00:1:00:00'\): max_time must be a 'DD:HH:MM:SS'"),
    ({"check_val_every_n_epoch": None, "val_check_interval": 0.5},
     r"Trainer\(check_val_every_n_epoch=None, val_check_interval=0\.5\): .*must be an int"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "match"), BAD_VALUES)
def test_bad_values_name_the_flag_value_and_what_is_accepted(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match) as info:
        build(**kwargs)
    assert not isinstance(info.value, TypeError)


# Wrong types -> FlagTypeError, which is both a MisconfigurationException (ValueError) and a TypeError.
BAD_TYPES = [
    ({"max_epochs": "three"}, r"Trainer\(max_epochs='three'\): max_epochs must be -1 \(infinite\) or an int >= 0"),
    ({"max_epochs": 3.0}, r"Trainer\(max_epochs=3\.0\): max_epochs must be"),
    ({"max_epochs": True}, r"Trainer\(max_epochs=True\): .*a bool is not accepted here"),
    ({"max_steps": None}, r"Trainer\(max_steps=None\): max_steps must be -1 \(infinite\) or an int >= 0"),
    ({"limit_train_batches": "a"}, r"Trainer\(limit_train_batches='a'\): limit_train_batches must be a float in"),
    ({"limit_train_batches": True}, r"Trainer\(limit_train_batches=True\): .*a bool is not accepted here"),
    ({"limit_val_batches": False}, r"Trainer\(limit_val_batches=False\): .*a bool is not accepted here"),
    ({"overfit_batches": True}, r"Trainer\(overfit_batches=True\): overfit_batches must be"),
    ({"overfit_batches": None}, r"Trainer\(overfit_batches=None\): overfit_batches must be"),
    ({"val_check_interval": True}, r"Trainer\(val_check_interval=True\): val_check_interval must be"),
    ({"val_check_interval": [1]}, r"Trainer\(val_check_interval=\[1\]\): val_check_interval must be"),
    ({"max_time": {"hourz": 1}}, r"Trainer\(max_time=\{'hourz': 1\}\): max_time as a dict must hold datetime\.timedelta keyword"),
    ({"max_time": 60}, r"Trainer\(max_time=60\): max_time must be a 'DD:HH:MM:SS' string, a datetime\.timedelta"),
    ({"check_val_every_n_epoch": 1.0}, r"Trainer\(check_val_every_n_epoch=1\.0\): check_val_every_n_epoch must be"),
    ({"num_sanity_val_steps": "2"}, r"Trainer\(num_sanity_val_steps='2'\): num_sanity_val_steps must be"),
    ({"log_every_n_steps": 5.5}, r"Trainer\(log_every_n_steps=5\.5\): log_every_n_steps must be"),
    ({"accumulate_grad_batches": {0: 4, 5: 2}}, r"Trainer\(accumulate_grad_batches=\{0: 4, 5: 2\}\): .*GradientAccumulationScheduler"),
    ({"accumulate_grad_batches": 2.0}, r"Trainer\(accumulate_grad_batches=2\.0\): accumulate_grad_batches must be an int >= 1"),
    ({"gradient_clip_val": "x"}, r"Trainer\(gradient_clip_val='x'\): gradient_clip_val must be an int or a float"),
    ({"gradient_clip_val": True}, r"Trainer\(gradient_clip_val=True\): gradient_clip_val must be an int or a float"),
    ({"gradient_clip_algorithm": 2}, r"Trainer\(gradient_clip_algorithm=2\): gradient_clip_algorithm must be"),
    ({"deterministic": 1}, r"Trainer\(deterministic=1\): deterministic must be True, False, 'warn' or None"),
    ({"accelerator": None}, r"Trainer\(accelerator=None\): accelerator must be one of"),
    ({"accelerator": 1}, r"Trainer\(accelerator=1\): accelerator must be one of"),
    ({"strategy": None}, r"Trainer\(strategy=None\): strategy must be a strategy name"),
    ({"devices": 1.0}, r"Trainer\(devices=1\.0\): devices must be 'auto'"),
    ({"devices": [True]}, r"Trainer\(devices=\[True\]\): devices must be 'auto'"),
    ({"devices": None}, r"Trainer\(devices=None\): devices must be 'auto'"),
    ({"num_nodes": "2"}, r"Trainer\(num_nodes='2'\): num_nodes must be an int >= 1"),
    ({"precision": 32.0}, r"Trainer\(precision=32\.0\): precision must be one of"),
    ({"precision": True}, r"Trainer\(precision=True\): precision must be one of"),
    ({"logger": "tensorboard"}, r"Trainer\(logger='tensorboard'\): logger must be True/False/None, a Logger or a list"),
    ({"logger": 1}, r"Trainer\(logger=1\): logger must be"),
    ({"callbacks": "early_stopping"}, r"Trainer\(callbacks='early_stopping'\): callbacks must be None, a Callback or a list of Callbacks"),
    ({"callbacks": [MyCallback(), 3]}, r"Trainer\(callbacks=\[.*MyCallback.*, 3\]\): callbacks must be"),
    ({"callbacks": True}, r"Trainer\(callbacks=True\): callbacks must be"),
    ({"fast_dev_run": 2.0}, r"Trainer\(fast_dev_run=2\.0\): fast_dev_run must be True/False or an int >= 0"),
    ({"fast_dev_run": "yes"}, r"Trainer\(fast_dev_run='yes'\): fast_dev_run must be"),
    ({"profiler": 1}, r"Trainer\(profiler=1\): profiler must be None, one of"),
    ({"plugins": "bf16"}, r"Trainer\(plugins='bf16'\): plugins must be None, a plugin instance or a list"),
    ({"reload_dataloaders_every_n_epochs": None}, r"Trainer\(reload_dataloaders_every_n_epochs=None\): .*an int >= 0"),
    ({"default_root_dir": 5}, r"Trainer\(default_root_dir=5\): default_root_dir must be None, a str path"),
    ({"model_registry": 3}, r"Trainer\(model_registry=3\): model_registry must be None or a model name string"),
]  # fmt: skip

BOOL_FLAGS = ["inference_mode", "use_distributed_sampler", "detect_anomaly", "barebones", "sync_batchnorm",
              "enable_autolog_hparams", "suggest_integrations"]  # fmt: skip
OPTIONAL_BOOL_FLAGS = ["enable_checkpointing", "enable_progress_bar", "enable_model_summary", "benchmark"]
BAD_TYPES += [({flag: "yes"}, rf"Trainer\({flag}='yes'\): {flag} must be True or False, got 'yes'") for flag in BOOL_FLAGS]
BAD_TYPES += [({flag: None}, rf"Trainer\({flag}=None\): {flag} must be True or False, got None") for flag in BOOL_FLAGS]
BAD_TYPES += [({flag: 1}, rf"Trainer\({flag}=1\): {flag} must be True or False \(or None for the default\), got 1")
              for flag in OPTIONAL_BOOL_FLAGS]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "match"), BAD_TYPES)
def test_wrong_types_raise_a_type_error_that_is_also_a_misconfiguration(kwargs, match):
    with pytest.raises(FlagTypeError, match=match) as info:
        build(**kwargs)
    assert isinstance(info.value, MisconfigurationException)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_several_bad_flags_are_all_reported():
    with pytest.raises(MisconfigurationException, match=r"(?s)max_epochs=-5.*\n.*max_steps=-3"):
        build(max_epochs=-5, max_steps=-3)


def test_errors_hide_pydantic():
    with pytest.raises(MisconfigurationException) as info:
        build(max_epochs=-5)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "pydantic" not in str(info.value) and "Value error" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"devices": -1}, {"devices": "-1"}, {"devices": "2"}, {"devices": "0,1"}, {"devices": "1,"}, {"devices": [1]},
        {"accelerator": Thing()}, {"strategy": Thing()}, {"logger": [Thing(), Thing()]}, {"logger": Thing()},
        {"callbacks": MyCallback()}, {"callbacks": (MyCallback(),)}, {"profiler": Thing()}, {"plugins": [Thing()]},
        {"val_check_interval": 1}, {"val_check_interval": 0.0}, {"val_check_interval": "00:00:10:00"},
        {"val_check_interval": timedelta(minutes=10)}, {"val_check_interval": {"minutes": 10}},
        {"check_val_every_n_epoch": None, "val_check_interval": 100}, {"limit_val_batches": 0}, {"fast_dev_run": 0},
        {"default_root_dir": pathlib.Path("/tmp")}, {"gradient_clip_val": 0}, {"gradient_clip_val": 0.5},
        {"deterministic": True}, {"model_registry": "org/model"}, {"num_sanity_val_steps": -1},
    ],
)  # fmt: skip
def test_accepted_values(kwargs):
    build(**kwargs)


# ---------------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize(
    ("value", "resolved", "warns"),
    [
        (None, None, False), ("32-true", "32-true", False), ("64-true", "64-true", False),
        ("16-mixed", "16-mixed", False), ("bf16-mixed", "bf16-mixed", False), ("16-true", "16-true", False),
        ("bf16-true", "bf16-true", False), ("transformer-engine", "transformer-engine", False),
        ("transformer-engine-float16", "transformer-engine-float16", False),
        (64, "64-true", False), ("64", "64-true", False), (32, "32-true", False), ("32", "32-true", False),
        (16, "16-mixed", True), ("16", "16-mixed", True), ("bf16", "bf16-mixed", True),
    ],
)  # fmt: skip
def test_precision_aliases_are_normalised_and_16_bf16_warn(value, resolved, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = build(precision=value)
    assert cfg.precision == resolved
    assert cfg.effective().precision == (resolved or "32-true")
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if warns:
        assert len(messages) == 1 and f"precision={value!r}" in messages[0] and f"precision={resolved!r}" in messages[0]
        assert "discouraged" in messages[0]
    else:
        assert messages == []


def test_precision_warning_is_a_user_warning():
    with pytest.warns(UserWarning, match=r"Trainer\(precision='bf16'\) is a legacy alias .* write precision='bf16-mixed'"):
        build(precision="bf16")


# ---------------------------------------------------------------------------------------------------- barebones
@pytest.mark.parametrize(
    ("flag", "value", "feature"),
    [
        ("enable_checkpointing", True, "checkpointing"),
        ("logger", True, "logging"),
        ("logger", Thing(), "logging"),
        ("enable_progress_bar", True, "the progress bar"),
        ("log_every_n_steps", 10, "logging"),
        ("enable_model_summary", True, "the model summary"),
        ("num_sanity_val_steps", 2, "sanity checking"),
        ("num_sanity_val_steps", -1, "sanity checking"),
        ("fast_dev_run", True, "the development run"),
        ("fast_dev_run", 3, "the development run"),
        ("detect_anomaly", True, "anomaly detection"),
        ("profiler", "simple", "profiling"),
    ],
)
def test_barebones_conflicts_name_the_flag(flag, value, feature):
    match = rf"Trainer\(barebones=True, {flag}=.*\): barebones mode disables {feature} .*drop {flag}=\.\.\. or set barebones=False"
    with pytest.raises(MisconfigurationException, match=match):
        build(barebones=True, **{flag: value})


def test_barebones_accepts_the_off_values_and_resolves_like_lightning():
    cfg = build(
        barebones=True, enable_checkpointing=False, logger=False, enable_progress_bar=False, log_every_n_steps=0,
        enable_model_summary=False, num_sanity_val_steps=0, fast_dev_run=False, detect_anomaly=False, profiler=None,
    )  # fmt: skip
    cfg.check_implemented()
    s = build(barebones=True).effective()
    assert (s.barebones, s.log_every_n_steps, s.num_sanity_val_steps, s.enable_model_summary) == (True, 0, 0, False)
    assert s.max_epochs == 1000


# ------------------------------------------------------------------------------------------------- not yet here
NOT_YET_CASES = [
    ("strategy", "deepspeed", "strategies other than 'auto', 'single_device', 'ddp', 'ddp_spawn'"),
    ("strategy", "ddp_fork", "strategies other than"),
    ("strategy", Thing(), "strategies other than"),
    ("profiler", "xla", "the 'xla' profiler"),
    ("plugins", Thing(), "plugins"),
    ("plugins", [Thing()], "plugins"),
    ("model_registry", "org/model", "the model registry"),
]


@pytest.mark.parametrize(("flag", "value", "feature"), NOT_YET_CASES)
def test_features_not_yet_available_are_refused_clearly(flag, value, feature):
    cfg = build(**{flag: value})  # accepted and validated now ...
    match = rf"Trainer\({flag}=.*\): .*{re.escape(feature)}.* not available in statetrain yet; leave {flag} at its default"
    with pytest.raises(NotImplementedError, match=match):
        cfg.check_implemented()  # ... but refused until the feature lands


def test_every_not_yet_entry_is_covered_by_a_case():
    assert {flag for flag, _, _ in NOT_YET_CASES} == set(_NOT_YET)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"logger": False}, {"logger": None}, {"logger": []}, {"enable_checkpointing": False},
        {"enable_progress_bar": False}, {"strategy": "single_device"}, {"strategy": "AUTO"}, {"devices": 1},
        {"devices": "1"}, {"devices": [0]}, {"devices": "auto"}, {"devices": "0,"}, {"precision": 32},
        {"precision": "32"}, {"precision": "32-true"}, {"accumulate_grad_batches": 1}, {"gradient_clip_val": 0},
        {"gradient_clip_val": 0.0}, {"plugins": []}, {"sync_batchnorm": False}, {"val_check_interval": 0.5},
        {"val_check_interval": 10}, {"num_nodes": 1}, {"strategy": "ddp"}, {"strategy": "ddp_spawn"},
        {"devices": 2}, {"num_nodes": 2}, {"strategy": "fsdp"}, {"sync_batchnorm": True},
    ],
)  # fmt: skip
def test_off_values_of_not_yet_flags_are_fine(kwargs):
    build(**kwargs).check_implemented()


def test_check_implemented_raises_for_the_first_entry_in_table_order():
    cfg = build(strategy="deepspeed", profiler="xla")
    with pytest.raises(NotImplementedError, match=r"^Trainer\(strategy='deepspeed'\)"):
        cfg.check_implemented()


# ---------------------------------------------------------------------------------------------------- effective
@pytest.mark.parametrize(
    ("kwargs", "max_epochs", "min_epochs", "max_steps"),
    [
        ({}, 1000, 0, -1),  # neither limit set -> 1000 epochs
        ({"max_steps": 50}, -1, 0, 50),  # a step limit alone means no epoch limit
        ({"max_steps": 0}, -1, 0, 0),
        ({"max_time": "00:00:01:00"}, -1, 0, -1),  # a time limit alone means no epoch limit
        ({"max_epochs": -1}, -1, 0, -1),
        ({"max_epochs": 0}, 0, 0, -1),
        ({"max_epochs": 5, "max_steps": 7}, 5, 0, 7),
        ({"min_steps": 10}, 1000, 1, -1),  # min_steps set -> min_epochs 1
        ({"min_steps": 10, "min_epochs": 3}, 1000, 3, -1),
        ({"min_epochs": 2}, 1000, 2, -1),
    ],
)
def test_effective_epoch_and_step_limits(kwargs, max_epochs, min_epochs, max_steps):
    s = build(**kwargs).effective()
    assert (s.max_epochs, s.min_epochs, s.max_steps) == (max_epochs, min_epochs, max_steps)


@pytest.mark.parametrize(("value", "n"), [(True, 1), (1, 1), (5, 5)])
def test_effective_fast_dev_run(value, n):
    cfg = build(
        fast_dev_run=value, max_epochs=10, max_steps=100, limit_train_batches=0.5, limit_val_batches=3,
        limit_test_batches=0.1, limit_predict_batches=7, val_check_interval=0.25, check_val_every_n_epoch=3,
        num_sanity_val_steps=5,
    )  # fmt: skip
    s = cfg.effective()
    assert s.fast_dev_run == n and type(s.fast_dev_run) is int
    assert (s.max_epochs, s.max_steps) == (1, n)
    assert (s.limit_train_batches, s.limit_val_batches, s.limit_test_batches, s.limit_predict_batches) == (n,) * 4
    assert all(type(v) is int for v in (s.limit_train_batches, s.limit_val_batches))
    assert (s.val_check_interval, s.check_val_every_n_epoch, s.num_sanity_val_steps) == (1.0, 1, 0)
    assert s.log_every_n_steps == 50 and s.enable_model_summary is True  # untouched by fast_dev_run


def test_effective_fast_dev_run_false_is_off():
    s = build(fast_dev_run=False).effective()
    assert s.fast_dev_run == 0 and s.max_epochs == 1000 and s.num_sanity_val_steps == 2


def test_effective_fast_dev_run_ignores_time_based_validation():
    s = build(fast_dev_run=2, val_check_interval="00:00:10:00").effective()
    assert (s.val_check_interval, s.val_check_time_interval) == (1.0, None)


@pytest.mark.parametrize("overfit", [0.1, 4])
def test_effective_overfit_batches_uses_the_same_amount_for_train_and_val(overfit):
    s = build(overfit_batches=overfit, limit_train_batches=0.5, limit_val_batches=2, limit_test_batches=3).effective()
    assert (s.limit_train_batches, s.limit_val_batches) == (overfit, overfit)
    assert (s.limit_test_batches, s.limit_predict_batches, s.overfit_batches) == (3, 1.0, overfit)


def test_effective_overfit_batches_wins_over_fast_dev_run_for_train_and_val():
    s = build(overfit_batches=2, fast_dev_run=5).effective()
    assert (s.limit_train_batches, s.limit_val_batches, s.limit_test_batches, s.limit_predict_batches) == (2, 2, 5, 5)
    assert s.max_steps == 5


@pytest.mark.parametrize(
    ("kwargs", "deterministic", "cudnn_benchmark"),
    [({}, False, None), ({"deterministic": True}, True, False), ({"deterministic": "warn"}, "warn", False),
     ({"deterministic": True, "benchmark": True}, True, True), ({"benchmark": True}, False, True),
     ({"deterministic": False}, False, None)],
)  # fmt: skip
def test_effective_deterministic_and_benchmark(kwargs, deterministic, cudnn_benchmark):
    s = build(**kwargs).effective()
    assert (s.deterministic, s.benchmark) == (deterministic, cudnn_benchmark)


def test_effective_time_based_validation_and_max_time_in_seconds():
    s = build(val_check_interval={"minutes": 10}, max_time=timedelta(days=1)).effective()
    assert (s.val_check_interval, s.val_check_time_interval, s.max_time_seconds) == (1.0, 600.0, 86400.0)


def test_effective_misc():
    cb = MyCallback()
    s = build(callbacks=cb, default_root_dir=pathlib.Path("/tmp/runs"), gradient_clip_algorithm="value",
              enable_model_summary=False, log_every_n_steps=0).effective()  # fmt: skip
    assert s.callbacks == [cb] and s.default_root_dir == "/tmp/runs" and s.gradient_clip_algorithm == "value"
    assert (s.enable_model_summary, s.log_every_n_steps) == (False, 0)
    callbacks = [cb]
    s = build(callbacks=callbacks).effective()
    assert s.callbacks == callbacks and s.callbacks is not callbacks  # the loops may extend their own copy


def test_effective_is_plain_and_mutable():
    s = build().effective()
    s.max_epochs = 3  # loops and the Trainer's setters may adjust it
    assert s.max_epochs == 3


# ---------------------------------------------------------------------------------------------------- json dump
def test_to_json_dict_round_trips_through_json():
    cfg = build(
        callbacks=[MyCallback(), Thing()], logger=Thing(), accelerator=Thing(), max_time=timedelta(hours=2),
        val_check_interval={"minutes": 5}, default_root_dir=pathlib.Path("/tmp/runs"), devices=(0,), precision=64,
        profiler="simple", limit_train_batches=0.5, fast_dev_run=2,
    )  # fmt: skip
    dumped = cfg.to_json_dict()
    assert set(dumped) == set(LIGHTNING_DEFAULTS) | set(EXTENSIONS)
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["callbacks"] == ["MyCallback", "Thing"]
    assert (dumped["logger"], dumped["accelerator"]) == ("Thing", "Thing")
    assert dumped["max_time"] == "2:00:00" and dumped["val_check_interval"] == {"minutes": 5}
    assert (dumped["default_root_dir"], dumped["devices"], dumped["precision"]) == ("/tmp/runs", [0], "64-true")
    assert (dumped["limit_train_batches"], dumped["fast_dev_run"], dumped["profiler"]) == (0.5, 2, "simple")


def test_to_json_dict_of_defaults_equals_the_defaults():
    assert build().to_json_dict() == {**LIGHTNING_DEFAULTS, **EXTENSIONS}
