"""Storage and reduction behind `LightningModule.log` / `log_dict`, and the trainer's three metric dicts.

One `ResultCollection` holds everything logged during one stage run (the fit loop's training part, or one
evaluation stage). It is independent of the trainer: the loop feeds it batches and hook names, the module feeds it
values, and `LoggedMetrics` turns its contents into `trainer.callback_metrics` / `logged_metrics` /
`progress_bar_metrics` with Lightning 2.x naming rules.

Hot path: a repeat `log` call of the same (hook, name, arguments) is one dict lookup on a cached, validated entry, a
type check and a list append. Nothing on that path reads a tensor's value (no `.item()`, `float()`, `.cpu()`):
on-epoch values are kept as detached tensors and reduced only when an epoch value is asked for, and Python numbers
are produced only when `LoggedMetrics.progress_bar_metrics` is read.

A logged `torchmetrics.Metric` (or each metric of a `MetricCollection` given to `log_dict`) follows Lightning: the
step value is what the metric's forward returned for the batch, the epoch value is its `compute()`, and `reset()`
empties it at each epoch end. torchmetrics is never imported unless such an object is logged; the check runs only
for values that are neither tensors nor numbers, and a repeat log of the same Metric is one identity test.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from engine.errors import MisconfigurationException, user_stacklevel

__all__ = [
    "FX_DEFAULTS",
    "FxOptions",
    "LoggedMetrics",
    "Metrics",
    "ResultCollection",
    "check_fx",
    "extract_batch_size",
    "metric_collection_items",
]


# --------------------------------------------------------------------------------------------------------------------
# Which hooks may log, and with which on_step / on_epoch values (Lightning's `_FxValidator.functions`).
# --------------------------------------------------------------------------------------------------------------------


class FxOptions(NamedTuple):
    """Logging defaults and allowed values for one hook."""

    default_on_step: bool
    default_on_epoch: bool
    allowed_on_step: tuple[bool, ...]
    allowed_on_epoch: tuple[bool, ...]


_PER_STEP = FxOptions(True, False, (False, True), (False, True))  # training batch hooks
_PER_EVAL_STEP = FxOptions(False, True, (False, True), (False, True))  # validation / test batch hooks
_ONCE = FxOptions(False, True, (False,), (True,))  # start / epoch hooks: epoch-level values only

FX_DEFAULTS: dict[str, FxOptions | None] = {
    # training batch and optimization hooks
    "training_step": _PER_STEP,
    "on_train_batch_start": _PER_STEP,
    "on_train_batch_end": _PER_STEP,
    "on_before_backward": _PER_STEP,
    "backward": _PER_STEP,
    "on_after_backward": _PER_STEP,
    "on_before_optimizer_step": _PER_STEP,
    "optimizer_step": _PER_STEP,
    "configure_gradient_clipping": _PER_STEP,
    "clip_gradients": _PER_STEP,
    "on_before_zero_grad": _PER_STEP,
    "optimizer_zero_grad": _PER_STEP,
    # evaluation batch hooks
    "validation_step": _PER_EVAL_STEP,
    "test_step": _PER_EVAL_STEP,
    "on_validation_batch_start": _PER_EVAL_STEP,
    "on_validation_batch_end": _PER_EVAL_STEP,
    "on_test_batch_start": _PER_EVAL_STEP,
    "on_test_batch_end": _PER_EVAL_STEP,
    # once per stage / per epoch
    "on_train_start": _ONCE,
    "on_train_epoch_start": _ONCE,
    "on_train_epoch_end": _ONCE,
    "on_validation_start": _ONCE,
    "on_validation_epoch_start": _ONCE,
    "on_validation_epoch_end": _ONCE,
    "on_test_start": _ONCE,
    "on_test_epoch_start": _ONCE,
    "on_test_epoch_end": _ONCE,
    # hooks that cannot log
    "on_fit_start": None,
    "on_fit_end": None,
    "on_sanity_check_start": None,
    "on_sanity_check_end": None,
    "on_train_end": None,
    "on_validation_end": None,
    "on_test_end": None,
    "on_predict_start": None,
    "on_predict_end": None,
    "on_predict_epoch_start": None,
    "on_predict_epoch_end": None,
    "on_predict_batch_start": None,
    "on_predict_batch_end": None,
    "predict_step": None,
    "lr_scheduler_step": None,
    "on_before_batch_transfer": None,
    "transfer_batch_to_device": None,
    "on_after_batch_transfer": None,
    "on_exception": None,
    "state_dict": None,
    "load_state_dict": None,
    "on_save_checkpoint": None,
    "on_load_checkpoint": None,
    "setup": None,
    "teardown": None,
    "prepare_data": None,
    "configure_model": None,
    "configure_sharded_model": None,
    "configure_optimizers": None,
    "configure_callbacks": None,
    "train_dataloader": None,
    "val_dataloader": None,
    "test_dataloader": None,
    "predict_dataloader": None,
    "on_validation_model_zero_grad": None,
    "on_validation_model_eval": None,
    "on_validation_model_train": None,
    "on_test_model_eval": None,
    "on_test_model_train": None,
    "on_predict_model_eval": None,
}


def check_fx(fx: str, on_step: bool | None, on_epoch: bool | None, *, name: str | None = None) -> tuple[bool, bool]:
    """Resolve `on_step` / `on_epoch` for a `self.log` call made from hook `fx`; raise if that hook may not log so.

    `name` (the logged key) only makes the error messages more precise.
    """
    call = f"self.log({name!r}, ...)" if name is not None else "self.log(...)"
    if fx not in FX_DEFAULTS:
        raise MisconfigurationException(
            f"{call} was called from {fx!r}, which is not a hook statetrain knows how to log from. Log from a "
            "Lightning hook such as 'training_step' or 'on_train_epoch_end', or register the hook with "
            f"engine.results.FX_DEFAULTS[{fx!r}] = FxOptions(...)."
        )
    options = FX_DEFAULTS[fx]
    if options is None:
        raise MisconfigurationException(
            f"{call} called from {fx!r}: this hook cannot log. Log from a step or epoch hook instead (for example "
            "'training_step', 'validation_step' or 'on_train_epoch_end'), or write to the logger directly with "
            "self.logger.experiment."
        )
    step = options.default_on_step if on_step is None else on_step
    epoch = options.default_on_epoch if on_epoch is None else on_epoch
    if step not in options.allowed_on_step:
        raise MisconfigurationException(
            f"{call} called from {fx!r} with on_step={step!r}: this hook only allows on_step in "
            f"{options.allowed_on_step} because it runs once per epoch or stage. Drop the on_step argument."
        )
    if epoch not in options.allowed_on_epoch:
        raise MisconfigurationException(
            f"{call} called from {fx!r} with on_epoch={epoch!r}: this hook only allows on_epoch in "
            f"{options.allowed_on_epoch}. Drop the on_epoch argument."
        )
    if not step and not epoch:
        raise MisconfigurationException(
            f"{call} called from {fx!r} with on_step=False, on_epoch=False would record nothing. "
            "Set on_step=True (per-batch value) and/or on_epoch=True (value reduced over the epoch)."
        )
    return bool(step), bool(epoch)


# --------------------------------------------------------------------------------------------------------------------
# Batch-size inference (Lightning's `utilities/data.py::extract_batch_size`).
# --------------------------------------------------------------------------------------------------------------------

_BATCH_SIZE_HELP = (
    "Either simplify the batch structure so that a tensor with the batch in its first dimension can be found, or "
    "pass the batch size explicitly with self.log(..., batch_size=N)."
)


def _tensor_batch_sizes(obj: Any) -> Iterator[int]:
    """Yield `size(0)` of every tensor in `obj` (0-dim tensors count as 1), depth-first in iteration order."""
    if isinstance(obj, Tensor):
        yield 1 if obj.ndim == 0 else obj.size(0)
    elif isinstance(obj, (str, bytes)) or hasattr(obj, "__array__"):
        return  # text and numpy-like arrays hold no tensors; iterating them element by element would be slow
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _tensor_batch_sizes(item)
    elif isinstance(obj, Iterable):
        for item in obj:
            yield from _tensor_batch_sizes(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from _tensor_batch_sizes(getattr(obj, field.name))


def extract_batch_size(batch: Any) -> int:
    """Infer the batch size as the first dimension of the first tensor found in `batch` (0-dim tensors give 1).

    Recurses into tensors, mappings, iterables and dataclasses. Warns if tensors disagree, raises if there is none.
    """
    found: int | None = None
    try:
        for size in _tensor_batch_sizes(batch):
            if found is None:
                found = size
            elif size != found:
                warnings.warn(
                    f"Inferring the batch size from an ambiguous batch: the first tensor found has {found} rows, "
                    f"another has {size}. Using {found}. Pass self.log(..., batch_size=N) to avoid a wrong "
                    "epoch average.",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
                break
    except RecursionError as err:
        message = f"Could not infer the batch size: the batch is nested too deeply. {_BATCH_SIZE_HELP}"
        raise RecursionError(message) from err
    if found is None:
        raise MisconfigurationException(
            f"Could not infer the batch size: no tensor found in a batch of type {type(batch).__name__}. "
            f"{_BATCH_SIZE_HELP}"
        )
    return found


# --------------------------------------------------------------------------------------------------------------------
# One logged key
# --------------------------------------------------------------------------------------------------------------------

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FUNCS = {
    torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min", sum: "sum", max: "max", min: "min",
}  # fmt: skip
_COMPACT_EVERY = 1024  # on-epoch values kept as a list are folded into a running total this often (bounds memory)
_DATALOADER_SUFFIX = "/dataloader_idx_{}"
_F32 = torch.float32
_F64 = torch.float64

# the arguments that must agree when one key is logged again (batch_size may change freely)
_CONFIG_FIELDS = (
    "prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "enable_graph", "sync_dist", "sync_dist_group",
    "add_dataloader_idx", "dataloader_idx", "metric_attribute", "rank_zero_only",
)  # fmt: skip


def _parse_reduce_fx(name: str, reduce_fx: Any) -> str:
    """Map `reduce_fx` to one of 'mean', 'sum', 'max', 'min', or raise."""
    found = _REDUCE_NAMES.get(reduce_fx.lower()) if isinstance(reduce_fx, str) else _REDUCE_FUNCS.get(reduce_fx)
    if found is None:
        raise MisconfigurationException(
            f"self.log({name!r}, ..., reduce_fx={reduce_fx!r}) is not supported: use one of 'mean', 'sum', 'max', "
            "'min' (or torch.mean / torch.sum / torch.max / torch.min). For a custom reduction, log a "
            "torchmetrics.Metric instead."
        )
    return found


def _default_float() -> torch.dtype:
    """Dtype logged values are kept in: the default float dtype, but never below float32."""
    dtype = torch.get_default_dtype()
    return dtype if dtype in (_F32, _F64) else _F32


def _bad_value(name: str, value: Any) -> MisconfigurationException:
    """The error for a value `self.log` cannot store."""
    if isinstance(value, Mapping):
        return MisconfigurationException(
            f"self.log({name!r}, value) got a dict; self.log stores one scalar per key. "
            f"Use self.log_dict(value) to log each entry under its own key."
        )
    if isinstance(value, Tensor):
        return MisconfigurationException(
            f"self.log({name!r}, value) got a tensor of shape {tuple(value.shape)} ({value.numel()} elements); only "
            f"single-element tensors can be logged. Reduce it first, e.g. self.log({name!r}, value.mean())."
        )
    return MisconfigurationException(
        f"self.log({name!r}, value) got a value of type {type(value).__name__}; expected a Python number, a "
        "single-element torch.Tensor or a torchmetrics.Metric."
    )


class _Entry:
    """Validated configuration and stored values of one logged key (one hook, one name, one dataloader)."""

    __slots__ = (
        "fx", "name", "config", "prog_bar", "logger", "on_step", "on_epoch", "reduce", "is_mean", "enable_graph",
        "sync", "sync_group", "dataloader_idx", "plain_key", "step_key", "epoch_key",
        "step_value", "values", "sizes", "acc", "total", "computed", "warned_cast", "metric", "metric_logged",
    )  # fmt: skip

    def __init__(self, fx: str, name: str, config: dict[str, Any], suffix: str) -> None:
        self.fx = fx
        self.name = name
        self.config = config
        self.prog_bar: bool = config["prog_bar"]
        self.logger: bool = config["logger"]
        self.on_step: bool = config["on_step"]
        self.on_epoch: bool = config["on_epoch"]
        self.reduce: str = config["reduce_fx"]
        self.is_mean = self.reduce == "mean"
        self.enable_graph: bool = config["enable_graph"]
        self.sync: bool = config["sync_dist"] and not config["rank_zero_only"]
        self.sync_group: Any = config["sync_dist_group"]
        self.dataloader_idx: int | None = config["dataloader_idx"]
        forked = self.on_step and self.on_epoch
        self.plain_key = name + suffix
        self.step_key = (name + "_step" if forked else name) + suffix
        self.epoch_key = (name + "_epoch" if forked else name) + suffix
        self.warned_cast = False
        self.metric: Any = None  # the torchmetrics.Metric logged under this key, if one was
        self.clear()

    def clear(self) -> None:
        """Forget every value (a new epoch or evaluation run); the configuration stays."""
        self.step_value: Tensor | None = None
        self.values: list[Tensor] = []
        self.sizes: list[int] = []
        self.acc: Tensor | None = None  # reduced value of the compacted part (weighted sum for mean)
        self.total = 0  # sum of batch sizes of the compacted part (mean only)
        self.computed: Tensor | None = None  # cached epoch value, dropped on every new value
        self.metric_logged = False  # the Metric was logged since the last clear (its compute() is meaningful)

    def compact(self) -> None:
        """Fold the pending on-epoch values into the running reduction (one stack, no host sync)."""
        values = self.values
        if not values:
            return
        if len(values) == 1:
            stacked = values[0]
        else:
            device = values[0].device
            if any(v.device != device for v in values):  # numbers (CPU) mixed with accelerator tensors in one key
                device = next((v.device for v in values if v.device.type != "cpu"), device)
                values = [v.to(device) for v in values]
            stacked = torch.stack(values)
        acc = self.acc
        if self.is_mean:
            sizes = self.sizes
            if sizes.count(sizes[0]) == len(sizes):  # common case: one batch size, no host-to-device copy
                part = stacked.sum() * sizes[0]
            else:
                weights = torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)
                part = (stacked * weights).sum()
            self.total += sum(sizes)
            acc = part if acc is None else acc + part
        elif self.reduce == "sum":
            part = stacked.sum()
            acc = part if acc is None else acc + part
        elif self.reduce == "max":
            part = stacked.max()
            acc = part if acc is None else torch.maximum(acc, part)
        else:
            part = stacked.min()
            acc = part if acc is None else torch.minimum(acc, part)
        self.acc = acc
        self.values = []
        self.sizes = []

    def compute(self, sync: Callable[[Tensor, str, Any], Tensor] | None) -> Tensor | None:
        """The epoch value (None if nothing was logged on_epoch since the last reset); reduced across processes
        with `sync(tensor, reduce_op, group)` when this key asked for it."""
        if self.computed is not None:
            return self.computed
        if self.metric is not None:
            return self._compute_metric()
        self.compact()
        acc = self.acc
        if acc is None:
            return None
        if self.sync and sync is not None:
            if self.is_mean:  # weighted sums and batch-size totals both add up across processes
                total = torch.tensor(self.total, dtype=acc.dtype, device=acc.device)
                value = sync(acc, "sum", self.sync_group) / sync(total, "sum", self.sync_group)
            else:
                value = sync(acc, self.reduce, self.sync_group)
        else:
            value = acc / self.total if self.is_mean else acc
        self.computed = value
        return value

    def _compute_metric(self) -> Tensor | None:
        """The logged Metric's `compute()` over every update since its last reset (Lightning's epoch value); the
        Metric syncs its own states across processes."""
        if not self.metric_logged:
            return None
        value = self.metric.compute()
        if not isinstance(value, Tensor):
            raise MisconfigurationException(
                f"self.log({self.name!r}, metric): {type(self.metric).__name__}.compute() returned a "
                f"{type(value).__name__}; a logged torchmetrics.Metric must compute a tensor. Log the entries of "
                "its result with self.log_dict(...) instead.")
        self.computed = value if self.enable_graph else value.detach()
        return self.computed

    def log_metric(self, metric: Any) -> None:
        """Record one `self.log(name, metric)` call: the step value is what the Metric's last forward returned (the
        value the user got back), the epoch value is its `compute()` when asked for."""
        self.metric = metric
        self.metric_logged = True
        self.computed = None
        if self.on_step:
            cache = getattr(metric, "_forward_cache", None)  # where torchmetrics keeps forward's batch value
            if isinstance(cache, Tensor):
                self.step_value = cache if self.enable_graph else cache.detach()


def _is_metric(value: Any) -> bool:
    """Whether `value` is a torchmetrics.Metric; torchmetrics is imported only if a base class comes from it."""
    if not any(cls.__module__.startswith("torchmetrics") for cls in type(value).__mro__):
        return False
    from torchmetrics import Metric

    return isinstance(value, Metric)


def metric_collection_items(dictionary: Any) -> Mapping[str, Any] | None:
    """`{name: Metric}` of a torchmetrics.MetricCollection passed to `log_dict` (None for anything else), with the
    names Lightning logs (no base prefix) and shared compute-group states left in place."""
    if not any(cls.__module__.startswith("torchmetrics") for cls in type(dictionary).__mro__):
        return None
    from torchmetrics import MetricCollection

    if not isinstance(dictionary, MetricCollection):
        return None
    return dict(dictionary.items(keep_base=False, copy_state=False))


# --------------------------------------------------------------------------------------------------------------------
# The collection
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Metrics:
    """Logged values keyed by their public names: for callbacks/monitors, for loggers, for the progress bar."""

    callback: dict[str, Tensor]
    log: dict[str, Tensor]
    pbar: dict[str, Tensor]


class ResultCollection:
    """All values logged during one stage run: the fit loop's training part, or one evaluation stage.

    `sync_fn`, when set, is called as `sync_fn(tensor, reduce_op=..., group=...)` to reduce `sync_dist=True` values
    across processes; `device` is where those tensors are moved first (Python numbers are stored on the CPU).
    """

    def __init__(
        self, training: bool, *, device: torch.device | str | None = None, sync_fn: Callable[..., Tensor] | None = None
    ) -> None:
        self.training = training
        self.device = device
        self.sync_fn = sync_fn
        self._entries: dict[tuple[str, str, int | None], _Entry] = {}  # storage key -> entry, in first-log order
        self._fast: dict[tuple, _Entry] = {}  # raw call arguments -> validated entry
        self._batch: Any = None
        self._batch_size: int | None = None  # inferred batch size of the current batch, cached on first need
        self._dataloader_idx: int | None = None  # only set while several dataloaders are evaluated
        self._in_batches = False  # between the epoch's first set_batch and epoch_end_reached (Lightning's step phase)

    # ---- loop-facing --------------------------------------------------------------------------------------------

    def set_batch(self, batch: Any, dataloader_idx: int = 0, num_dataloaders: int = 1) -> None:
        """Register the current batch (its size is inferred only if a logged value needs it)."""
        self._batch = batch
        self._batch_size = None
        self._dataloader_idx = dataloader_idx if num_dataloaders > 1 else None
        self._in_batches = True

    def batch_end(self) -> None:
        """Drop the reference to the current batch; call after `LoggedMetrics.update_step`."""
        self._batch = None
        self._batch_size = None
        self._dataloader_idx = None

    def epoch_end_reached(self) -> None:
        """All batches of the epoch ran: from now on live reads see epoch values (call before the epoch-end hooks)."""
        self.batch_end()
        self._in_batches = False

    def reset(self) -> None:
        """Drop every logged value (new training epoch / new evaluation run); validated key configurations stay.
        A logged torchmetrics.Metric is `reset()` too, as Lightning does at each epoch end."""
        for entry in self._entries.values():
            if entry.metric is not None and entry.metric_logged:
                entry.metric.reset()
            entry.clear()
        self.batch_end()
        self._in_batches = False

    # ---- module-facing ------------------------------------------------------------------------------------------

    def log(
        self,
        fx: str,
        name: str,
        value: Any,
        *,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Store `value` under `name` as logged from hook `fx` (Lightning's `self.log` semantics)."""
        sig = (
            fx, name, self._dataloader_idx, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist,
            sync_dist_group, add_dataloader_idx, metric_attribute, rank_zero_only,
        )  # fmt: skip
        try:
            entry = self._fast.get(sig)
        except TypeError:  # an unhashable argument: validate on every call instead of caching
            entry = self._register(sig, cache=False)
        if entry is None:
            entry = self._register(sig, cache=True)

        # value -> 0-dim floating tensor that nothing else will modify
        if isinstance(value, Tensor):
            tensor = value
            if tensor.ndim:
                if tensor.numel() != 1:
                    raise _bad_value(name, value)
                tensor = tensor.reshape(())
            dtype = tensor.dtype
            if dtype is _F32 or dtype is _F64:
                # leaves (parameters, buffers, anything under no_grad) and views may be changed in place later
                if value.is_leaf or value._is_view():
                    tensor = tensor.detach().clone() if not enable_graph else tensor.clone()
                elif not enable_graph:
                    tensor = tensor.detach()
            else:
                if not entry.warned_cast and not tensor.is_floating_point():
                    entry.warned_cast = True
                    warnings.warn(
                        f"self.log({name!r}, ...) in {fx!r} got a {dtype} tensor; logged values are reduced as "
                        f"floating point, so it is converted to {_default_float()}. Convert it yourself "
                        "(value.float()) to silence this warning.",
                        UserWarning,
                        stacklevel=user_stacklevel(),
                    )
                tensor = tensor.to(_default_float()) if enable_graph else tensor.detach().to(_default_float())
        elif type(value) in (float, int, bool) or isinstance(value, numbers.Real):
            # kept on the CPU: copying a Python number to an accelerator would block the host
            tensor = torch.tensor(value, dtype=_default_float())
        elif (value is entry.metric and value is not None) or _is_metric(value):  # later calls: one identity check
            entry.log_metric(value)
            return
        else:
            raise _bad_value(name, value)

        if entry.on_step:
            if entry.sync and self.sync_fn is not None:
                entry.step_value = self._sync(tensor, entry.reduce, entry.sync_group)
            else:
                entry.step_value = tensor
        if entry.on_epoch:
            values = entry.values
            values.append(tensor.detach() if enable_graph else tensor)
            if entry.is_mean:
                if batch_size is None:
                    batch_size = self._batch_size
                    if batch_size is None:
                        batch_size = self._infer_batch_size()
                entry.sizes.append(batch_size)
            entry.computed = None
            if len(values) >= _COMPACT_EVERY:
                entry.compact()

    def log_dict(
        self,
        fx: str,
        dictionary: Mapping[str, Any],
        *,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log every entry of `dictionary` with the same arguments (Lightning's `self.log_dict`); a
        torchmetrics.MetricCollection logs each of its metrics."""
        if not isinstance(dictionary, Mapping):
            dictionary = metric_collection_items(dictionary) or dictionary
        if not isinstance(dictionary, Mapping):
            raise MisconfigurationException(
                f"self.log_dict(...) in {fx!r} got a {type(dictionary).__name__}; expected a dict of name -> value. "
                "Use self.log(name, value) for a single value."
            )
        for name, value in dictionary.items():
            self.log(
                fx, name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                sync_dist_group=sync_dist_group, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
                rank_zero_only=rank_zero_only,
            )  # fmt: skip

    # ---- readers ------------------------------------------------------------------------------------------------

    def step_metrics(self) -> Metrics:
        """Latest per-step values of the current dataloader (kept until `reset`, as Lightning does)."""
        callback: dict[str, Tensor] = {}
        log: dict[str, Tensor] = {}
        pbar: dict[str, Tensor] = {}
        training = self.training
        dataloader_idx = self._dataloader_idx
        for entry in self._entries.values():
            value = entry.step_value
            if value is None or entry.dataloader_idx != dataloader_idx:
                continue
            key = entry.step_key
            if entry.logger:
                log[key] = value
            if training:  # evaluation step values never reach the callback metrics
                callback[entry.plain_key] = value
                callback[key] = value
            if entry.prog_bar:
                pbar[key] = value
        return Metrics(callback, log, pbar)

    def epoch_metrics(self) -> Metrics:
        """Reduce every on_epoch value logged since the last `reset` (all dataloaders)."""
        callback: dict[str, Tensor] = {}
        log: dict[str, Tensor] = {}
        pbar: dict[str, Tensor] = {}
        sync = self._sync if self.sync_fn is not None else None
        for entry in self._entries.values():
            if not entry.on_epoch:
                continue
            value = entry.compute(sync)
            if value is None:
                continue
            key = entry.epoch_key
            if entry.logger:
                log[key] = value
            callback[entry.plain_key] = value
            callback[key] = value
            if entry.prog_bar:
                pbar[key] = value
        return Metrics(callback, log, pbar)

    def live_metrics(self) -> Metrics:
        """What a reader sees right now: step values while batches run, epoch values before and after them."""
        return self.step_metrics() if self._in_batches else self.epoch_metrics()

    def dataloader_outputs(self, num_dataloaders: int) -> list[dict[str, Tensor]]:
        """Per-dataloader logger dicts of the epoch values, as `trainer.validate/test` return them."""
        outputs: list[dict[str, Tensor]] = [{} for _ in range(max(num_dataloaders, 1))]
        shared: dict[str, Tensor] = {}  # logged outside the dataloader loop (or with a single dataloader)
        for entry in self._entries.values():
            if not (entry.on_epoch and entry.logger):
                continue
            value = entry.compute(self._sync if self.sync_fn is not None else None)
            if value is None:
                continue
            idx = entry.dataloader_idx
            if idx is None:
                shared[entry.epoch_key] = value
            elif idx < len(outputs):
                outputs[idx][entry.epoch_key] = value
        for output in outputs:
            output.update(shared)
        return outputs

    # ---- state ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Every key's configuration and accumulated values (tensors and plain types only: loadable with
        `torch.load(weights_only=True)`). The `sync_dist_group` of a key is not saved (a group is not data)."""
        entries = []
        for (fx, name, dl_idx), entry in self._entries.items():  # not compacted: a resumed epoch sums alike
            if entry.metric is not None:  # a Metric's state lives in the Metric; the key re-registers when logged
                continue
            config = {k: v for k, v in entry.config.items() if k != "sync_dist_group"}
            entries.append({"fx": fx, "name": name, "dataloader_idx": dl_idx, "config": config,
                            "step_value": entry.step_value, "values": list(entry.values),
                            "sizes": list(entry.sizes), "acc": entry.acc, "total": entry.total})
        return {"training": self.training, "in_batches": self._in_batches, "entries": entries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned (the keys' configurations and their running values)."""
        if bool(state["training"]) != self.training:
            kinds = ("evaluation", "training")
            raise ValueError(f"ResultCollection.load_state_dict: the state is of a {kinds[bool(state['training'])]} "
                             f"collection, this one is {kinds[self.training]}")
        self._entries = {}
        self._fast = {}
        for item in state["entries"]:
            config = {**item["config"], "sync_dist_group": None}
            dl_idx = item["dataloader_idx"]
            use_suffix = config["add_dataloader_idx"] and config["dataloader_idx"] is not None
            entry = _Entry(item["fx"], item["name"], config,
                           _DATALOADER_SUFFIX.format(config["dataloader_idx"]) if use_suffix else "")
            entry.step_value, entry.acc, entry.total = item["step_value"], item["acc"], int(item["total"])
            entry.values, entry.sizes = list(item["values"]), [int(n) for n in item["sizes"]]
            self._entries[(item["fx"], item["name"], dl_idx)] = entry
        self.batch_end()
        self._in_batches = bool(state["in_batches"])

    # ---- internals ----------------------------------------------------------------------------------------------

    def _register(self, sig: tuple, cache: bool) -> _Entry:
        """Validate a call's arguments (first call of this argument combination) and find or create its entry."""
        (fx, name, dataloader_idx, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist,
         sync_dist_group, add_dataloader_idx, metric_attribute, rank_zero_only) = sig  # fmt: skip
        if not isinstance(name, str):
            raise MisconfigurationException(
                f"self.log(name, ...) in {fx!r} got a name of type {type(name).__name__} ({name!r}); names must be str."
            )
        on_step, on_epoch = check_fx(fx, on_step, on_epoch, name=name)
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"self.log({name!r}, ...) in {fx!r}: the name must not contain '/dataloader_idx_' while "
                "add_dataloader_idx=True, because the dataloader index is appended automatically. Remove it from "
                "the name, or pass add_dataloader_idx=False."
            )
        config = {
            "prog_bar": bool(prog_bar),
            "logger": True if logger is None else bool(logger),
            "on_step": on_step,
            "on_epoch": on_epoch,
            "reduce_fx": _parse_reduce_fx(name, reduce_fx),
            "enable_graph": bool(enable_graph),
            "sync_dist": bool(sync_dist),
            "sync_dist_group": sync_dist_group,
            "add_dataloader_idx": bool(add_dataloader_idx),
            "dataloader_idx": dataloader_idx,
            "metric_attribute": metric_attribute,
            "rank_zero_only": bool(rank_zero_only),
        }
        key = (fx, name, dataloader_idx if add_dataloader_idx else None)
        entry = self._entries.get(key)
        if entry is None:
            use_suffix = add_dataloader_idx and dataloader_idx is not None
            entry = _Entry(fx, name, config, _DATALOADER_SUFFIX.format(dataloader_idx) if use_suffix else "")
            self._entries[key] = entry
        elif entry.config != config:
            diffs = ", ".join(
                f"{field}={entry.config[field]!r} before, {config[field]!r} now"
                for field in _CONFIG_FIELDS
                if entry.config[field] != config[field]
            )
            hint = (
                " With add_dataloader_idx=False every dataloader needs its own name."
                if entry.config["dataloader_idx"] != dataloader_idx
                else ""
            )
            raise MisconfigurationException(
                f"self.log({name!r}, ...) was called twice in {fx!r} with different arguments ({diffs}). Log a key "
                f"with the same arguments every time, or use a different name.{hint}"
            )
        if cache:
            self._fast[sig] = entry
        return entry

    def _sync(self, tensor: Tensor, reduce_op: str, group: Any) -> Tensor:
        """Reduce `tensor` across processes with `sync_fn` (on `device` if set); it gets a copy it may change."""
        moved = tensor.to(self.device) if self.device is not None else tensor
        sync_fn: Callable[..., Tensor] = self.sync_fn  # type: ignore[assignment]  # only called when set
        return sync_fn(moved.clone() if moved is tensor else moved, reduce_op=reduce_op, group=group)

    def _infer_batch_size(self) -> int:
        """Batch size of the current batch for weighting epoch means: inferred once per batch, 1 outside batches."""
        if self._batch is None:
            return 1
        size = extract_batch_size(self._batch)
        self._batch_size = size
        return size

    def __repr__(self) -> str:
        names = ", ".join(f"{fx}:{name}" for fx, name, _ in self._entries)
        return f"ResultCollection(training={self.training}, keys=[{names}])"


# --------------------------------------------------------------------------------------------------------------------
# The trainer's metric dicts
# --------------------------------------------------------------------------------------------------------------------


def _to_python(values: list[Tensor]) -> list[float]:
    """Convert tensors to Python numbers with one host sync when they share a device and dtype."""
    if len(values) > 1:
        first = values[0]
        if all(v.device == first.device and v.dtype == first.dtype for v in values):
            return torch.stack([v.detach() for v in values]).tolist()  # host sync (reader asked for numbers)
    return [v.detach().item() for v in values]  # host sync


class LoggedMetrics:
    """The trainer's `callback_metrics`, `logged_metrics` and `progress_bar_metrics` (Lightning's logger connector).

    The dicts persist across epochs and stages until `reset`. While a collection is attached, reading a property
    also merges what that collection holds right now, so hooks see the values logged earlier in the same batch/epoch.
    """

    def __init__(self) -> None:
        self._callback: dict[str, Tensor] = {}
        self._logged: dict[str, Tensor] = {}
        self._pbar: dict[str, Tensor | float] = {}
        self.results: ResultCollection | None = None

    def attach(self, results: ResultCollection | None) -> None:
        """Make `results` the running stage's collection (None outside any loop), read live by the properties."""
        self.results = results

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        """Values callbacks monitor: step values during training, epoch values (plain and forked names)."""
        self._merge_live()
        return self._callback

    @property
    def logged_metrics(self) -> dict[str, Tensor]:
        """Values with logger=True, under their forked names."""
        self._merge_live()
        return self._logged

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """Values with prog_bar=True as Python numbers; tensors are converted here, only when read."""
        self._merge_live()
        pbar = self._pbar
        keys = [key for key, value in pbar.items() if isinstance(value, Tensor)]
        if keys:
            for key, number in zip(keys, _to_python([pbar[key] for key in keys])):  # type: ignore[misc]
                pbar[key] = number
        return pbar  # type: ignore[return-value]

    def update_step(self, results: ResultCollection, write_logs: bool) -> dict[str, Tensor] | None:
        """After a batch's last hook: merge its step values; return what to send to the loggers if `write_logs`."""
        metrics = results.step_metrics()
        self._merge(metrics)
        return metrics.log if write_logs and metrics.log else None

    def update_epoch(self, results: ResultCollection, write_logs: bool) -> dict[str, Tensor] | None:
        """After the epoch-end hooks: merge the epoch values; return what to send to the loggers if `write_logs`."""
        metrics = results.epoch_metrics()
        self._merge(metrics)
        return metrics.log if write_logs and metrics.log else None

    def state_dict(self) -> dict[str, Any]:
        """The callback / logged / progress-bar dicts (tensors and numbers)."""
        self._merge_live()
        return {"callback": dict(self._callback), "logged": dict(self._logged), "pbar": dict(self._pbar)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._callback = dict(state["callback"])
        self._logged = dict(state["logged"])
        self._pbar = dict(state["pbar"])

    def reset(self) -> None:
        """Forget all metrics (fit start, before and after the sanity check)."""
        self._callback = {}
        self._logged = {}
        self._pbar = {}

    def teardown(self) -> None:
        """Move the kept tensors to the CPU at the end of a run so they outlive the device."""
        self._callback = {k: v.cpu() for k, v in self._callback.items()}
        self._logged = {k: v.cpu() for k, v in self._logged.items()}
        self._pbar = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in self._pbar.items()}

    def _merge(self, metrics: Metrics) -> None:
        self._callback.update(metrics.callback)
        self._logged.update(metrics.log)
        self._pbar.update(metrics.pbar)

    def _merge_live(self) -> None:
        if self.results is not None:
            self._merge(self.results.live_metrics())
