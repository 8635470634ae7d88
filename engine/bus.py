"""The event bus: subscriptions, explicit ordering, filters, wrappers and action providers.

Dispatch is a precomputed tuple of bound callables per event type, rebuilt only when subscriptions change. The loop
asks `bus.table.get(EventType)` and constructs the event only when that tuple is non-empty, so an event nobody
listens to costs one dict lookup. Order is `(priority, registration order)`; lower priority runs first. The bands:

    STRATEGY 100 < PRECISION 200 < CALLBACK 300 < MODULE 400 < METRICS 500 < LOGGER 600 < MONITOR 700 < PROGRESS 800 < TRACE 900

A handler may observe (`on_<event>` methods or `bus.subscribe`), wrap a phase (`wrap_<phase>(context)` returning a
context manager; a `wrap_<phase>()` without the parameter is called without it), provide the single implementation
of an action (`provide_<action>(..., context=...)`; `context` is passed only when the provider declares it), and
steer through `event.control`. The phase context (`engine.loops.optimization.PhaseContext`) says which optimizer,
which batch and whether this micro-batch steps, so a DDP `no_sync` wrapper or a GradScaler provider needs nothing
else. Phases and actions, in the order one training step meets them:

    wrap:    train_step (forward and backward of one micro-batch) > forward, backward, optimizer_step, eval_forward
    provide: convert_input (at batch transfer), forward, backward, unscale, clip, optimizer_step, resolve_control

Instrumentations (profilers, a trace recorder) wrap every dispatch target; several coexist, applied in the order
they were added.
"""

from __future__ import annotations

import difflib
import itertools
import inspect
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator

from engine.errors import HandlerError
from engine.events import CATALOGUE, Event, handler_method_name

__all__ = [
    "Bus", "Subscription", "entered", "STRATEGY", "PRECISION", "CALLBACK", "MODULE", "METRICS", "LOGGER", "MONITOR", "PROGRESS",
    "TRACE", "PHASES", "ACTIONS",
]

STRATEGY, PRECISION, CALLBACK, MODULE, METRICS, LOGGER, MONITOR, PROGRESS, TRACE = (
    100, 200, 300, 400, 500, 600, 700, 800, 900)

PHASES = ("train_step", "forward", "backward", "optimizer_step", "eval_forward")
ACTIONS = ("convert_input", "forward", "backward", "unscale", "clip", "optimizer_step", "resolve_control")

_NULL = nullcontext()

Wrapper = Callable[[Any], AbstractContextManager]


def entered(wraps: tuple[Wrapper, ...] | None, context: Any = None) -> AbstractContextManager:
    """A phase's wrappers (from `Bus.wrappers`) entered in order with the phase context, as one context; a shared
    no-op when there are none."""
    if not wraps:
        return _NULL
    if len(wraps) == 1:  # the common case (one precision handler, one no_sync): no ExitStack per step
        return wraps[0](context)
    stack = ExitStack()
    for w in wraps:
        stack.enter_context(w(context))
    return stack


def _takes_argument(fn: Callable) -> bool:
    """Whether a bound `wrap_<phase>` method declares a parameter (it then receives the phase context)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _as_wrapper(fn: Callable) -> Wrapper:
    if _takes_argument(fn):
        return fn
    return lambda context: fn()


def declares_context(fn: Callable) -> bool:
    """Whether a provider declares a `context` parameter (or **kwargs): it then receives `context=`."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "context" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_METHOD_TO_EVENT: dict[str, type[Event]] = {handler_method_name(t): t for t in CATALOGUE}


def _name_of(fn: Callable) -> str:
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        return f"{type(owner).__qualname__}.{getattr(fn, '__name__', '?')}"
    return getattr(fn, "__qualname__", None) or repr(fn)


