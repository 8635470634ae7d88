"""Replay a trace through handlers, without a Trainer, a model or data.

`replay(trace, handlers)` rebuilds each recorded event with a stub run view (`ReplayRun`: the recorded Timestamp,
stage and callback metrics, a fresh `Control` that collects what the replayed handlers decide) and feeds the events,
in order, to the handlers: rebuild TensorBoard or CSV logs from a trace (a logger receives every recorded
`MetricsWritten` and the run's hyperparameters), or run EarlyStopping or your own handler against a recorded run to
see what it would have decided. Lightning callbacks get a `ReplayTrainer` in place of the Trainer; native handlers
see `event.trainer` as None (see `engine.events`). Anything the trace did not record (the batch, the optimizer, the
model) is a placeholder that raises `TraceFieldMissing` naming the field as soon as a handler touches it.

callback_metrics in a replay are those recorded at the last epoch or validation boundary (the values EarlyStopping
and checkpoint monitors read there); between boundaries they are not updated.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from engine import events as ev
from engine.bus import LOGGER, Bus
from engine.control import Control, ControlRequest
from engine.state import RunStatus, Stage, Timestamp
from engine.trace.reader import Trace, read_trace

__all__ = ["replay", "ReplayResult", "ReplayRun", "ReplayTrainer", "TraceFieldMissing", "Unrecorded", "build_event"]

_EVENTS: dict[str, type[ev.Event]] = {t.__name__: t for t in ev.CATALOGUE}
_STAGE_OF = {"fit": Stage.TRAIN, "validate": Stage.VALIDATE, "test": Stage.TEST, "predict": Stage.PREDICT}


class TraceFieldMissing(AttributeError):
    """A replayed handler used something the trace did not record."""


class Unrecorded:
    """Stands in for an event field the trace has no value for; any use raises TraceFieldMissing naming it."""

    __slots__ = ("_what", "_level")

    def __init__(self, what: str, level: str) -> None:
        object.__setattr__(self, "_what", what)
        object.__setattr__(self, "_level", level)

    def _missing(self, *args: Any, **kwargs: Any) -> Any:
        raise TraceFieldMissing(
            f"{self._what} was not recorded in the trace (level {self._level!r}), so a replay cannot give it to the "
            "handler; handlers that replay read the recorded scalars (loss, lr, metrics, callback_metrics, "
            "Timestamp); record with a higher level (Trainer(trace='full')) or keep this handler out of the replay")

    def __getattr__(self, name: str) -> Any:
        self._missing()

    __getitem__ = __iter__ = __len__ = __bool__ = __float__ = __int__ = __index__ = __call__ = _missing
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __lt__ = __gt__ = _missing
    __le__ = __ge__ = __contains__ = __setitem__ = _missing

    def __repr__(self) -> str:
        return f"<unrecorded {self._what}>"


class RecordedException(Exception):
    """The exception of a recorded ExceptionRaised, as 'Type: message'."""


class ReplayRun:
    """The RunView a replayed event carries: the recorded Timestamp, stage and callback metrics."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        self.header = header
        self.timestamp = Timestamp()
        self.stage: str | None = None
        self.fn: str | None = None
        self.callback_metrics: dict[str, Any] = {}
        self.logged_metrics: dict[str, float] = {}
        self.global_rank = int(header.get("rank", 0))
        self.world_size = int(header.get("world_size", 1))
        self.control = Control(lambda: self.timestamp)
        self.trainer = None
        self.status = RunStatus()

    def update(self, rec: Mapping[str, Any]) -> None:
        ts = rec.get("ts")
        if ts:
            self.timestamp = Timestamp(*ts)
        self.stage = rec.get("stage", self.stage)
        if rec["ev"] == "Setup":
            self.fn = rec.get("fn")
            self.status.fn, self.status.status = self.fn, "running"
            self.control.reset()
        if rec["ev"] == "Teardown":
            self.status.status = "finished"
        self.status.stage = self.stage
        cbm = rec.get("cbm")
        if cbm is not None:
            self.callback_metrics = {k: torch.tensor(v) if isinstance(v, (int, float)) else v for k, v in cbm.items()}
        if rec["ev"] == "MetricsWritten":
            self.logged_metrics.update(rec.get("metrics") or {})


class _ReplayStrategy:
    def __init__(self, run: ReplayRun) -> None:
        self.global_rank, self.world_size = run.global_rank, run.world_size
        self.local_rank, self.node_rank, self.is_global_zero = 0, 0, run.global_rank == 0

    def __getattr__(self, name: str) -> Any:
        raise TraceFieldMissing(f"trainer.strategy.{name} is not available in a replay (there is no strategy)")


