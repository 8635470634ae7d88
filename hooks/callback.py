"""The Lightning-compatible `Callback` and the adapters that put callbacks and the module's hooks on the bus.

A Callback subscribes only the hooks its class overrides, each with Lightning's signature
`hook(trainer, pl_module, *args)`. The module's own hooks are subscribed the same way one band later, so for every
event the callbacks run first (in list order), then the module, as in Lightning. Monitoring callbacks (EarlyStopping,
checkpointing: `is_monitor = True`) run after the module on `on_train_epoch_end` only, as in Lightning.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable

from engine.bus import CALLBACK, MODULE, MONITOR, Bus, Subscription
from engine.events import (
    LIGHTNING_HOOKS, BatchStarted, EpochEnded, Event, ExceptionRaised, LoadCheckpoint, SanityCheckEnded,
    SanityCheckStarted, SaveCheckpoint, Setup, Teardown,
)

if TYPE_CHECKING:  # pragma: no cover
    from engine.module import LightningModule
    from engine.trainer import Trainer

__all__ = ["Callback", "attach_callback", "attach_module", "attach_run"]

# callback -> the module of the run it was last attached to, for `Callback.log` (weak both ways: nothing is kept alive)
_RUN_MODULES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


class Callback:
    """Base class of Lightning-style callbacks: override any hook; each gets `(trainer, pl_module, ...)`."""

    is_monitor = False  # True for EarlyStopping/ModelCheckpoint-like callbacks (ordering on on_train_epoch_end)
    # hook name -> method taking the event, used instead of the hook while the hook is not overridden further down
    # (built-in callbacks use it to skip the Lightning-signature adapter on per-step events)
    native_handlers: dict[str, str] = {}

    def listens_to(self, hook: str) -> bool:
        """Whether this instance needs `hook` (an overridden one): a handler configured so that a per-step hook
        has nothing to do says False, and the hook costs nothing (a statetrain extension; default True)."""
        return True

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (class qualname by default)."""
        return type(self).__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{type(self).__qualname__}{repr(kwargs)}"

    def log(self, name: str, value: Any, **kwargs: Any) -> None:
        """`self.log(...)` inside a hook logs through the module being run (`pl_module.log`, in this hook's
        context): a statetrain convenience, same arguments as `LightningModule.log`."""
        self._run_module(f"{type(self).__name__}.log({name!r}, ...)").log(name, value, **kwargs)

    def log_dict(self, dictionary: Any, **kwargs: Any) -> None:
        """`self.log_dict(...)` inside a hook: `pl_module.log_dict` of the module being run."""
        self._run_module(f"{type(self).__name__}.log_dict(...)").log_dict(dictionary, **kwargs)

    def _run_module(self, call: str) -> Any:
        try:
            ref = _RUN_MODULES.get(self)
        except TypeError:  # an unhashable callback (e.g. a dataclass with eq=True) is not tracked
            ref = None
        module = ref() if ref is not None else None
        if module is None:
            from engine.errors import MisconfigurationException

            raise MisconfigurationException(f"{call} was called outside a run: call it from one of the callback's "
                                            "hooks while the Trainer runs it (or use pl_module.log there)")
        return module

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None: ...
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None: ...
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None: ...
    def on_train_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}
    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None: ...
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None: ...
    def on_after_backward(self, trainer: Any, pl_module: Any) -> None: ...
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None: ...
    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None: ...


def _defined_by(cls: type, name: str) -> type | None:
    """The class in `cls`'s MRO that defines attribute `name`."""
    return next((k for k in cls.__mro__ if name in vars(k)), None)


def _overrides(obj: object, base: type, name: str) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name, None)


def _callback_adapter(hook: Callable, name: str, trainer: "Trainer", module: "LightningModule",
                      with_kwargs: bool) -> Callable:
    # `_current_fx_name` written directly: nn.Module.__setattr__ is slow on this path (no module: describe())
    state = module.__dict__ if module is not None else {}

    if with_kwargs:
        def call(event: Event) -> None:
            prev = state.get("_current_fx_name")
            state["_current_fx_name"] = name
            try:
                hook(trainer, module, *event.lightning_args(), **event.lightning_kwargs())
            finally:
                state["_current_fx_name"] = prev
    else:
        def call(event: Event) -> None:
            prev = state.get("_current_fx_name")
            state["_current_fx_name"] = name
            try:
                hook(trainer, module, *event.lightning_args())
            finally:
                state["_current_fx_name"] = prev
    call.__qualname__ = getattr(hook, "__qualname__", name)
    return call


