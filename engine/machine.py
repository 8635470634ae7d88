"""A generic finite state machine: named states, a table of legal transitions, one function per state.

A state function does its work, fires its events and returns the name of the next state. `run` checks every
transition against the table (an illegal one raises `IllegalTransition` naming both states and the legal targets),
fires `StateChanged` only when someone listens, and on an exception calls `on_exception` and re-raises it.

The fit machine (`engine.loops.fit.build_fit_machine`):

    setup          -> epoch_start | validation (sanity check) | teardown | batch | epoch_end (resume)
    epoch_start    -> batch | epoch_end | teardown
    batch          -> backward | batch | validation | epoch_end | teardown
    backward       -> optimizer_step | batch | validation | epoch_end (accumulating: no step)
    optimizer_step -> batch | validation | epoch_end | teardown
    validation     -> batch | epoch_end | epoch_start | teardown
    epoch_end      -> epoch_start | teardown
    teardown       -> done

Running: `run(ctx)` starts at the initial state; `run(ctx, start=STATE)` starts at a saved position (resume), and
`position` is the state being run (None between runs), the value a checkpoint stores. Instrumentations (profilers,
trace recorders) wrap every state function; several coexist.

Composing: `replace(state, fn)` swaps a state's function; `insert(name, fn, after=A)` runs `name` after every exit
from A (its function returns None to continue where A was going, or one of A's targets); `insert(name, fn, before=B)`
runs `name` on every entry into B; `add_state`/`allow` build a machine from scratch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from engine.errors import IllegalTransition

__all__ = ["Machine", "StateFn", "DONE"]

DONE = "done"
StateFn = Callable[[Any], "str | None"]


class Machine:
    """States, legal transitions and the run loop."""

    def __init__(self, name: str, initial: str, final: str = DONE) -> None:
        self.name = name
        self.initial = initial
        self.final = final
        self.functions: dict[str, StateFn] = {}
        self.transitions: dict[str, set[str]] = {}
        self._after: dict[str, str] = {}   # state -> inserted follower that runs on every exit of it
        self._before: dict[str, str] = {}  # state -> inserted state that runs on every entry into it
        self._before_target: dict[str, str] = {}  # inserted state -> the state it runs before
        self.on_transition: Callable[[str, str], None] | None = None
        self.on_exception: Callable[[Any, BaseException], None] | None = None
        self._instrumentations: list[tuple[object, Callable[[str, StateFn], StateFn]]] = []
        self.position: str | None = None  # the state being run; None outside `run`

    # -- building -----------------------------------------------------------------------------------------------
    def add_state(self, name: str, fn: StateFn, to: Iterable[str] = ()) -> "Machine":
        """Add a state with its function and legal targets."""
        if name in self.functions:
            raise ValueError(f"machine {self.name!r}: state {name!r} already exists; use replace({name!r}, fn)")
        if name == self.final:
            raise ValueError(f"machine {self.name!r}: {name!r} is the final state and has no function")
        self.functions[name] = fn
        self.transitions[name] = set(to)
        return self

    def allow(self, src: str, *dsts: str) -> "Machine":
        """Make `src -> dst` legal for each dst."""
        self._require(src)
        self.transitions[src].update(dsts)
        return self

    def replace(self, name: str, fn: StateFn) -> "Machine":
        """Swap the function of an existing state; its legal targets stay as they are."""
        self._require(name)
        self.functions[name] = fn
        return self

    def insert(self, name: str, fn: StateFn, *, after: str | None = None, before: str | None = None) -> "Machine":
        """Insert a state that runs after every exit of `after`, or before every entry into `before`."""
        if (after is None) == (before is None):
            raise ValueError(f"machine {self.name!r}: insert({name!r}) needs exactly one of after= or before=")
        if after is not None:
            self._require(after)
            if after in self._after:
                after = self._last_after(after)
            self.add_state(name, fn, to=self.transitions[after])
            self.transitions[after] = {name}
            self._after[after] = name
        else:
            assert before is not None
            if before != self.final:
                self._require(before)
            self.add_state(name, fn, to={before})
            for src, targets in self.transitions.items():
                if before in targets and src != name:
                    targets.discard(before)
                    targets.add(name)
            self._before[before] = name
            self._before_target[name] = before
            if self.initial == before:
                self.initial = name
        return self

    def _last_after(self, state: str) -> str:
        while state in self._after:
            state = self._after[state]
        return state

    def _require(self, name: str) -> None:
        if name not in self.functions:
            raise KeyError(f"machine {self.name!r} has no state {name!r}; states: {', '.join(self.functions)}")

    def copy(self) -> "Machine":
        """An independent copy (same functions), for a user to compose without touching the original."""
        m = Machine(self.name, self.initial, self.final)
        m.functions = dict(self.functions)
        m.transitions = {k: set(v) for k, v in self.transitions.items()}
        m._after, m._before, m._before_target = dict(self._after), dict(self._before), dict(self._before_target)
        m.on_transition, m.on_exception = self.on_transition, self.on_exception
        m._instrumentations = list(self._instrumentations)
        return m

    def validate(self) -> None:
        """Every target names a state (or the final state) and every state is reachable from the initial one."""
        known = set(self.functions) | {self.final}
        for src, targets in self.transitions.items():
            unknown = targets - known
            if unknown:
                raise ValueError(f"machine {self.name!r}: {src!r} lists unknown target(s) {sorted(unknown)}")
        seen, todo = set(), [self.initial]
        while todo:
            s = todo.pop()
            if s in seen or s == self.final:
                continue
            seen.add(s)
            todo.extend(self.transitions.get(s, ()))
        unreachable = set(self.functions) - seen
        if unreachable:
            raise ValueError(f"machine {self.name!r}: unreachable state(s) {sorted(unreachable)}")

    def add_instrumentation(self, factory: Callable[[str, StateFn], StateFn], owner: object = None) -> None:
        """Run each state's function as `factory(state, fn)` from the next `run` on; several coexist (the first
        added innermost). `owner` (default: the factory) identifies it for `remove_instrumentation`."""
        self._instrumentations.append((factory if owner is None else owner, factory))

    def remove_instrumentation(self, owner: object) -> None:
        """Remove the instrumentation(s) added with `owner` (or that factory); idempotent."""
        self._instrumentations = [(o, f) for o, f in self._instrumentations if o is not owner and f is not owner]

    def instrumented_by(self) -> list[object]:
        """The owners of the current instrumentations, in the order they were added."""
        return [o for o, _ in self._instrumentations]

    @property
    def instrumentation(self) -> Callable[[str, StateFn], StateFn] | None:
        """The combined instrumentation factory, or None when there is none."""
        if not self._instrumentations:
            return None

        def combined(state: str, fn: StateFn) -> StateFn:
            for _, factory in self._instrumentations:
                fn = factory(state, fn)
            return fn
        return combined

    def instrument(self, factory: Callable[[str, StateFn], StateFn] | None) -> None:
        """Make `factory` the only instrumentation (None removes them all); `add_instrumentation` adds one."""
        self._instrumentations = [] if factory is None else [(factory, factory)]

    # -- running ------------------------------------------------------------------------------------------------
    def run(self, ctx: Any, start: str | None = None) -> None:
        """Run from `start` (default: the initial state) until the final state, checking every transition;
        `position` names the state being run."""
        fns, trans, final = self.functions, self.transitions, self.final
        wrap = self.instrumentation
        if wrap is not None:
            fns = {name: wrap(name, fn) for name, fn in fns.items()}
        after, before, before_target = self._after, self._before, self._before_target
        chain_legal = {a: trans[self._last_after(a)] for a in after}  # where an anchor may really go
        on_transition = self.on_transition
        if start is not None:
            self._require(start)
        state = self.initial if start is None else start
        pending: str | None = None  # where a state was going when an inserted follower took over
        try:
            if not after and not before and on_transition is None:  # nothing inserted, nobody watching
                while state != final:
                    self.position = state
                    nxt = fns[state](ctx)
                    if nxt not in trans[state]:
                        raise self._illegal(state, nxt, trans[state])
                    state = nxt
                    if self.on_transition is not None:  # a watcher arrived mid-run (a run's StateChanged handler)
                        self.on_transition(self.position, nxt)
                        break
                else:
                    self.position = None
                    return
            while state != final:
                self.position = state
                nxt = fns[state](ctx)
                if nxt is None:
                    if pending is not None:
                        nxt, pending = pending, None
                    elif state in before_target:
                        nxt = before_target[state]
                    else:
                        raise self._illegal(state, None, trans[state])
                else:
                    pending = None
                guarded = before.get(nxt) if before else None
                if guarded is None or guarded == state:
                    guarded = nxt
                if state in after:
                    if guarded not in chain_legal[state]:
                        raise self._illegal(state, nxt, chain_legal[state])
                    pending, nxt = nxt, after[state]
                else:
                    if guarded not in trans[state]:
                        raise self._illegal(state, nxt, trans[state])
                    nxt = guarded
                watcher = self.on_transition  # read per transition: it may be set while a state runs
                if watcher is not None:
                    watcher(state, nxt)
                state = nxt
            self.position = None
        except BaseException as exc:
            if self.on_exception is not None:
                self.on_exception(ctx, exc)
            raise

    def _illegal(self, state: str, nxt: object, legal: set[str]) -> IllegalTransition:
        """Name what the function returned and the targets it may return (inserted guards mapped back)."""
        shown = {self._before_target.get(t, t) for t in legal}
        return IllegalTransition(self.name, state, nxt, shown)

    # -- display ------------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        width = max((len(s) for s in self.transitions), default=0)
        lines = [f"Machine {self.name!r} (initial: {self.initial})"]
        for src, targets in self.transitions.items():
            fn = self.functions[src]
            label = getattr(fn, "__qualname__", None) or type(fn).__qualname__
            lines.append(f"  {src:<{width}} -> {' | '.join(sorted(targets))}    [{label}]")
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """The transition graph as a Mermaid `stateDiagram-v2`."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for src, targets in self.transitions.items():
            for dst in sorted(targets):
                lines.append(f"    {src} --> {'[*]' if dst == self.final else dst}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The transition graph in Graphviz dot."""
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR;"]
        for src, targets in self.transitions.items():
            for dst in sorted(targets):
                lines.append(f'  "{src}" -> "{dst}";')
        lines.append("}")
        return "\n".join(lines)