class ReplayTrainer:
    """What a Lightning callback gets as `trainer` in a replay: the recorded run state and the resolved flags;
    anything else raises TraceFieldMissing naming the attribute."""

    def __init__(self, run: ReplayRun, loggers: list[Any]) -> None:
        self._run = run
        self.settings = dict(run.header.get("settings") or {})
        self.loggers = loggers
        self.strategy = _ReplayStrategy(run)

    @property
    def run(self) -> ReplayRun:
        return self._run

    state = property(lambda self: self._run.status)
    control = property(lambda self: self._run.control)
    callback_metrics = property(lambda self: self._run.callback_metrics)
    logged_metrics = property(lambda self: self._run.logged_metrics)
    timestamp = property(lambda self: self._run.timestamp)
    current_epoch = property(lambda self: self._run.timestamp.epoch)
    global_step = property(lambda self: self._run.timestamp.global_step)
    global_rank = property(lambda self: self._run.global_rank)
    world_size = property(lambda self: self._run.world_size)
    is_global_zero = property(lambda self: self._run.global_rank == 0)
    local_rank = property(lambda self: 0)
    sanity_checking = property(lambda self: self._run.stage == Stage.SANITY_CHECK)
    training = property(lambda self: self._run.stage == Stage.TRAIN)
    validating = property(lambda self: self._run.stage == Stage.VALIDATE)
    testing = property(lambda self: self._run.stage == Stage.TEST)
    predicting = property(lambda self: self._run.stage == Stage.PREDICT)
    logger = property(lambda self: self.loggers[0] if self.loggers else None)
    lightning_module = property(lambda self: Unrecorded("trainer.lightning_module (a replay has no model)", "any"))

    @property
    def should_stop(self) -> bool:
        return self._run.control.stop_requested

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self._run.control.request_stop("trainer.should_stop = True", by="replayed handler")
        else:
            self._run.control.stop_requested = False

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise TraceFieldMissing(
            f"trainer.{name} is not available in a replay: the ReplayTrainer has the recorded run state "
            "(current_epoch, global_step, callback_metrics, logged_metrics, state, sanity_checking, control, "
            f"should_stop) and the resolved flags ({', '.join(sorted(settings)[:6])}, ...)")


def build_event(t: type[ev.Event], rec: Mapping[str, Any], run: ReplayRun, level: str) -> ev.Event:
    """The event `t` rebuilt from its record; fields the record lacks become `Unrecorded` placeholders."""
    ts = run.timestamp
    values: list[Any] = []
    name = t.__name__
    for f in dataclasses.fields(t)[2:]:
        key = f.name
        if key == "stage":
            v: Any = rec.get("fn")
        elif key == "outputs":
            v = {"loss": torch.tensor(rec["loss"])} if "loss" in rec else (
                {} if t is ev.BatchEnded else Unrecorded(f"{name}.outputs", level))
        elif key in ("batch_idx", "dataloader_idx", "metrics", "step", "machine", "src", "dst"):
            v = rec.get(key, 0 if key == "dataloader_idx" else Unrecorded(f"{name}.{key}", level))
        elif key == "num_dataloaders":
            v = int(rec.get("dataloader_idx", 0)) + 1
        elif key == "stepped":
            v = True
        elif key == "request":
            r = rec.get("request") or {}
            v = ControlRequest(r.get("action", "?"), r.get("by", "?"), ts, r.get("reason", ""))
        elif key == "exception":
            v = RecordedException(rec.get("error", ""))
        else:
            v = Unrecorded(f"{name}.{key}", level)
        values.append(v)
    return t(run, ts, *values)


@dataclass
class ReplayResult:
    """What a replay did: events fed, the control requests the replayed handlers made, and the recorded ones."""

    events: int
    requests: list[ControlRequest] = field(default_factory=list)
    recorded_requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_stop(self) -> ControlRequest | None:
        return next((r for r in self.requests if r.action == "stop"), None)

    def __str__(self) -> str:
        lines = [f"replayed {self.events} events"]
        for r in self.requests:
            lines.append(f"  {r.action} requested by {r.by} at {r.timestamp}: {r.reason}")
        if not self.requests:
            lines.append("  the replayed handlers made no control request")
        for r in self.recorded_requests:
            req = r.get("request", {})
            lines.append(f"  (recorded run: {req.get('action')} by {req.get('by')} at {Timestamp(*r['ts'])})")
        return "\n".join(lines)


def _is_logger(obj: Any) -> bool:
    return all(callable(getattr(type(obj), a, None)) for a in ("log_metrics", "log_hyperparams", "finalize"))


def replay(trace: str | os.PathLike | Trace, handlers: list[Any]) -> ReplayResult:
    """Feed the recorded events to `handlers` (handler objects, Lightning callbacks, loggers); see the module."""
    from engine import assembly

    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    run = ReplayRun(trace.header)
    loggers = [h for h in handlers if _is_logger(h)]
    others = [h for h in handlers if not _is_logger(h)]
    trainer = ReplayTrainer(run, loggers)
    bus = Bus()
    subs, attached = assembly.replay_attach(bus, others, trainer)
    for lg in loggers:
        def write(event: ev.MetricsWritten, lg: Any = lg) -> None:
            lg.log_metrics(event.metrics, event.step)
            lg.save()
        subs.append(bus.subscribe(ev.MetricsWritten, write, priority=LOGGER, name=f"{type(lg).__qualname__}.log_metrics"))
    level = trace.level
    fed = 0
    recorded = []
    try:
        for rec in trace.records:
            run.update(rec)
            name = rec["ev"]
            if name == "Hyperparams":
                for lg in loggers:
                    lg.log_hyperparams(rec.get("params") or {})
                    lg.save()
                continue
            if name == "ControlRequested":
                recorded.append(rec)
            t = _EVENTS.get(name)
            if t is None:
                continue
            hs = bus.table.get(t)
            if not hs:
                continue
            bus.call(hs, build_event(t, rec, run, level))
            fed += 1
    finally:
        for sub in subs:
            sub.remove()
        for h in attached:
            bus.detach(h)
        for lg in loggers:
            lg.finalize("success")
    return ReplayResult(fed, list(run.control.history), recorded)
