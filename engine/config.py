"""Trainer flags: `TrainerConfig` validates every Lightning 2.x `Trainer(...)` argument once, up front.

`TrainerConfig.from_kwargs(**kwargs)` rejects unknown, removed and badly typed flags with a message naming the flag,
the value and what is accepted. `check_implemented()` refuses flags whose feature has not landed yet (see `_NOT_YET`).
`effective()` resolves the None defaults the way Lightning does into a plain `RunSettings` dataclass that the loops
read on the hot path, so no pydantic object is touched per step.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import re
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from engine.errors import MisconfigurationException, user_stacklevel

__all__ = ["TrainerConfig", "RunSettings", "FlagTypeError"]


class FlagTypeError(MisconfigurationException, TypeError):
    """A Trainer flag got a value of the wrong type; also a TypeError, which is what Lightning raises for some flags."""


ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")
PROFILERS = ("simple", "advanced", "pytorch", "xla")
CLIP_ALGORITHMS = ("norm", "value")
PRECISIONS = (
    "32-true",
    "64-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
)
# Legacy spellings and what they mean; the "16" and "bf16" forms are discouraged (Lightning warns too).
_PRECISION_ALIASES: dict[int | str, str] = {
    64: "64-true", "64": "64-true",
    32: "32-true", "32": "32-true",
    16: "16-mixed", "16": "16-mixed",
    "bf16": "bf16-mixed",
}  # fmt: skip
_DDP_VARIANTS = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
STRATEGIES = (
    "auto",
    "single_device",
    *_DDP_VARIANTS,
    *(f"{v}_find_unused_parameters_{b}" for v in _DDP_VARIANTS for b in ("true", "false")),
    "fsdp",
    "fsdp_cpu_offload",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme",
    "xla",
    "xla_debug",
    "single_xla",
    "single_tpu",
)
_REMOVED_STRATEGIES = {
    "dp": "DataParallel was removed in Lightning 2.0; use strategy='ddp'",
    "ddp2": "ddp2 was removed in Lightning 2.0; use strategy='ddp'",
    "ddp_sharded": "sharded DDP (fairscale) was removed in Lightning 2.0; use strategy='fsdp'",
    "ddp_sharded_spawn": "sharded DDP (fairscale) was removed in Lightning 2.0; use strategy='fsdp'",
    "horovod": "Horovod was removed in Lightning 2.0; use strategy='ddp'",
    "bagua": "Bagua was removed in Lightning 2.0; use strategy='ddp'",
    "colossalai": "Colossal-AI was removed in Lightning 2.0; use strategy='fsdp' or 'deepspeed'",
}

# Lightning 1.x Trainer flags that Lightning 2.x rejects -> what to write instead ({value!r} is the value passed).
_REMOVED_FLAGS = {
    "gpus": "use Trainer(accelerator='gpu', devices={value!r})",
    "tpu_cores": "use Trainer(accelerator='tpu', devices={value!r})",
    "ipus": "IPU support moved to the lightning-graphcore package; use its accelerator with devices={value!r}",
    "hpus": "HPU support moved to the lightning-habana package; use its accelerator with devices={value!r}",
    "num_processes": "use Trainer(accelerator='cpu', devices={value!r})",
    "auto_select_gpus": "use devices='auto' (or pick free GPUs yourself and pass their indices to devices=)",
    "resume_from_checkpoint": "pass the path to fit instead: trainer.fit(model, ckpt_path={value!r})",
    "auto_lr_find": "use Tuner(trainer).lr_find(model) or the LearningRateFinder callback",
    "auto_scale_batch_size": "use Tuner(trainer).scale_batch_size(model) or the BatchSizeFinder callback",
    "track_grad_norm": "log gradient norms yourself in LightningModule.on_before_optimizer_step "
    "(e.g. self.log_dict(grad_norm(self, norm_type=2)))",
    "weights_summary": "use enable_model_summary=True/False or a ModelSummary(max_depth=...) callback",
    "progress_bar_refresh_rate": "use enable_progress_bar=True/False or a TQDMProgressBar(refresh_rate=...) callback",
    "process_position": "use a TQDMProgressBar(process_position=...) callback",
    "checkpoint_callback": "use enable_checkpointing={value!r}",
    "flush_logs_every_n_steps": "set it on the logger instead, e.g. CSVLogger(..., flush_logs_every_n_steps=...)",
    "terminate_on_nan": "use detect_anomaly=True or an EarlyStopping(monitor=..., check_finite=True) callback",
    "amp_backend": "native torch AMP is the only backend; choose it with precision='16-mixed' or 'bf16-mixed'",
    "amp_level": "Apex AMP is gone; use precision='16-mixed' or 'bf16-mixed'",
    "move_metrics_to_cpu": "it has no replacement; drop the flag",
    "multiple_trainloader_mode": "return CombinedLoader(loaders, mode={value!r}) from train_dataloader()",
    "replace_sampler_ddp": "use use_distributed_sampler={value!r}",
    "stochastic_weight_avg": "add a StochasticWeightAveraging(swa_lrs=...) callback",
    "log_gpu_memory": "add a DeviceStatsMonitor() callback",
    "prepare_data_per_node": "set self.prepare_data_per_node on your LightningModule or LightningDataModule",
    "reload_dataloaders_every_epoch": "use reload_dataloaders_every_n_epochs=1",
    "weights_save_path": "use default_root_dir=... or ModelCheckpoint(dirpath=...)",
    "distributed_backend": "use strategy=... (and accelerator=...)",
    "truncated_bptt_steps": "split the sequence yourself in training_step with manual optimization",
}


def _no_units(value: Any) -> bool:
    """None, 0, '0', '' or an empty list: in Lightning 1.x `gpus=`/`tpu_cores=`/... with this meant "none of them"."""
    if isinstance(value, str):
        return value.strip() in ("", "0")
    if isinstance(value, (list, tuple)):
        return not value
    return value is None or (value == 0 and not isinstance(value, bool))


# A removed flag whose value meant "off" in 1.x (gpus=0 is the CPU, progress_bar_refresh_rate=0 no bar): the advice
# for that value, since the general one (e.g. devices=0) would be wrong.
_REMOVED_FLAGS_OFF: dict[str, tuple[Callable[[Any], bool], str]] = {
    "gpus": (_no_units, "gpus={value!r} meant the CPU: use Trainer(accelerator='cpu')"),
    "tpu_cores": (_no_units, "tpu_cores={value!r} meant no TPU: use Trainer(accelerator='cpu')"),
    "ipus": (_no_units, "ipus={value!r} meant no IPU: use Trainer(accelerator='cpu')"),
    "hpus": (_no_units, "hpus={value!r} meant no HPU: use Trainer(accelerator='cpu')"),
    "progress_bar_refresh_rate": (lambda v: v == 0, "progress_bar_refresh_rate=0 turned the bar off: use "
                                  "enable_progress_bar=False"),
    "weights_summary": (lambda v: v is None, "weights_summary=None turned the summary off: use "
                        "enable_model_summary=False"),
    "track_grad_norm": (lambda v: v == -1, "track_grad_norm=-1 was off: drop the flag"),
    "auto_lr_find": (lambda v: v is False, "auto_lr_find=False was off: drop the flag"),
    "auto_scale_batch_size": (lambda v: v is False, "auto_scale_batch_size=False was off: drop the flag"),
    "auto_select_gpus": (lambda v: v is False, "auto_select_gpus=False was off: drop the flag"),
    "stochastic_weight_avg": (lambda v: v is False, "stochastic_weight_avg=False was off: drop the flag"),
    "terminate_on_nan": (lambda v: v is False, "terminate_on_nan=False was off: drop the flag"),
    "resume_from_checkpoint": (lambda v: v is None, "resume_from_checkpoint=None was off: drop the flag"),
    "log_gpu_memory": (lambda v: v is None, "log_gpu_memory=None was off: drop the flag"),
}

_NO_DEVICES = " (zero devices is not valid; to run on the CPU pass accelerator='cpu', devices=1)"
_DURATION_RE = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")


# ----------------------------------------------------------------------------------------------------------- helpers
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(flag: str, value: Any, expected: str, *, wrong_type: bool = False) -> NoReturn:
    """Raise the standard message: flag, value received, what is accepted."""
    cls = FlagTypeError if wrong_type else MisconfigurationException
    hint = " (a bool is not accepted here)" if isinstance(value, bool) else ""
    raise cls(f"Trainer({flag}={value!r}): {flag} must be {expected}, got {value!r}{hint}")


def _check_int(flag: str, value: Any, minimum: int, expected: str, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value):
        _fail(flag, value, expected, wrong_type=True)
    if value < minimum:
        _fail(flag, value, expected)
    return int(value)


def _check_bool(flag: str, value: Any, *, optional: bool) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        _fail(flag, value, "True or False" + (" (or None for the default)" if optional else ""), wrong_type=True)
    return value


def _batch_limit(flag: str, value: Any, expected: str, *, allow_zero_int: bool = True) -> int | float:
    """Lightning's batch-limit rule: a float in [0.0, 1.0] is a fraction, an int (or integral float > 1) a count."""
    if not _is_number(value):
        _fail(flag, value, expected, wrong_type=True)
    if isinstance(value, numbers.Integral):
        if value < 0 or (value == 0 and not allow_zero_int):
            _fail(flag, value, expected)
        return int(value)
    value = float(value)
    if 0.0 <= value <= 1.0:
        return value
    if value > 1.0 and value.is_integer():
        return int(value)
    _fail(flag, value, expected)


