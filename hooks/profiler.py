"""Profilers: where the time of a run goes, per machine state and per handler (Lightning's `profiler=` flag).

`SimpleProfiler` times every state function of the fit and evaluation machines and every handler call per event type
(through `Machine.add_instrumentation` / `Bus.add_instrumentation`, which coexist with other instrumentations, so
nothing costs anything when no profiler is attached) and prints a table, slowest first: "why is my training slow" answered by name, e.g. `handler:TQDMProgressBar.on_train_batch_end@
BatchEnded`. `AdvancedProfiler` runs a cProfile per action (the same states and handlers) and prints
each one's function-level stats, as Lightning's does. `PyTorchProfiler` runs the run under
`torch.profiler.profile` and writes a trace TensorBoard can load.

The trainer calls `profiler.attach(trainer, stage)` before a run and `profiler.detach(trainer)` then
`profiler.describe()` after it; both can be called by hand. `profile(name)` times any block of user code.
"""

from __future__ import annotations

import cProfile
import inspect
import io
import os
import pstats
import re
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from engine.errors import MisconfigurationException, user_stacklevel
from engine.events import BatchEnded, EvalBatchEnded, Setup
from engine.log import log

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer

__all__ = ["Profiler", "PassThroughProfiler", "SimpleProfiler", "AdvancedProfiler", "PyTorchProfiler",
           "resolve_profiler"]


class Profiler:
    """Base class (Lightning's API): `start/stop(action)`, `profile(action)`, `summary()`, `describe()`,
    `setup(stage, local_rank, log_dir)`, `teardown(stage)`; plus `attach/detach(trainer)` for the engine."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._output_file: TextIO | None = None
        self._trainer: "Trainer | None" = None

    # -- Lightning's API ------------------------------------------------------------------------------------------
    def start(self, action_name: str) -> None:
        """Start timing `action_name`."""

    def stop(self, action_name: str) -> None:
        """Stop timing `action_name` and record its duration."""

    def summary(self) -> str:
        """The report as text ("" when there is nothing to report)."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """Time the enclosed block as `action_name`: `with trainer.profiler.profile("load"): ...`."""
        try:
            self.start(action_name)
            yield action_name
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Remember the stage and rank (they prefix the output file name); `dirpath` defaults to `log_dir`."""
        self._stage = stage
        self._local_rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def teardown(self, stage: str | None) -> None:
        """Close the report file, if one is open."""
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    def describe(self) -> str:
        """Report once the run is over: log the summary (rank 0), also append it to
        `dirpath/<stage>-<filename>.txt` when a filename was given, and return it."""
        text = self.summary()
        if text:
            if self._local_rank in (None, 0):
                log.info("profiler report", profiler=type(self).__name__, stage=self._stage, report=text)
            if self.filename and self.dirpath:
                os.makedirs(self.dirpath, exist_ok=True)
                path = os.path.join(self.dirpath, self._prepare_filename())
                self._output_file = open(path, "a")  # noqa: SIM115  (closed in teardown)
                self._output_file.write(text)
                self._output_file.flush()
        self.teardown(self._stage)
        return text

    @property
    def local_rank(self) -> int:
        return 0 if self._local_rank is None else self._local_rank

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """`<stage>-<filename>-<rank>-<action><extension>`, unsafe path characters replaced (Lightning's names)."""
        parts = [p for p in (self._stage, self.filename,
                             None if self._local_rank is None else str(self._local_rank), action_name) if p]
        base = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", "-".join(parts))).strip()
        return (base or "profile") + extension

    # -- engine integration ---------------------------------------------------------------------------------------
    def attach(self, trainer: "Trainer", stage: str | None = None) -> None:
        """Start profiling `trainer`'s next run: `setup(stage, rank, log_dir)`; subclasses add their instrumentation.

        `stage` defaults to `trainer.state.fn` (call this after the trainer set it) or 'fit'."""
        if self._trainer is not None:
            raise MisconfigurationException(
                f"{type(self).__name__}.attach: already attached to a trainer; call detach(trainer) first")
        machines = [m for m in (getattr(trainer, "machine", None), getattr(trainer, "eval_machine", None))
                    if m is not None]
        def profiled(owners: list[object]) -> bool:
            return any(isinstance(o, Profiler) for o in owners)

        busy = [m.name for m in machines if profiled(m.instrumented_by())]
        if busy or profiled(trainer.bus.instrumented_by()):
            raise MisconfigurationException(
                f"{type(self).__name__}.attach: the trainer's {' and '.join(busy) or 'bus'} machine/bus is already "
                "instrumented by another profiler; attach one profiler per run (detach the other first)")
        self._trainer = trainer
        log_dir = getattr(trainer, "log_dir", None) or getattr(trainer, "default_root_dir", None)
        world = getattr(trainer, "world_size", 1)
        self.setup(stage or getattr(trainer.state, "fn", None) or "fit",
                   local_rank=trainer.local_rank if world > 1 else None, log_dir=log_dir)

    def detach(self, trainer: "Trainer") -> None:
        """Stop profiling `trainer` and remove every instrumentation `attach` installed (idempotent)."""
        self._trainer = None