class Subscription:
    """Handle returned by `subscribe`: `remove()` it, or use it as a context manager."""

    __slots__ = ("bus", "event_type", "fn", "priority", "seq", "name", "target")

    def __init__(self, bus: "Bus", event_type: type, fn: Callable, priority: int, seq: int, name: str,
                 target: Callable) -> None:
        self.bus, self.event_type, self.fn, self.priority, self.seq, self.name, self.target = (
            bus, event_type, fn, priority, seq, name, target)

    def remove(self) -> None:
        """Unsubscribe (idempotent)."""
        self.bus._remove(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Subscription({self.event_type.__name__}, {self.name}, priority={self.priority})"


def _filtered(fn: Callable, every: int | None, once: int | None, when: Callable[[Any], bool] | None) -> Callable:
    """Compile `every=`/`once=`/`when=` into a counter check in front of `fn` (Ignite's filter semantics)."""
    if every is None and once is None and when is None:
        return fn
    for label, value in (("every", every), ("once", once)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"subscribe({label}={value!r}): expected a positive int (call on the n-th firing)")
    count = itertools.count(1)

    def filtered(event: Any) -> None:
        n = next(count)
        if every is not None and n % every:
            return
        if once is not None and n != once:
            return
        if when is not None and not when(event):
            return
        fn(event)

    filtered.__qualname__ = _name_of(fn)
    return filtered


class Bus:
    """Subscriptions and the dispatch tables derived from them."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._seq = itertools.count()
        self.table: dict[type, tuple[Callable, ...]] = {}  # mutated in place: loops may hold a reference
        self._names: dict[type, tuple[str, ...]] = {}
        # phase -> (priority, seq, name, wrapper taking the context, owner)
        self._wraps: dict[str, list[tuple[int, int, str, Wrapper, object]]] = {}
        self.wrappers: dict[str, tuple[Wrapper, ...]] = {}
        self.providers: dict[str, tuple[str, Callable]] = {}
        self._provider_owners: dict[str, object] = {}
        self._attached: dict[int, list[Subscription]] = {}
        self._deferred = 0  # > 0 inside `batch()`: table rebuilds wait until it ends
        self.version = 0  # bumped on every rebuild: loops cache per-step listeners and refresh when it changes
        self._instrumentations: list[tuple[object, Callable[[type, str, Callable], Callable]]] = []

    # -- subscription -------------------------------------------------------------------------------------------
    def subscribe(self, event_type: type, fn: Callable[[Any], None], *, priority: int = CALLBACK,
                  every: int | None = None, once: int | None = None, when: Callable[[Any], bool] | None = None,
                  name: str | None = None) -> Subscription:
        """Call `fn(event)` on every `event_type` (and subclasses), filtered by `every`/`once`/`when`."""
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"subscribe({event_type!r}, ...): expected an Event subclass from engine.events")
        if not callable(fn):
            raise TypeError(f"subscribe({event_type.__name__}, {fn!r}): the handler must be callable")
        sub = Subscription(self, event_type, fn, int(priority), next(self._seq), name or _name_of(fn),
                           _filtered(fn, every, once, when))
        self._subs.append(sub)
        if not self._deferred:
            self._rebuild()
        return sub

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Subscribe/remove many handlers and rebuild the dispatch tables once at the end."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred:
                self._rebuild()

    def on(self, event_type: type, *, priority: int = CALLBACK, every: int | None = None, once: int | None = None,
           when: Callable[[Any], bool] | None = None) -> Callable[[Callable], Callable]:
        """Decorator form of `subscribe`: `@bus.on(EpochEnded, every=2)`."""
        def decorate(fn: Callable) -> Callable:
            self.subscribe(event_type, fn, priority=priority, every=every, once=once, when=when)
            return fn
        return decorate

    def attach(self, handler: object, priority: int | None = None) -> list[Subscription]:
        """Subscribe every `on_<event>` method of `handler`, register its wrappers and providers.

        Everything is checked first, so a rejected handler leaves nothing registered."""
        prio = priority if priority is not None else getattr(handler, "priority", CALLBACK)
        hname = type(handler).__qualname__
        events, wraps, provides = [], [], []
        for attr in dir(type(handler)):
            if attr.startswith("on_"):
                event_type = _METHOD_TO_EVENT.get(attr)
                if event_type is None:
                    hint = difflib.get_close_matches(attr, list(_METHOD_TO_EVENT), n=1)
                    raise HandlerError(
                        f"handler {hname} defines {attr}(), which matches no event"
                        + (f"; did you mean {hint[0]}()?" if hint else "; event methods are on_<snake_case event>()")
                        + " (Lightning-style hooks belong on a pl.Callback subclass)")
                events.append((event_type, attr))
            elif attr.startswith("wrap_"):
                if attr[5:] not in PHASES:
                    raise HandlerError(f"handler {hname} defines {attr}(); known phases: {', '.join(PHASES)}")
                wraps.append(attr)
            elif attr.startswith("provide_"):
                action = attr[8:]
                if action not in ACTIONS:
                    raise HandlerError(f"handler {hname} defines {attr}(); known actions: {', '.join(ACTIONS)}")
                if action in self.providers:
                    raise HandlerError(
                        f"two handlers provide the action {action!r}: {self.providers[action][0]} and {hname}; "
                        "an action has a single provider, remove one of them")
                provides.append(attr)
        with self.batch():
            subs = [self.subscribe(t, getattr(handler, a), priority=prio, name=f"{hname}.{a}") for t, a in events]
        for attr in wraps:
            self._wraps.setdefault(attr[5:], []).append((prio, next(self._seq), f"{hname}.{attr}",
                                                         _as_wrapper(getattr(handler, attr)), handler))
        for attr in provides:
            self.providers[attr[8:]] = (hname, getattr(handler, attr))
            self._provider_owners[attr[8:]] = handler
        self._attached[id(handler)] = subs
        self._rebuild()
        return subs

    def is_attached(self, handler: object) -> bool:
        """Whether `attach(handler)` registered it and it was not detached since."""
        return id(handler) in self._attached

    def detach(self, handler: object) -> None:
        """Remove everything `attach(handler)` registered: subscriptions, wrappers and providers (idempotent)."""
        for sub in self._attached.pop(id(handler), []):
            self._remove(sub, rebuild=False)
        for phase, items in self._wraps.items():
            items[:] = [w for w in items if w[4] is not handler]
        for action, owner in list(self._provider_owners.items()):
            if owner is handler:
                del self.providers[action]
                del self._provider_owners[action]
        self._rebuild()

    def _remove(self, sub: Subscription, rebuild: bool = True) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            if rebuild and not self._deferred:
                self._rebuild()

    def _rebuild(self) -> None:
        self.version += 1
        types = set(CATALOGUE) | {s.event_type for s in self._subs}
        ordered = sorted(self._subs, key=lambda s: (s.priority, s.seq))
        self.table.clear()
        self._names.clear()
        for t in types:
            subs = [s for s in ordered if issubclass(t, s.event_type)]
            if subs:
                if not self._instrumentations:
                    self.table[t] = tuple(s.target for s in subs)
                else:
                    self.table[t] = tuple(self._instrumented(t, s.name, s.target) for s in subs)
                self._names[t] = tuple(s.name for s in subs)
        self.wrappers = {p: tuple(w[3] for w in sorted(items, key=lambda w: (w[0], w[1])))
                         for p, items in self._wraps.items() if items}

    def _instrumented(self, event_type: type, name: str, fn: Callable) -> Callable:
        for _, factory in self._instrumentations:
            fn = factory(event_type, name, fn)
        return fn

    # -- instrumentation ----------------------------------------------------------------------------------------
    def add_instrumentation(self, factory: Callable[[type, str, Callable], Callable], owner: object = None) -> None:
        """Wrap every dispatch target as `factory(event_type, name, fn)` from now on (profilers, trace recorders);
        several coexist, the first added innermost. `owner` (default: the factory) identifies it for removal."""
        self._instrumentations.append((factory if owner is None else owner, factory))
        self._rebuild()

    def remove_instrumentation(self, owner: object) -> None:
        """Remove the instrumentation(s) added with `owner` (or that factory); idempotent."""
        self._instrumentations = [(o, f) for o, f in self._instrumentations if o is not owner and f is not owner]
        self._rebuild()

    def instrumented_by(self) -> list[object]:
        """The owners of the current instrumentations, in the order they were added."""
        return [o for o, _ in self._instrumentations]

    @property
    def instrumentation(self) -> Callable[[type, str, Callable], Callable] | None:
        """The combined instrumentation factory, or None when there is none."""
        return self._instrumented if self._instrumentations else None

    def instrument(self, factory: Callable[[type, str, Callable], Callable] | None) -> None:
        """Make `factory` the only instrumentation (None removes them all); `add_instrumentation` adds one."""
        self._instrumentations = [] if factory is None else [(factory, factory)]
        self._rebuild()

    # -- dispatch -----------------------------------------------------------------------------------------------
    def fire(self, event: Event) -> None:
        """Call every listener of `type(event)` in order; an exception is re-raised with the handler's name noted."""
        handlers = self.table.get(type(event))
        if handlers:
            self.call(handlers, event)

    def call(self, handlers: tuple[Callable, ...], event: Event) -> None:
        """Dispatch `event` to a tuple taken from `table` (the loop's fast path)."""
        fn = None
        try:
            for fn in handlers:
                fn(event)
        except BaseException as exc:
            names = self._names.get(type(event), ())
            idx = handlers.index(fn) if fn in handlers else -1
            who = names[idx] if 0 <= idx < len(names) else _name_of(fn)
            if not getattr(exc, "_statetrain_noted", False):
                exc.add_note(f"[statetrain] raised in handler {who} while handling {type(event).__name__} "
                             f"at {event.timestamp}")
                try:
                    exc._statetrain_noted = True  # type: ignore[attr-defined]
                except AttributeError:
                    pass
            raise

    def listening(self, event_type: type) -> bool:
        """Whether any handler listens to `event_type`."""
        return event_type in self.table

    # -- introspection ------------------------------------------------------------------------------------------
    def order(self, event_type: type) -> list[str]:
        """Names of the listeners of `event_type`, in call order."""
        return list(self._names.get(event_type, ()))

    def describe(self) -> str:
        """The resolved order per event, the wrappers per phase and the providers, as text."""
        prio = {s.name: s.priority for s in self._subs}
        lines = []
        for t in CATALOGUE + tuple(sorted((k for k in self.table if k not in CATALOGUE), key=lambda k: k.__name__)):
            names = self._names.get(t)
            if names:
                lines.append(f"{t.__name__}:")
                lines.extend(f"  {prio.get(n, '?'):>4}  {n}" for n in names)
        for phase, items in self._wraps.items():
            if items:
                lines.append(f"wrap {phase}: " + " > ".join(w[2] for w in sorted(items)))
        for action, (name, _) in self.providers.items():
            lines.append(f"provide {action}: {name}")
        return "\n".join(lines) if lines else "(no handlers)"

    def subscriptions(self) -> Iterable[Subscription]:
        return tuple(self._subs)