def _duration_seconds(flag: str, value: Any) -> float:
    """Seconds in a "DD:HH:MM:SS" string, a timedelta or a dict of timedelta keyword arguments."""
    expected = "a 'DD:HH:MM:SS' string, a datetime.timedelta or a dict of timedelta kwargs (e.g. {'hours': 2})"
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if not match:
            _fail(flag, value, expected)
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    if isinstance(value, dict):
        try:
            return timedelta(**value).total_seconds()
        except (TypeError, ValueError, OverflowError) as exc:
            raise FlagTypeError(
                f"Trainer({flag}={value!r}): {flag} as a dict must hold datetime.timedelta keyword arguments "
                f"(days, seconds, minutes, hours, weeks, ...) with numeric values; timedelta said: {exc}"
            ) from None
    _fail(flag, value, expected, wrong_type=True)


def _is_time_based(value: Any) -> bool:
    return isinstance(value, (str, timedelta, dict))


def _is_plain_object(value: Any) -> bool:
    """An instance such as an Accelerator/Strategy/Profiler object: not None, not a bool/number/str/container."""
    return value is not None and not isinstance(value, (bool, numbers.Number, str, bytes, list, tuple, dict, set))


_AVAILABLE_STRATEGIES = ("auto", "single_device", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true",
                         "ddp_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true",
                         "ddp_spawn_find_unused_parameters_false", "fsdp", "fsdp_cpu_offload")