class PassThroughProfiler(Profiler):
    """Profiles nothing: what `trainer.profiler` is when no profiler was asked for, so `profile()` always works."""

    def describe(self) -> str:
        return ""


class _Timings:
    """Accumulates [count, self seconds, inclusive seconds] per action; nested timed calls are subtracted from
    their caller's self time through a stack of child-time sums, so the self times add up to at most the run."""

    __slots__ = ("cells", "stack")

    def __init__(self) -> None:
        self.cells: dict[str, list[float]] = {}
        self.stack: list[float] = []

    def cell(self, action: str) -> list[float]:
        c = self.cells.get(action)
        if c is None:
            c = self.cells[action] = [0, 0.0, 0.0]
        return c

    def timed(self, action: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`fn` (one argument: a state's context or an event) with its calls timed under `action`."""
        cell, stack = self.cell(action), self.stack

        def timed(arg: Any) -> Any:
            stack.append(0.0)
            t0 = perf_counter()
            try:
                return fn(arg)
            finally:
                dt = perf_counter() - t0
                child = stack.pop()
                cell[0] += 1
                cell[1] += dt - child
                cell[2] += dt
                if stack:
                    stack[-1] += dt

        timed.__qualname__ = getattr(fn, "__qualname__", action)
        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


def _handler_label(event_type: type, name: str) -> str:
    """`handler:<Class>.<method>@<Event>`; classes defined inside functions lose their `f.<locals>.` prefix."""
    return f"handler:{name.rsplit('<locals>.', 1)[-1]}@{event_type.__name__}"


def _machine_label(machine: Any, state: str) -> str:
    return f"state:{state}" if machine.name == "fit" else f"state:{machine.name}.{state}"


class SimpleProfiler(Profiler):
    """Times each machine state and each handler call per event, plus any `profile(name)` block.

    Times in the table are self times: a state's row excludes the handlers and nested states it ran (their own
    rows hold that time), so rows add up and the slowest handler shows at the top. `stats()` also has inclusive
    times. `extended=False` keeps only the Action, Mean and Total columns (sorted by mean), as in Lightning."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self._timings = _Timings()
        self._open: dict[str, float] = {}
        self._t_start = perf_counter()
        self._t_end: float | None = None
        self._machines: list[Any] = []
        self._bus: Any = None

    def start(self, action_name: str) -> None:
        if action_name in self._open:
            raise ValueError(f"SimpleProfiler.start({action_name!r}): this action has already started; "
                             f"call stop({action_name!r}) first")
        self._open[action_name] = perf_counter()

    def stop(self, action_name: str) -> None:
        end = perf_counter()
        if action_name not in self._open:
            raise ValueError(f"SimpleProfiler.stop({action_name!r}): this action was never started; "
                             f"call start({action_name!r}) first")
        dt = end - self._open.pop(action_name)
        cell = self._timings.cell(action_name)
        cell[0] += 1
        cell[1] += dt  # user actions are not nested into the self-time stack: self == inclusive
        cell[2] += dt

    # -- engine integration ---------------------------------------------------------------------------------------
    def attach(self, trainer: "Trainer", stage: str | None = None) -> None:
        """Reset the tables and time every state of `trainer.machine`/`trainer.eval_machine` and every handler."""
        super().attach(trainer, stage)
        machines = [m for m in (trainer.machine, trainer.eval_machine) if m is not None]
        self._timings = _Timings()
        self._open = {}
        self._t_start, self._t_end = perf_counter(), None
        timings = self._timings
        for m in machines:
            m.add_instrumentation(lambda state, fn, m=m: timings.timed(_machine_label(m, state), fn), owner=self)
        trainer.bus.add_instrumentation(lambda t, name, fn: timings.timed(_handler_label(t, name), fn), owner=self)
        self._machines, self._bus = machines, trainer.bus

    def detach(self, trainer: "Trainer") -> None:
        if self._bus is not None:
            self._bus.remove_instrumentation(self)
            for m in self._machines:
                m.remove_instrumentation(self)
            self._t_end = perf_counter()
        self._machines, self._bus = [], None
        super().detach(trainer)

    # -- report ---------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, float]]:
        """{action: {'count', 'total' (self seconds), 'mean', 'inclusive'}} for every action that ran."""
        return {a: {"count": int(c[0]), "total": c[1], "mean": c[1] / c[0], "inclusive": c[2]}
                for a, c in self._timings.cells.items() if c[0]}

    def run_seconds(self) -> float:
        """Wall time from attach (or construction) to detach (or now)."""
        return (self._t_end if self._t_end is not None else perf_counter()) - self._t_start

    def summary(self) -> str:
        stats = self.stats()
        if not stats:
            return ""
        run = self.run_seconds()
        title = (f"{self._stage.upper()} " if self._stage else "") + f"Profiler Report (run: {run:.4f} s)"
        if self.extended:
            header = ("Action", "Count", "Total (s)", "Mean (s)", "% of run")
            rows = [("Total", str(sum(s["count"] for s in stats.values())), f"{run:.6f}", "-", "100.0 %")]
            ordered = sorted(stats.items(), key=lambda kv: kv[1]["total"], reverse=True)
            rows += [(a, str(s["count"]), f"{s['total']:.6f}", f"{s['mean']:.6f}",
                      f"{100.0 * s['total'] / run if run > 0 else 0.0:.1f} %") for a, s in ordered]
        else:
            header = ("Action", "Mean (s)", "Total (s)")
            ordered = sorted(stats.items(), key=lambda kv: kv[1]["mean"], reverse=True)
            rows = [(a, f"{s['mean']:.6f}", f"{s['total']:.6f}") for a, s in ordered]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-+-".join("-" * w for w in widths)
        out = [title, line(header), rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]
        if self.extended:
            out.append("Times are self times: nested states and handlers are counted in their own rows.")
        return "\n".join(out) + "\n"


# -- AdvancedProfiler ---------------------------------------------------------------------------------------------
class AdvancedProfiler(Profiler):
    """One `cProfile.Profile` per action (each machine state, each handler per event, each `profile(name)` block),
    reported with `pstats` sorted by cumulative time. Only one profile records at a time: an action started inside
    another pauses the outer one until it stops, so each action's stats are its own calls (Lightning's profiler
    pauses the outer one for good). `line_count_restriction` limits the lines per action (an int, or a fraction);
    `dump_stats=True` also writes `<dirpath>/<stage>-<filename>-<action>.prof` files for snakeviz/pstats."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if not isinstance(line_count_restriction, (int, float)) or line_count_restriction <= 0:
            raise ValueError(f"AdvancedProfiler(line_count_restriction={line_count_restriction!r}): expected a "
                             "number of lines (int) or a fraction of them (0 < float <= 1)")
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        self._active: list[str] = []
        self._machines: list[Any] = []
        self._bus: Any = None

    def start(self, action_name: str) -> None:
        if self._active:
            self.profiled_actions[self._active[-1]].disable()
        profile = self.profiled_actions.get(action_name)
        if profile is None:
            profile = self.profiled_actions[action_name] = cProfile.Profile()
        self._active.append(action_name)
        profile.enable()

    def stop(self, action_name: str) -> None:
        profile = self.profiled_actions.get(action_name)
        if profile is None or action_name not in self._active:
            raise ValueError(f"AdvancedProfiler.stop({action_name!r}): attempting to stop recording an action "
                             f"which was never started; call start({action_name!r}) first")
        profile.disable()
        self._active.remove(action_name)
        if self._active:
            self.profiled_actions[self._active[-1]].enable()

    def _profiled(self, action: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def profiled(arg: Any) -> Any:
            self.start(action)
            try:
                return fn(arg)
            finally:
                self.stop(action)

        profiled.__qualname__ = getattr(fn, "__qualname__", action)
        profiled.__wrapped__ = fn  # type: ignore[attr-defined]
        return profiled

    def attach(self, trainer: "Trainer", stage: str | None = None) -> None:
        """Start a fresh set of profiles and profile every state of the trainer's machines and every handler."""
        super().attach(trainer, stage)
        self.profiled_actions, self._active = {}, []
        machines = [m for m in (trainer.machine, trainer.eval_machine) if m is not None]
        for m in machines:
            m.add_instrumentation(lambda state, fn, m=m: self._profiled(_machine_label(m, state), fn), owner=self)
        trainer.bus.add_instrumentation(lambda t, name, fn: self._profiled(_handler_label(t, name), fn), owner=self)
        self._machines, self._bus = machines, trainer.bus

    def detach(self, trainer: "Trainer") -> None:
        if self._bus is not None:
            self._bus.remove_instrumentation(self)
            for m in self._machines:
                m.remove_instrumentation(self)
        for action in reversed(self._active):  # an exception left actions open
            self.profiled_actions[action].disable()
        self._active = []
        self._machines, self._bus = [], None
        super().detach(trainer)

    def stats(self, action_name: str) -> pstats.Stats:
        """The `pstats.Stats` of one action (raises KeyError if it never ran)."""
        return pstats.Stats(self.profiled_actions[action_name])

    def summary(self) -> str:
        if not self.profiled_actions:
            return ""
        title = (f"{self._stage.upper()} " if self._stage else "") + "Profiler Report"
        out = [title]
        for action, profile in self.profiled_actions.items():
            if self.dump_stats and self.dirpath:
                os.makedirs(self.dirpath, exist_ok=True)
                profile.dump_stats(os.path.join(self.dirpath, self._prepare_filename(action, extension=".prof")))
            buf = io.StringIO()
            try:
                stats = pstats.Stats(profile, stream=buf)
            except TypeError:  # the action started but recorded no call
                continue
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            header = f"Profile stats for: {action}"
            if self._local_rank is not None:
                header += f" rank: {self._local_rank}"
            out += [header, buf.getvalue()]
        return os.linesep.join(out)

    def __reduce__(self) -> tuple:
        # a cProfile.Profile cannot be pickled (DDP spawn pickles the trainer's profiler)
        return (type(self), (self.dirpath, self.filename, self.line_count_restriction, self.dump_stats))


# -- PyTorchProfiler ----------------------------------------------------------------------------------------------
_SORT_KEYS = {"cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage", "cuda_memory_usage",
              "self_cpu_memory_usage", "self_cuda_memory_usage", "count"}


class _ModuleRanges:
    """Labels each submodule's forward in the trace (`[statetrain][module]<class>: <name>`), via forward hooks."""

    def __init__(self, model: Any) -> None:
        from torch.autograd.profiler import record_function

        self._record = record_function
        self._open: dict[str, list[Any]] = {}
        self._handles: list[Any] = []
        for name, module in model.named_modules():
            if name:
                label = f"[statetrain][module]{type(module).__module__}.{type(module).__name__}: {name}"
                self._handles.append(module.register_forward_pre_hook(partial(self._enter, label)))
                self._handles.append(module.register_forward_hook(partial(self._exit, label)))

    def _enter(self, label: str, module: Any, args: Any) -> None:
        rec = self._record(label)
        rec.__enter__()
        self._open.setdefault(label, []).append(rec)

    def _exit(self, label: str, module: Any, args: Any, output: Any) -> None:
        stack = self._open.get(label)
        if stack:
            stack.pop().__exit__(None, None, None)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _Schedule:
    """The profiler schedule: the user's as given, or Lightning's default (wait=1, warmup=1, active=3) recorded
    once; with fewer than 5 batches the default is replaced by recording every batch (trace written at the end)."""

    def __init__(self, user: Callable[[int], Any] | None) -> None:
        import torch.profiler as tp

        self.user = user
        self.fn = user if user is not None else tp.schedule(wait=1, warmup=1, active=3)
        self.done = False
        self._actions = tp.ProfilerAction

    def record_everything(self) -> None:
        self.fn = lambda step: self._actions.RECORD

    def __call__(self, step: int) -> Any:
        if self.done:
            return self._actions.NONE
        action = self.fn(step)
        if self.user is None and action == self._actions.RECORD_AND_SAVE:
            self.done = True
        return action


class PyTorchProfiler(Profiler):
    """Runs the run under `torch.profiler.profile` and writes a TensorBoard-loadable `*.pt.trace.json`.

    The profiler steps once per training batch (once per evaluation batch for validate/test/predict runs). States,
    handlers, `profile(name)` blocks and (record_module_names) submodule forwards appear as labelled ranges.
    Traces go to `dirpath`, else `<log_dir>/profiler`. Extra keyword arguments go to `torch.profiler.profile`
    (schedule, activities, record_shapes, profile_memory, with_stack, on_trace_ready, ...)."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        import torch.profiler as tp

        super().__init__(dirpath=dirpath, filename=filename)
        if emit_nvtx:
            raise NotImplementedError("PyTorchProfiler(emit_nvtx=True) is not available in statetrain; run under "
                                      "nsys with torch.cuda.nvtx ranges yourself, or leave emit_nvtx=False")
        accepted = set(inspect.signature(tp.profile.__init__).parameters) - {"self"}
        unknown = sorted(set(profiler_kwargs) - accepted)
        if unknown:
            raise TypeError(f"PyTorchProfiler got {', '.join(map(repr, unknown))}, which torch.profiler.profile does "
                            f"not accept; accepted: {', '.join(sorted(accepted))}")
        schedule = profiler_kwargs.pop("schedule", None)
        if schedule is not None:
            if not callable(schedule):
                raise MisconfigurationException(f"PyTorchProfiler(schedule={schedule!r}): expected a callable such "
                                                "as torch.profiler.schedule(wait=1, warmup=1, active=3)")
            action = schedule(0)
            if not isinstance(action, tp.ProfilerAction):
                raise MisconfigurationException(
                    f"PyTorchProfiler(schedule=...): schedule(0) returned {action!r}; it must return a "
                    "torch.profiler.ProfilerAction")
        self._user_schedule = schedule
        self._user_dirpath = dirpath
        self._group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", False)
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._record_module_names = record_module_names
        self._table_kwargs = dict(table_kwargs or {})
        self._profiler_kwargs = profiler_kwargs
        self._sort_by_key = sort_by_key or self._default_sort_key()
        if self._sort_by_key not in _SORT_KEYS:
            raise MisconfigurationException(
                f"PyTorchProfiler(sort_by_key={self._sort_by_key!r}): expected one of {', '.join(sorted(_SORT_KEYS))}")
        self.profiler: Any = None
        self.function_events: Any = None
        self.trace_dir: str | None = None
        self._schedule: _Schedule | None = None
        self._ranges: dict[str, Any] = {}
        self._modules: _ModuleRanges | None = None
        self._steps = 0
        self._subs: list[Any] = []
        self._machines: list[Any] = []
        self._bus: Any = None

    def _default_sort_key(self) -> str:
        import torch
        from torch.profiler import ProfilerActivity

        activities = self._profiler_kwargs.get("activities")
        cuda = (ProfilerActivity.CUDA in activities) if activities else torch.cuda.is_available()
        return "cuda_time_total" if cuda else "cpu_time_total"

    # -- ranges ---------------------------------------------------------------------------------------------------
    def start(self, action_name: str) -> None:
        if self.profiler is not None and action_name not in self._ranges:
            from torch.autograd.profiler import record_function

            rec = record_function("[statetrain][profile]" + action_name)
            rec.__enter__()
            self._ranges[action_name] = rec

    def stop(self, action_name: str) -> None:
        rec = self._ranges.pop(action_name, None)
        if rec is not None:
            rec.__exit__(None, None, None)

    # -- engine integration ---------------------------------------------------------------------------------------
    def attach(self, trainer: "Trainer", stage: str | None = None) -> None:
        """Enter `torch.profiler.profile`, label states and handlers, and step once per batch."""
        import torch
        import torch.profiler as tp
        from torch.autograd.profiler import record_function

        super().attach(trainer, stage)
        if torch.autograd._profiler_enabled():  # a profiler left open (e.g. describe() never called): close it
            torch.autograd._disable_profiler()
        base = self._user_dirpath or os.path.join(self.dirpath or ".", "profiler")
        self.trace_dir = str(base)
        kwargs = dict(self._profiler_kwargs)
        kwargs.setdefault("activities", [tp.ProfilerActivity.CPU]
                          + ([tp.ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
        self._schedule = _Schedule(self._user_schedule)
        kwargs["schedule"] = self._schedule
        if "on_trace_ready" not in kwargs and self._export_to_chrome:
            os.makedirs(self.trace_dir, exist_ok=True)
            worker = self._prepare_filename(action_name="training_step" if self._stage == "fit"
                                            else f"{self._stage}_step", extension="")
            kwargs["on_trace_ready"] = tp.tensorboard_trace_handler(self.trace_dir, worker_name=worker)
        self.function_events = None
        self._steps = 0
        self.profiler = tp.profile(**kwargs)
        self.profiler.__enter__()

        def labelled(label: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def run(arg: Any) -> Any:
                with record_function(label):
                    return fn(arg)
            return run

        self._machines = [m for m in (trainer.machine, trainer.eval_machine) if m is not None]
        for m in self._machines:
            m.add_instrumentation(lambda state, fn, m=m: labelled("[statetrain]" + _machine_label(m, state), fn),
                                  owner=self)
        trainer.bus.add_instrumentation(  # not our own step: a range open across profiler.step() upsets torch
            lambda t, name, fn: fn if name.startswith("PyTorchProfiler.") else labelled(
                "[statetrain]" + _handler_label(t, name), fn), owner=self)
        self._bus = trainer.bus
        event = BatchEnded if self._stage == "fit" else EvalBatchEnded
        self._subs = [trainer.bus.subscribe(event, self._on_batch_end, priority=10_000, name="PyTorchProfiler.step")]
        if self._record_module_names:  # the model is known once the run's Setup fires
            self._subs.append(trainer.bus.subscribe(Setup, self._on_setup, priority=10_000,
                                                    name="PyTorchProfiler.label_modules"))

    def _on_setup(self, event: Any) -> None:
        module = getattr(event.trainer, "lightning_module", None)
        if module is not None and self._modules is None:
            self._modules = _ModuleRanges(module)

    def _on_batch_end(self, event: Any) -> None:
        if self._steps == 0 and self._schedule is not None and self._schedule.user is None:
            if self._total_steps(event.trainer) < 5:
                warnings.warn("PyTorchProfiler: fewer than 5 batches, so the default schedule (wait=1, warmup=1, "
                              "active=3) is replaced by recording every batch", UserWarning, stacklevel=user_stacklevel())
                self._schedule.record_everything()
        self._steps += 1
        self.profiler.step()

    def _total_steps(self, trainer: Any) -> float:
        if self._stage == "fit":
            return trainer.num_training_batches
        what = {"validate": "val", "test": "test", "predict": "predict"}.get(self._stage or "", "val")
        return sum(getattr(trainer, f"num_{what}_batches", None) or [0])

    def detach(self, trainer: "Trainer") -> None:
        """Leave the torch profiler (the trace is written) and remove labels and the step subscription."""
        for sub in self._subs:
            sub.remove()
        self._subs = []
        if self._bus is not None:
            self._bus.remove_instrumentation(self)
            self._bus = None
        for m in self._machines:
            m.remove_instrumentation(self)
        self._machines = []
        if self._modules is not None:
            self._modules.remove()
            self._modules = None
        for name in list(self._ranges):
            self.stop(name)
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.function_events = self.profiler.events()
            self.profiler = None
        super().detach(trainer)

    def summary(self) -> str:
        """torch's operator table (key_averages) of the recorded batches; "" before detach or if nothing recorded."""
        if not self.function_events:
            return ""
        table = self.function_events.key_averages(group_by_input_shapes=self._group_by_input_shapes).table(
            sort_by=self._sort_by_key, row_limit=self._row_limit, **self._table_kwargs)
        title = (f"{self._stage.upper()} " if self._stage else "") + "Profiler Report"
        where = f"\nTrace files: {self.trace_dir}" if self.trace_dir and self._export_to_chrome else ""
        return f"{title}\nProfile stats for: records\n{table}{where}\n"


def resolve_profiler(value: Any) -> Profiler | None:
    """The `Trainer(profiler=...)` flag: None -> None, 'simple' / 'advanced' / 'pytorch' -> a new profiler, an
    instance as is."""
    if value is None or isinstance(value, Profiler):
        return value
    if isinstance(value, str):
        choices = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
        cls = choices.get(value.lower())
        if cls is None:
            raise MisconfigurationException(
                f"Trainer(profiler={value!r}): expected one of {list(choices)} or a Profiler instance")
        return cls()
    raise MisconfigurationException(
        f"Trainer(profiler={value!r}): expected 'simple', 'advanced', 'pytorch', a hooks.profiler.Profiler instance "
        "or None")
