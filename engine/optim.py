"""Parse what `configure_optimizers` returns into optimizers + scheduler configs, and wrap optimizers for users.

Accepted return formats and validation follow Lightning 2.x (`core/optimizer.py`); see `parse_optimizers`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from engine.errors import MisconfigurationException, OptimizationConfigError, user_stacklevel

__all__ = ["LRSchedulerConfig", "LightningOptimizer", "parse_optimizers"]

_ACCEPTED_FORMATS = (
    "Return one of:\n"
    " * an `Optimizer`\n"
    " * a list/tuple of optimizers: [opt1, opt2]\n"
    " * two lists: ([opt1, ...], [scheduler_or_config, ...])\n"
    ' * a dict: {"optimizer": opt, "lr_scheduler": scheduler_or_config, "monitor": "metric"}'
    ' ("lr_scheduler" and "monitor" optional)\n'
    " * a list/tuple of such dicts\n"
    " * None (train without an optimizer)"
)
_OPTIM_DICT_KEYS = frozenset({"optimizer", "lr_scheduler", "monitor"})
_SCHEDULER_KEYS = frozenset({"scheduler", "name", "interval", "frequency", "reduce_on_plateau", "monitor", "strict",
                            "opt_idx"})
_MANUAL_IGNORED_KEYS = ("reduce_on_plateau", "monitor", "strict")


@dataclass(slots=True)
class LRSchedulerConfig:
    """One LR scheduler plus when to step it; `opt_idx` is None unless the scheduler dict gives it (Lightning 2.x)."""

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"  # "epoch" or "step" (optimizer steps)
    frequency: int = 1  # step the scheduler every `frequency` intervals
    reduce_on_plateau: bool = False  # step(metric) with the `monitor` value
    monitor: str | None = None
    strict: bool = True  # missing monitor value at step time: raise (True) or warn and skip (False)
    opt_idx: int | None = None


def parse_optimizers(
    returned: Any, *, automatic_optimization: bool = True
) -> tuple[list[Optimizer], list[LRSchedulerConfig], str | None]:
    """Turn a `configure_optimizers` return value into (optimizers, scheduler configs, top-level monitor).

    Raises `MisconfigurationException` for an unusable value, bad scheduler config, a scheduler whose optimizer was
    not returned, or several optimizers under automatic optimization; warns for `None` and ignored dict keys.
    """
    optimizers, raw_schedulers, monitor = ([], [], None) if returned is None else _split(returned)
    if not optimizers and not raw_schedulers:
        warnings.warn(
            f"`configure_optimizers` returned {_short_repr(returned)}; this fit will run without an optimizer.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return [], [], None
    configs = [
        _to_config(raw, fallback_monitor, automatic_optimization, returned) for raw, fallback_monitor in raw_schedulers
    ]
    if automatic_optimization and len(optimizers) > 1:
        raise OptimizationConfigError(
            f"`configure_optimizers` returned {len(optimizers)} optimizers, but automatic optimization supports "
            "exactly one. Set `self.automatic_optimization = False` in your LightningModule's `__init__` and step "
            "them yourself in `training_step` with `opt1, opt2 = self.optimizers()`."
        )
    for config in configs:  # every scheduler must belong to a returned optimizer (its index is not stored)
        _owner_index(config.scheduler, optimizers)
    return optimizers, configs, monitor


def _split(returned: Any) -> tuple[list[Optimizer], list[tuple[Any, str | None]], str | None]:
    """Recognise the return format; yields optimizers and (raw scheduler, fallback monitor) pairs."""
    if _is_optimizer(returned):
        return [_unwrap(returned)], [], None

    if isinstance(returned, Mapping):
        opt, scheds, monitor = _split_dict(returned, returned)
        return [opt], [(s, monitor) for s in scheds], monitor

    if isinstance(returned, (list, tuple)):
        # ([optimizers], [schedulers]) -- the second part may be a single scheduler or config dict
        if (
            len(returned) == 2
            and isinstance(returned[0], (list, tuple))
            and all(_is_optimizer(o) for o in returned[0])
        ):
            opts, scheds = returned
            scheds = list(scheds) if isinstance(scheds, (list, tuple)) else [scheds]
            return [_unwrap(o) for o in opts], [(s, None) for s in scheds], None
        if all(isinstance(d, Mapping) for d in returned):
            optimizers, pairs, first_monitor = [], [], None
            for d in returned:
                opt, scheds, monitor = _split_dict(d, returned)
                optimizers.append(opt)
                pairs.extend((s, monitor) for s in scheds)
                first_monitor = first_monitor if first_monitor is not None else monitor
            return optimizers, pairs, first_monitor
        if all(_is_optimizer(o) for o in returned):
            return [_unwrap(o) for o in returned], [], None

    raise MisconfigurationException(
        f"`configure_optimizers` returned an unsupported value of type {type(returned).__name__}: "
        f"{_short_repr(returned)}.\n{_ACCEPTED_FORMATS}"
    )


def _split_dict(d: Mapping, returned: Any) -> tuple[Optimizer, list[Any], str | None]:
    if "optimizer" not in d or not _is_optimizer(d["optimizer"]):
        got = "no 'optimizer' key" if "optimizer" not in d else f"'optimizer': {type(d['optimizer']).__name__}"
        raise MisconfigurationException(
            f"`configure_optimizers` returned a dict with {got} ({_short_repr(returned)}); the dict needs an "
            f"'optimizer' entry holding a torch Optimizer.\n{_ACCEPTED_FORMATS}"
        )
    extra = set(d) - _OPTIM_DICT_KEYS
    if extra:
        warnings.warn(
            f"`configure_optimizers` returned a dict with unsupported keys {sorted(extra)}; they are ignored. "
            f"Supported keys: {sorted(_OPTIM_DICT_KEYS)}.",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    scheds = [d["lr_scheduler"]] if d.get("lr_scheduler") is not None else []
    return _unwrap(d["optimizer"]), scheds, d.get("monitor")


def _to_config(raw: Any, fallback_monitor: str | None, automatic: bool, returned: Any) -> LRSchedulerConfig:
    """Validate one scheduler or scheduler-config dict and build its `LRSchedulerConfig`."""
    if not isinstance(raw, Mapping):
        _check_scheduler(raw, returned)
        if not automatic:
            return LRSchedulerConfig(raw)
        if isinstance(raw, ReduceLROnPlateau):
            if fallback_monitor is None:
                raise MisconfigurationException(
                    "`configure_optimizers` returned a `ReduceLROnPlateau` scheduler without a monitor. Return a "
                    'dict with the metric to track, for example: {"optimizer": optimizer, "lr_scheduler": '
                    'scheduler, "monitor": "val_loss"}.'
                )
            return LRSchedulerConfig(raw, reduce_on_plateau=True, monitor=fallback_monitor)
        return LRSchedulerConfig(raw)

    cfg = dict(raw)
    extra = set(cfg) - _SCHEDULER_KEYS
    if extra:
        warnings.warn(
            f"The lr scheduler dict returned by `configure_optimizers` has unsupported keys {sorted(extra)}; they "
            f"are dropped. Supported keys: {sorted(_SCHEDULER_KEYS)}.",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
        cfg = {k: v for k, v in cfg.items() if k in _SCHEDULER_KEYS}
    if "scheduler" not in cfg:
        raise MisconfigurationException(
            f"The lr scheduler dict returned by `configure_optimizers` has no 'scheduler' key (keys: {sorted(cfg)}). "
            'Put the scheduler under "scheduler", e.g. {"scheduler": StepLR(opt, 10), "interval": "epoch"}.'
        )
    _check_scheduler(cfg["scheduler"], returned)
    interval = cfg.get("interval", "epoch")
    if interval not in ("step", "epoch"):
        raise MisconfigurationException(
            f"The lr scheduler dict returned by `configure_optimizers` has 'interval': {interval!r}; "
            "it must be 'step' or 'epoch'."
        )
    frequency = cfg.get("frequency", 1)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise MisconfigurationException(
            f"The lr scheduler dict returned by `configure_optimizers` has 'frequency': {frequency!r}; "
            "it must be an int >= 1 (step the scheduler every `frequency` intervals)."
        )

    if not automatic:
        ignored = [k for k in _MANUAL_IGNORED_KEYS if k in cfg]
        if ignored:
            warnings.warn(
                f"The lr scheduler dict contains {ignored}, which are ignored under manual optimization: call "
                "`lr_scheduler.step()` yourself in `training_step` or `on_train_epoch_end`.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            cfg = {k: v for k, v in cfg.items() if k not in _MANUAL_IGNORED_KEYS}
        return LRSchedulerConfig(**cfg)

    if "reduce_on_plateau" not in cfg:
        cfg["reduce_on_plateau"] = isinstance(cfg["scheduler"], ReduceLROnPlateau)
    if cfg.get("monitor") is None:
        cfg["monitor"] = fallback_monitor
    if cfg["reduce_on_plateau"] and cfg["monitor"] is None:
        raise MisconfigurationException(
            "The lr scheduler dict returned by `configure_optimizers` must include a 'monitor' when a "
            '`ReduceLROnPlateau` scheduler is used. For example: {"optimizer": optimizer, "lr_scheduler": '
            '{"scheduler": scheduler, "monitor": "val_loss"}}.'
        )
    if isinstance(cfg["scheduler"], OneCycleLR) and interval == "epoch":
        warnings.warn(
            "A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean 'interval': 'step'?",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    return LRSchedulerConfig(**cfg)


def _check_scheduler(scheduler: Any, returned: Any) -> None:
    if isinstance(scheduler, (Mapping, list, tuple)) or not hasattr(scheduler, "optimizer"):
        raise MisconfigurationException(
            f"`configure_optimizers` returned {_short_repr(scheduler)} (type {type(scheduler).__name__}) where an "
            "LR scheduler was expected: an object with an `optimizer` attribute and `step()`, e.g. "
            f"torch.optim.lr_scheduler.StepLR, or a config dict with a 'scheduler' key.\n{_ACCEPTED_FORMATS}"
        )
    if not (callable(getattr(scheduler, "state_dict", None)) and callable(getattr(scheduler, "load_state_dict", None))):
        # Lightning raises TypeError here too
        raise TypeError(
            f"The lr scheduler `{type(scheduler).__name__}` returned by `configure_optimizers` is invalid: it needs "
            "`state_dict` and `load_state_dict` methods so it can be checkpointed."
        )


def _owner_index(scheduler: Any, optimizers: list[Optimizer]) -> int:
    owner = _unwrap(scheduler.optimizer)
    for i, opt in enumerate(optimizers):
        if opt is owner:
            return i
    raise MisconfigurationException(
        f"The lr scheduler `{type(scheduler).__name__}` belongs to no optimizer returned by configure_optimizers: "
        f"it was built on a `{type(owner).__name__}` that is not among the {len(optimizers)} returned optimizer(s). "
        "Build each scheduler on an optimizer you return, e.g. `opt = SGD(...)`; "
        "`return [opt], [StepLR(opt, 10)]`."
    )


def _is_optimizer(obj: Any) -> bool:
    """A torch Optimizer, a LightningOptimizer, or an object that quacks like one (Lightning's `Optimizable`)."""
    if isinstance(obj, (Optimizer, LightningOptimizer)):
        return True
    return (
        callable(getattr(obj, "step", None))
        and hasattr(obj, "param_groups")
        and callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    )


def _unwrap(obj: Any) -> Any:
    return obj.optimizer if isinstance(obj, LightningOptimizer) else obj


def _short_repr(obj: Any, limit: int = 160) -> str:
    text = " ".join(repr(obj).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LightningOptimizer:
    """What `LightningModule.optimizers()` returns: the user's optimizer plus trainer hooks around `step()`.

    Every attribute not defined here is read from the wrapped optimizer. The trainer sets `on_before_step`
    (fires `on_before_optimizer_step`, counts `global_step` under manual optimization) and `on_after_step`;
    `step_fn(optimizer, closure, **kwargs)` may replace the plain `optimizer.step` (e.g. an AMP GradScaler step).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        on_before_step: Callable[[Optimizer], None] | None = None,
        on_after_step: Callable[[Optimizer], None] | None = None,
        step_fn: Callable[..., Any] | None = None,
    ) -> None:
        self._optimizer = _unwrap(optimizer)
        cls = _wrapper_class(type(self._optimizer))
        if cls is not None:  # `isinstance(self.optimizers(), torch.optim.Adam)` holds, as for Lightning's wrapper
            self.__class__ = cls
        self.on_before_step = on_before_step
        self.on_after_step = on_after_step
        self.step_fn = step_fn

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped torch optimizer."""
        return self._optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self._optimizer.defaults

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Run `on_before_step`, the optimizer step (with `closure` if given), then `on_after_step`.

        Returns what the optimizer step returned (the closure's loss when a closure is passed).
        """
        if closure is not None and not callable(closure):
            raise MisconfigurationException(
                f"`optimizer.step(closure)` got a closure of type {type(closure).__name__}; it must be callable "
                "(a function that computes the loss and calls `self.manual_backward`)."
            )
        opt = self._optimizer
        if self.on_before_step is not None:
            self.on_before_step(opt)
        if self.step_fn is not None:
            result = self.step_fn(opt, closure, **kwargs)
        elif closure is not None:
            result = opt.step(closure, **kwargs)
        else:
            result = opt.step(**kwargs)
        if self.on_after_step is not None:
            self.on_after_step(opt)
        return result

    def __reduce_ex__(self, protocol: Any) -> Any:  # rebuilt through __init__, which re-mixes the optimizer class
        return LightningOptimizer, (self._optimizer, self.on_before_step, self.on_after_step, self.step_fn)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails; guard against recursion before `_optimizer` exists (copy/pickle)
        if name == "_optimizer":
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"


_WRAPPER_CLASSES: dict[type, type | None] = {}


def _wrapper_class(optimizer_cls: type) -> type | None:
    """`LightningOptimizer` mixed with the user's optimizer class (one class per optimizer type), so the wrapper is
    an instance of it; None for an optimizer-like object that is no torch Optimizer."""
    if optimizer_cls not in _WRAPPER_CLASSES:
        made: type | None = None
        if issubclass(optimizer_cls, Optimizer) and not issubclass(optimizer_cls, LightningOptimizer):
            try:
                made = type(f"Lightning{optimizer_cls.__name__}", (LightningOptimizer, optimizer_cls),
                            {"__module__": __name__, "__doc__": LightningOptimizer.__doc__})
            except TypeError:  # a class that cannot be mixed in (layout conflict): the plain wrapper
                made = None
        _WRAPPER_CLASSES[optimizer_cls] = made
    return _WRAPPER_CLASSES[optimizer_cls]