def _strategy_instance(value: Any) -> bool:
    """A Strategy object (it sets the module up and launches stages), e.g. a SingleDeviceStrategy or DDPStrategy."""
    return (not isinstance(value, str) and callable(getattr(value, "setup_module", None))
            and callable(getattr(value, "launch", None)))


def _only_cluster_environments(value: Any) -> bool:
    """Every plugin is a cluster environment (rank detection), the one plugin kind statetrain takes today."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return all(callable(getattr(p, "world_size", None)) and hasattr(p, "creates_processes_externally")
               for p in items)


def _is_off(value: Any) -> bool:
    """None, False or an empty list/tuple: the user asked for nothing."""
    return value is None or value is False or (isinstance(value, (list, tuple)) and len(value) == 0)


# Flags accepted and validated now whose feature lands in a later issue: flag -> (is the feature requested?, feature).
# The default value of each flag leaves the feature off. Delete an entry when its feature lands.
_NOT_YET: dict[str, tuple[Callable[[Any], bool], str]] = {
    "strategy": (
        lambda v: not (isinstance(v, str) and v in _AVAILABLE_STRATEGIES) and not _strategy_instance(v),
        "strategies other than 'auto', 'single_device', 'ddp', 'ddp_spawn', their find_unused_parameters "
        "variants, 'fsdp' and 'fsdp_cpu_offload' (or a Strategy instance)",
    ),
    "profiler": (lambda v: isinstance(v, str) and v == "xla", "the 'xla' profiler"),
    "plugins": (lambda v: not _is_off(v) and not _only_cluster_environments(v),
                "plugins other than a ClusterEnvironment (Precision/CheckpointIO/LayerSync)"),
    "model_registry": (lambda v: v is not None, "the model registry"),
}


# ---------------------------------------------------------------------------------------------------- run settings
@dataclasses.dataclass(slots=True)
class RunSettings:
    """The resolved values the loops read (None defaults replaced exactly as Lightning does). Plain, cheap to read."""

    max_epochs: int
    min_epochs: int
    max_steps: int
    min_steps: int | None
    max_time_seconds: float | None
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    overfit_batches: int | float
    val_check_interval: int | float
    val_check_time_interval: float | None
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    log_every_n_steps: int
    enable_model_summary: bool
    inference_mode: bool
    deterministic: bool | str
    benchmark: bool | None
    detect_anomaly: bool
    barebones: bool
    fast_dev_run: int
    reload_dataloaders_every_n_epochs: int
    default_root_dir: str
    accelerator: Any
    strategy: Any
    devices: Any
    num_nodes: int
    precision: str
    accumulate_grad_batches: int
    gradient_clip_val: int | float | None
    gradient_clip_algorithm: str
    use_distributed_sampler: bool
    sync_batchnorm: bool
    enable_autolog_hparams: bool
    callbacks: list[Any]
    logger: Any = None
    enable_progress_bar: bool = False
    profiler: Any = None
    log_format: str | None = None
    on_nonfinite_loss: str | None = None
    trace: Any = None  # None (default: on at 'step' when a logger exists), False, or an engine.trace TraceConfig
    verify_trace: str | None = None
    plugins: Any = None  # the ClusterEnvironment plugins (strategies.environment)


# -------------------------------------------------------------------------------------------------------- the model
class TrainerConfig(BaseModel):
    """Every Lightning 2.x `Trainer(...)` flag with Lightning's defaults, validated once at construction.

    .. code-block:: python

        cfg = TrainerConfig.from_kwargs(max_epochs=3, limit_train_batches=0.25)
        cfg.check_implemented()
        settings = cfg.effective()  # settings.max_epochs == 3, settings.num_sanity_val_steps == 2
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # Any-typed fields also take objects (Accelerator, Strategy, Logger, Callback, Profiler, plugin instances,
    # timedelta); the validators below check them, so pydantic must not coerce or copy them.
    accelerator: Any = "auto"
    strategy: Any = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    precision: str | None = None
    logger: Any = None
    callbacks: Any = None
    fast_dev_run: int | bool = False
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    limit_predict_batches: int | float | None = None
    overfit_batches: int | float = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: int | float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: bool | str | None = None
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    barebones: bool = False
    plugins: Any = None
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Any = None
    enable_autolog_hparams: bool = True
    model_registry: str | None = None
    suggest_integrations: bool = True
    # statetrain extension: framework messages as 'console' text or 'json' lines ('auto'/None: $STATETRAIN_LOG_FORMAT)
    log_format: str | None = None
    # statetrain extension: the event trace (engine.trace); None = 'step' next to the logs when there is a logger
    trace: Any = None
    # statetrain extension: re-run against a recorded trace and stop at the first divergence (TraceDivergence)
    verify_trace: Any = None
    # statetrain extension: a NaN/inf loss raises ('error'), skips the step ('skip'), warns ('warn'); None: no check
    on_nonfinite_loss: str | None = "error"

    # ------------------------------------------------------------------------------------------ public API
    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainerConfig:
        """Build and validate from `Trainer(**kwargs)`; raises MisconfigurationException (a ValueError) on bad input."""
        for name, value in kwargs.items():
            if name not in cls.model_fields:
                raise FlagTypeError(_unknown_flag_message(name, value))  # a TypeError too, as Python would raise
        try:
            return cls.model_validate(kwargs)
        except ValidationError as exc:
            raise _flag_error(exc) from None

    def check_implemented(self) -> None:
        """Raise NotImplementedError for the first flag that asks for a feature statetrain does not have yet."""
        for flag, (requested, feature) in _NOT_YET.items():
            value = getattr(self, flag)
            if requested(value):
                default = type(self).model_fields[flag].default
                raise NotImplementedError(
                    f"Trainer({flag}={value!r}): {feature} is not available in statetrain yet; "
                    f"leave {flag} at its default ({default!r}) for now."
                )

    def effective(self) -> RunSettings:
        """Resolve the None defaults exactly as Lightning's Trainer does; call check_implemented() first."""
        fast_dev_run = int(self.fast_dev_run)
        overfit = self.overfit_batches
        limits = [1.0 if v is None else v for v in self._limits()]
        if fast_dev_run:
            limits = [fast_dev_run] * 4
        if overfit > 0:
            limits[0] = limits[1] = overfit

        if fast_dev_run:
            max_epochs = 1
        elif self.max_epochs is None:
            # Lightning warns at fit time when it picks 1000 (PossibleUserWarning); the Trainer can do the same.
            max_epochs = 1000 if self.max_steps == -1 and self.max_time is None else -1
        else:
            max_epochs = self.max_epochs
        min_epochs = self.min_epochs
        if min_epochs is None:
            min_epochs = 1 if self.min_steps is not None else 0

        time_based = _is_time_based(self.val_check_interval)
        if fast_dev_run or time_based or self.val_check_interval is None:
            val_check_interval: int | float = 1.0
        else:
            val_check_interval = self.val_check_interval
        val_check_time = None
        if time_based and not fast_dev_run:
            val_check_time = _duration_seconds("val_check_interval", self.val_check_interval)

        if self.barebones or fast_dev_run:
            num_sanity_val_steps = 0
        else:
            num_sanity_val_steps = 2 if self.num_sanity_val_steps is None else self.num_sanity_val_steps
        if self.barebones:
            log_every_n_steps, enable_model_summary = 0, False
        else:
            log_every_n_steps = 50 if self.log_every_n_steps is None else self.log_every_n_steps
            enable_model_summary = True if self.enable_model_summary is None else self.enable_model_summary

        deterministic = False if self.deterministic is None else self.deterministic
        benchmark = False if deterministic and self.benchmark is None else self.benchmark
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, (list, tuple)):
            callbacks = list(callbacks)
        else:
            callbacks = [callbacks]

        return RunSettings(
            max_epochs=max_epochs,
            min_epochs=min_epochs,
            max_steps=fast_dev_run or self.max_steps,
            min_steps=self.min_steps,
            max_time_seconds=None if self.max_time is None else _duration_seconds("max_time", self.max_time),
            limit_train_batches=limits[0],
            limit_val_batches=limits[1],
            limit_test_batches=limits[2],
            limit_predict_batches=limits[3],
            overfit_batches=overfit,
            val_check_interval=val_check_interval,
            val_check_time_interval=val_check_time,
            check_val_every_n_epoch=1 if fast_dev_run else self.check_val_every_n_epoch,
            num_sanity_val_steps=num_sanity_val_steps,
            log_every_n_steps=log_every_n_steps,
            enable_model_summary=enable_model_summary,
            inference_mode=self.inference_mode,
            deterministic=deterministic,
            benchmark=benchmark,
            detect_anomaly=self.detect_anomaly,
            barebones=self.barebones,
            fast_dev_run=fast_dev_run,
            reload_dataloaders_every_n_epochs=self.reload_dataloaders_every_n_epochs,
            default_root_dir=os.fspath(self.default_root_dir) if self.default_root_dir else os.getcwd(),
            accelerator=self.accelerator,
            strategy=self.strategy,
            devices=self.devices,
            num_nodes=self.num_nodes,
            precision=self.precision or "32-true",
            accumulate_grad_batches=self.accumulate_grad_batches,
            gradient_clip_val=self.gradient_clip_val,
            gradient_clip_algorithm=self.gradient_clip_algorithm or "norm",
            use_distributed_sampler=self.use_distributed_sampler,
            sync_batchnorm=self.sync_batchnorm,
            enable_autolog_hparams=self.enable_autolog_hparams,
            callbacks=callbacks,
            logger=False if self.barebones else (True if self.logger is None else self.logger),
            enable_progress_bar=False if self.barebones else (
                True if self.enable_progress_bar is None else self.enable_progress_bar),
            profiler=self.profiler,
            log_format=self.log_format,
            trace=self.trace,
            verify_trace=self.verify_trace,
            on_nonfinite_loss=None if self.barebones else self.on_nonfinite_loss,
            plugins=self.plugins,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """All flags as JSON-safe values (objects become their class name), for trace headers."""
        return {name: _jsonable(getattr(self, name)) for name in type(self).model_fields}

    def info_messages(self) -> list[str]:
        """Lightning's informational lines about the batch-limit flags the user set to exactly 1 or 1.0 (and the
        fast_dev_run notice), in Lightning's words; the Trainer logs them when it is built."""
        fast = int(self.fast_dev_run)
        if fast:
            return [f"Running in `fast_dev_run` mode: will run the requested loop using {fast} batch(es). "
                    "Logging and checkpointing is suppressed."]
        names = ["limit_test_batches", "limit_predict_batches"]
        if not self.overfit_batches:
            names[:0] = ["limit_train_batches", "limit_val_batches"]
        if not _is_time_based(self.val_check_interval):
            names.append("val_check_interval")
        out = []
        for name in names:
            value = getattr(self, name)
            if _is_int(value) and value == 1:
                what = {"limit_train_batches": "1 batch per epoch will be used.",
                        "val_check_interval": "validation will run after every batch."}.get(
                            name, "1 batch will be used.")
                out.append(f"`Trainer({name}=1)` was configured so {what}")
            elif isinstance(value, float) and value == 1.0:
                what = {"limit_train_batches": "100% of the batches per epoch will be used.",
                        "val_check_interval": "validation will run at the end of the training epoch."}.get(
                            name, "100% of the batches will be used.")
                out.append(f"`Trainer({name}=1.0)` was configured so {what}.")  # sic: Lightning's double period
        return out

    def _limits(self) -> tuple[Any, Any, Any, Any]:
        return (self.limit_train_batches, self.limit_val_batches, self.limit_test_batches, self.limit_predict_batches)

    # ------------------------------------------------------------------------------------------ validators
    @field_validator("accelerator", mode="before")
    @classmethod
    def _v_accelerator(cls, value: Any) -> Any:
        expected = f"one of {', '.join(map(repr, ACCELERATORS))} or an Accelerator"
        if isinstance(value, str):
            if value not in ACCELERATORS:
                hint = " (HPU support lives in the lightning-habana package)" if value == "hpu" else ""
                _fail("accelerator", value, expected + hint)
            return value
        if not _is_plain_object(value):
            _fail("accelerator", value, expected, wrong_type=True)
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _v_strategy(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.lower()
            if name in _REMOVED_STRATEGIES:
                raise MisconfigurationException(f"Trainer(strategy={value!r}): {_REMOVED_STRATEGIES[name]}.")
            if name not in STRATEGIES:
                _fail("strategy", value, f"a Strategy instance or a registered name: {', '.join(STRATEGIES)}")
            return name
        if not _is_plain_object(value):
            _fail("strategy", value, "a strategy name such as 'auto' or 'ddp', or a Strategy instance", wrong_type=True)
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _v_devices(cls, value: Any) -> Any:
        expected = (
            "'auto', an int >= 1 (how many), -1 (all), a non-empty list of device indices, "
            "or a string such as '2', '-1' or '0,1'"
        )
        if isinstance(value, (list, tuple)):
            if not value:
                _fail("devices", value, expected + _NO_DEVICES)
            if not all(_is_int(i) for i in value):
                _fail("devices", value, expected, wrong_type=True)
            if any(i < 0 for i in value) or len(set(value)) != len(value):
                _fail("devices", value, expected + " (indices must be >= 0 and unique)")
            return [int(i) for i in value]
        if isinstance(value, str):
            text = value.strip()
            if text in ("auto", "-1"):
                return value
            parts = [p.strip() for p in text.split(",") if p.strip()] if "," in text else [text]
            if not parts or not all(p.isdigit() for p in parts):
                _fail("devices", value, expected)
            if len(set(map(int, parts))) != len(parts):
                _fail("devices", value, expected + " (indices must be unique)")
            if "," not in text and int(text) == 0:
                _fail("devices", value, expected + _NO_DEVICES)
            return value
        if not _is_int(value):
            _fail("devices", value, expected, wrong_type=True)
        if value == 0 or value < -1:
            _fail("devices", value, expected + (_NO_DEVICES if value == 0 else ""))
        return int(value)

    @field_validator("num_nodes", mode="before")
    @classmethod
    def _v_num_nodes(cls, value: Any) -> int | None:
        return _check_int("num_nodes", value, 1, "an int >= 1", optional=False)

    @field_validator("precision", mode="before")
    @classmethod
    def _v_precision(cls, value: Any) -> str | None:
        if value is None:
            return None
        accepted = f"one of {', '.join(map(repr, PRECISIONS))} (or the legacy 64, 32, 16, 'bf16')"
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            _fail("precision", value, accepted, wrong_type=True)
        if value in PRECISIONS:
            return value
        if value not in _PRECISION_ALIASES:
            _fail("precision", value, accepted)
        resolved = _PRECISION_ALIASES[value]
        if str(value) in ("16", "bf16"):
            warnings.warn(
                f"Trainer(precision={value!r}) is a legacy alias whose use is discouraged; "
                f"write precision={resolved!r} instead.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        return resolved

    @field_validator("logger", mode="before")
    @classmethod
    def _v_logger(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (list, tuple)):
            if all(_is_plain_object(v) for v in value):
                return value
        elif _is_plain_object(value):
            return value
        _fail("logger", value, "True/False/None, a Logger or a list of Loggers", wrong_type=True)

    @field_validator("callbacks", mode="before")
    @classmethod
    def _v_callbacks(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            if all(_is_plain_object(v) for v in value):
                return value
        elif _is_plain_object(value):
            return value
        _fail("callbacks", value, "None, a Callback or a list of Callbacks", wrong_type=True)

    @field_validator("fast_dev_run", mode="before")
    @classmethod
    def _v_fast_dev_run(cls, value: Any) -> int | bool:
        if isinstance(value, bool):
            return value
        return _check_int("fast_dev_run", value, 0, "True/False or an int >= 0 (batches to run)", optional=False)

    @field_validator("max_epochs", "max_steps", mode="before")
    @classmethod
    def _v_max(cls, value: Any, info: ValidationInfo) -> int | None:
        flag = info.field_name
        return _check_int(flag, value, -1, "-1 (infinite) or an int >= 0", optional=flag == "max_epochs")

    @field_validator("min_epochs", "min_steps", mode="before")
    @classmethod
    def _v_min(cls, value: Any, info: ValidationInfo) -> int | None:
        return _check_int(info.field_name, value, 0, "None or an int >= 0", optional=True)

    @field_validator("max_time", mode="before")
    @classmethod
    def _v_max_time(cls, value: Any) -> Any:
        if value is not None:
            _duration_seconds("max_time", value)
        return value

    @field_validator(
        "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches", mode="before"
    )
    @classmethod
    def _v_limit(cls, value: Any, info: ValidationInfo) -> int | float | None:
        if value is None:
            return None
        expected = "a float in [0.0, 1.0] (fraction of batches) or an int >= 0 (number of batches)"
        return _batch_limit(info.field_name, value, expected)

    @field_validator("overfit_batches", mode="before")
    @classmethod
    def _v_overfit(cls, value: Any) -> int | float:
        expected = "a float in [0.0, 1.0] (fraction of train batches) or an int >= 0 (number of train batches)"
        return _batch_limit("overfit_batches", value, expected)

    @field_validator("val_check_interval", mode="before")
    @classmethod
    def _v_val_check_interval(cls, value: Any) -> Any:
        if value is None:
            return None
        if _is_time_based(value):
            _duration_seconds("val_check_interval", value)
            return value
        expected = (
            "a float in [0.0, 1.0] (fraction of the train epoch), an int > 0 (every N train batches), "
            "or a time: 'DD:HH:MM:SS', a timedelta or a dict of timedelta kwargs"
        )
        return _batch_limit("val_check_interval", value, expected, allow_zero_int=False)

    @field_validator("check_val_every_n_epoch", mode="before")
    @classmethod
    def _v_check_val(cls, value: Any) -> int | None:
        return _check_int("check_val_every_n_epoch", value, 1, "None or an int >= 1", optional=True)

    @field_validator("num_sanity_val_steps", mode="before")
    @classmethod
    def _v_sanity(cls, value: Any) -> int | None:
        return _check_int("num_sanity_val_steps", value, -1, "None, -1 (all val batches) or an int >= 0", optional=True)

    @field_validator("log_every_n_steps", mode="before")
    @classmethod
    def _v_log_every(cls, value: Any) -> int | None:
        return _check_int("log_every_n_steps", value, 0, "None or an int >= 0", optional=True)

    @field_validator("enable_checkpointing", "enable_progress_bar", "enable_model_summary", "benchmark", mode="before")
    @classmethod
    def _v_optional_bool(cls, value: Any, info: ValidationInfo) -> bool | None:
        return _check_bool(info.field_name, value, optional=True)

    @field_validator(
        "inference_mode",
        "use_distributed_sampler",
        "detect_anomaly",
        "barebones",
        "sync_batchnorm",
        "enable_autolog_hparams",
        "suggest_integrations",
        mode="before",
    )
    @classmethod
    def _v_bool(cls, value: Any, info: ValidationInfo) -> bool | None:
        return _check_bool(info.field_name, value, optional=False)

    @field_validator("accumulate_grad_batches", mode="before")
    @classmethod
    def _v_accumulate(cls, value: Any) -> int | None:
        if isinstance(value, dict):
            raise FlagTypeError(
                f"Trainer(accumulate_grad_batches={value!r}): a schedule dict is not accepted since Lightning 2.0; "
                "pass an int >= 1 and use a GradientAccumulationScheduler callback for schedules."
            )
        return _check_int("accumulate_grad_batches", value, 1, "an int >= 1", optional=False)

    @field_validator("gradient_clip_val", mode="before")
    @classmethod
    def _v_clip_val(cls, value: Any) -> int | float | None:
        if value is None:
            return None
        expected = "an int or a float >= 0 (None or 0 disables clipping)"
        if not _is_number(value):
            _fail("gradient_clip_val", value, expected, wrong_type=True)
        if not value >= 0:  # also rejects NaN
            _fail("gradient_clip_val", value, expected)
        return int(value) if isinstance(value, numbers.Integral) else float(value)

    @field_validator("gradient_clip_algorithm", mode="before")
    @classmethod
    def _v_clip_algorithm(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            _fail("gradient_clip_algorithm", value, "'norm' or 'value' (or None for 'norm')", wrong_type=True)
        if value.lower() not in CLIP_ALGORITHMS:
            _fail("gradient_clip_algorithm", value, "'norm' or 'value' (or None for 'norm')")
        return value.lower()

    @field_validator("deterministic", mode="before")
    @classmethod
    def _v_deterministic(cls, value: Any) -> bool | str | None:
        if value is None or isinstance(value, bool) or value == "warn":
            return value
        _fail("deterministic", value, "True, False, 'warn' or None", wrong_type=not isinstance(value, str))

    @field_validator("on_nonfinite_loss", mode="before")
    @classmethod
    def _v_on_nonfinite_loss(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value in ("error", "skip", "warn")):
            return value
        _fail("on_nonfinite_loss", value, "'error', 'skip', 'warn' or None (no check)",
              wrong_type=not isinstance(value, str))

    @field_validator("log_format", mode="before")
    @classmethod
    def _v_log_format(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value in ("auto", "console", "json")):
            return value
        _fail("log_format", value, "None, 'auto', 'console' or 'json'", wrong_type=not isinstance(value, str))

    @field_validator("trace", mode="before")
    @classmethod
    def _v_trace(cls, value: Any) -> Any:
        from engine.trace.schema import LEVELS, TraceConfig

        expected = ("None (on at 'step' when there is a logger), False, True, 'epoch', 'step', 'full', a .jsonl file "
                    "path, or an engine.trace.TraceConfig")
        if value is None or value is False or isinstance(value, TraceConfig):
            return value
        if value is True:
            return TraceConfig()
        if isinstance(value, str) and value in LEVELS:
            return TraceConfig(level=value)
        if isinstance(value, os.PathLike) or (isinstance(value, str) and (
                value.endswith((".jsonl", ".json")) or "/" in value or os.sep in value)):
            return TraceConfig(path=os.fspath(value))
        if isinstance(value, str):
            close = difflib.get_close_matches(value, LEVELS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (a path must end in .jsonl or contain a '/')"
            raise MisconfigurationException(f"Trainer(trace={value!r}): expected {expected}{hint}")
        _fail("trace", value, expected, wrong_type=True)

    @field_validator("verify_trace", mode="before")
    @classmethod
    def _v_verify_trace(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            _fail("verify_trace", value, "None or the path of a trace.jsonl recorded by an earlier run",
                  wrong_type=True)
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise MisconfigurationException(
                f"Trainer(verify_trace={path!r}): no such file; pass the trace.jsonl an earlier run wrote (by "
                "default next to its logs, e.g. lightning_logs/version_0/trace.jsonl)")
        return path

    @field_validator("profiler", mode="before")
    @classmethod
    def _v_profiler(cls, value: Any) -> Any:
        expected = f"None, one of {', '.join(map(repr, PROFILERS))} or a Profiler instance"
        if value is None:
            return None
        if isinstance(value, str):
            if value.lower() not in PROFILERS:
                _fail("profiler", value, expected)
            return value.lower()
        if not _is_plain_object(value):
            _fail("profiler", value, expected, wrong_type=True)
        return value

    @field_validator("plugins", mode="before")
    @classmethod
    def _v_plugins(cls, value: Any) -> Any:
        items = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and not all(_is_plain_object(p) for p in items):
            _fail("plugins", value, "None, a plugin instance or a list of plugin instances", wrong_type=True)
        return value

    @field_validator("reload_dataloaders_every_n_epochs", mode="before")
    @classmethod
    def _v_reload(cls, value: Any) -> int | None:
        return _check_int("reload_dataloaders_every_n_epochs", value, 0, "an int >= 0 (0 = never)", optional=False)

    @field_validator("default_root_dir", mode="before")
    @classmethod
    def _v_root_dir(cls, value: Any) -> Any:
        if value is None or isinstance(value, (str, os.PathLike)):
            return value
        _fail("default_root_dir", value, "None, a str path/URL or an os.PathLike", wrong_type=True)

    @field_validator("model_registry", mode="before")
    @classmethod
    def _v_registry(cls, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        _fail("model_registry", value, "None or a model name string", wrong_type=True)

    @model_validator(mode="after")
    def _v_combinations(self) -> TrainerConfig:
        if self.check_val_every_n_epoch is None and isinstance(self.val_check_interval, float):
            raise MisconfigurationException(
                f"Trainer(check_val_every_n_epoch=None, val_check_interval={self.val_check_interval!r}): with "
                "check_val_every_n_epoch=None validation is purely batch-based, so val_check_interval must be an int "
                "(every N train batches) or a time; pass an int or set check_val_every_n_epoch."
            )
        if self.barebones:
            self._check_barebones()
        return self

    def _check_barebones(self) -> None:
        """Lightning's barebones mode turns off everything that costs speed; asking for one of them is a conflict."""
        conflicts = (
            ("enable_checkpointing", bool(self.enable_checkpointing), "checkpointing"),
            ("logger", self.logger is not None and self.logger is not False, "logging"),
            ("enable_progress_bar", bool(self.enable_progress_bar), "the progress bar"),
            ("log_every_n_steps", self.log_every_n_steps not in (None, 0), "logging"),
            ("enable_model_summary", bool(self.enable_model_summary), "the model summary"),
            ("num_sanity_val_steps", self.num_sanity_val_steps not in (None, 0), "sanity checking"),
            ("fast_dev_run", bool(self.fast_dev_run), "the development run"),
            ("detect_anomaly", self.detect_anomaly, "anomaly detection"),
            ("profiler", self.profiler is not None, "profiling"),
        )
        for flag, requested, feature in conflicts:
            if requested:
                value = getattr(self, flag)
                raise MisconfigurationException(
                    f"Trainer(barebones=True, {flag}={value!r}): barebones mode disables {feature} because it costs "
                    f"raw speed; drop {flag}=... or set barebones=False."
                )


# -------------------------------------------------------------------------------------------------- error helpers
def _unknown_flag_message(name: str, value: Any) -> str:
    if name in _REMOVED_FLAGS:
        off = _REMOVED_FLAGS_OFF.get(name)
        fix = (off[1] if off is not None and off[0](value) else _REMOVED_FLAGS[name]).format(value=value)
        return f"Trainer({name}={value!r}): '{name}' is a Lightning 1.x flag that was removed in Lightning 2.0; {fix}."
    close = difflib.get_close_matches(name, TrainerConfig.model_fields, n=1, cutoff=0.6)
    if close:
        return f"Trainer({name}={value!r}): unknown flag '{name}'; did you mean '{close[0]}'?"
    valid = ", ".join(TrainerConfig.model_fields)
    return f"Trainer({name}={value!r}): unknown flag '{name}'; valid flags are: {valid}."


def _flag_error(exc: ValidationError) -> MisconfigurationException:
    """Turn pydantic's ValidationError back into our own exception(s), keeping the first one's class."""
    errors: list[Exception] = []
    for err in exc.errors():
        original = err.get("ctx", {}).get("error")
        if isinstance(original, MisconfigurationException):
            errors.append(original)
        else:  # a pydantic-level check (should not happen: every field has a before-validator)
            flag = ".".join(str(part) for part in err["loc"]) or "Trainer"
            errors.append(MisconfigurationException(f"Trainer({flag}={err.get('input')!r}): {err['msg']}"))
    if len(errors) == 1:
        return errors[0]
    return type(errors[0])("\n".join(str(e) for e in errors))


def _jsonable(value: Any) -> Any:
    """Plain JSON values pass through; containers recurse; timedelta/paths become str; other objects their class."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return type(value).__name__