def attach_callback(bus: Bus, callback: Callback, trainer: "Trainer", module: "LightningModule",
                    priority: int = CALLBACK) -> list[Subscription]:
    """Subscribe each hook `callback` overrides, with Lightning's signature and `self.log` context."""
    subs = []
    if module is not None:
        try:
            _RUN_MODULES[callback] = weakref.ref(module)  # what `Callback.log` logs through (outside it: pickling)
        except TypeError:
            pass
    natives = type(callback).native_handlers
    for event_type, name in LIGHTNING_HOOKS.items():
        if not _overrides(callback, Callback, name) or not callback.listens_to(name):
            continue
        prio = MONITOR if (event_type is EpochEnded and callback.is_monitor) else priority
        native = natives.get(name)
        if native is not None and _defined_by(type(callback), name) is _defined_by(type(callback), native):
            fn = getattr(callback, native)
        else:
            fn = _callback_adapter(getattr(callback, name), name, trainer, module,
                                   with_kwargs=event_type in (Setup, Teardown))
        subs.append(bus.subscribe(event_type, fn, priority=prio, name=f"{type(callback).__qualname__}.{name}"))
    return subs


# the checkpoint hooks of the module are called by the checkpoint code itself (Lightning calls the module's
# on_load_checkpoint before the callbacks', and its on_save_checkpoint also for weights-only checkpoints)
_NOT_MODULE_HOOKS = (ExceptionRaised, SanityCheckStarted, SanityCheckEnded, SaveCheckpoint, LoadCheckpoint)


def attach_module(bus: Bus, module: "LightningModule", trainer: "Trainer") -> list[Subscription]:
    """Subscribe each Lightning hook the module overrides; `on_train_batch_start` returning -1 skips the epoch."""
    from engine.module import LightningModule

    subs = []
    for event_type, name in LIGHTNING_HOOKS.items():
        if event_type in _NOT_MODULE_HOOKS or not _overrides(module, LightningModule, name):
            continue
        hook = getattr(module, name)
        if event_type is BatchStarted:
            def call(event: Event, hook: Callable = hook) -> None:
                prev = module._current_fx_name
                module.__dict__["_current_fx_name"] = "on_train_batch_start"
                try:
                    if hook(*event.lightning_args()) == -1:
                        trainer.control.skip_epoch("on_train_batch_start returned -1",
                                                   by=f"{type(module).__qualname__}.on_train_batch_start")
                finally:
                    module.__dict__["_current_fx_name"] = prev
        else:
            def call(event: Event, hook: Callable = hook, name: str = name) -> None:
                prev = module._current_fx_name
                module.__dict__["_current_fx_name"] = name
                try:
                    hook(*event.lightning_args(), **event.lightning_kwargs())
                finally:
                    module.__dict__["_current_fx_name"] = prev
        subs.append(bus.subscribe(event_type, call, priority=MODULE, name=f"{type(module).__qualname__}.{name}"))
    return subs


def attach_run(bus: Bus, callbacks: list[Any], trainer: "Trainer", module: "LightningModule | None"
               ) -> tuple[list[Subscription], list[object]]:
    """A run's handlers in Lightning's order: callbacks in list order (a Callback through its adapter, any other
    handler object with `bus.attach`, unless it is already attached), then the module's overridden hooks.
    Returns the subscriptions and the handler objects attached, for the run to remove when it ends."""
    subs: list[Subscription] = []
    handlers: list[object] = []
    for cb in callbacks:
        if isinstance(cb, Callback):
            subs.extend(attach_callback(bus, cb, trainer, module))  # type: ignore[arg-type]
        elif not bus.is_attached(cb):
            bus.attach(cb)
            handlers.append(cb)
    if module is not None:
        subs.extend(attach_module(bus, module, trainer))
    return subs, handlers
