"""TraceRecorder: record the run's events as a trace (JSON Lines, `engine.trace`), the input of diff/replay/verify.

Levels: 'epoch' records the run's boundaries (setup, epochs, validation runs, checkpoints, exceptions), every
`MetricsWritten` and every `ControlRequested`; 'step' adds one record per batch (loss, learning rates, batch
fingerprint, gradient norm when a clip provider measured it, a parameter checksum every N steps); 'full' records every
event, `StateChanged` included. Values that are still tensors are kept and converted when the sink flushes, so at
'step' the recorder adds no device sync. The sink is a `TraceWriter` (a file) or a `TraceVerifier` (compare live).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine import events as ev
from engine.bus import TRACE, Bus, Subscription
from engine.trace.schema import SCHEMA_VERSION, TraceConfig
from engine.trace.writer import TraceWriter, rank_path

__all__ = ["TraceRecorder", "fingerprint", "default_trace_path"]

_EPOCH_EVENTS = (
    ev.Setup, ev.Teardown, ev.FitStarted, ev.FitEnded, ev.SanityCheckStarted, ev.SanityCheckEnded, ev.TrainStarted,
    ev.TrainEnded, ev.EpochStarted, ev.EpochEnded, ev.EpochCompleted, ev.ValidationStarted, ev.ValidationEnded,
    ev.TestStarted, ev.TestEnded, ev.PredictStarted, ev.PredictEnded, ev.ExceptionRaised, ev.SaveCheckpoint,
    ev.LoadCheckpoint, ev.MetricsWritten, ev.ControlRequested)
_STEP_EVENTS = _EPOCH_EVENTS + (ev.BatchEnded, ev.ValidationBatchEnded, ev.TestBatchEnded, ev.PredictBatchEnded)
LEVEL_EVENTS: dict[str, tuple[type, ...]] = {"epoch": _EPOCH_EVENTS, "step": _STEP_EVENTS, "full": ev.CATALOGUE}
# the boundaries where buffered records are written out
_FLUSH_AT = (ev.EpochCompleted, ev.ValidationEnded, ev.TestEnded, ev.PredictEnded, ev.SanityCheckEnded)
_WITH_CBM = (ev.EpochEnded, ev.ValidationEnded, ev.TestEnded, ev.EpochCompleted)


def default_trace_path(log_dir: str | os.PathLike, rank: int, path: str | None = None) -> Path:
    """`log_dir/trace.jsonl` (or `path`); rank r > 0 writes `trace.rank<r>.jsonl` beside it."""
    return rank_path(Path(path) if path else Path(log_dir) / "trace.jsonl", rank)


def _tensors(batch: Any, out: list[Tensor]) -> list[Tensor]:
    if type(batch) is Tensor:
        out.append(batch)
    elif isinstance(batch, (list, tuple)):
        for item in batch:
            _tensors(item, out)
    elif isinstance(batch, dict):
        for item in batch.values():
            _tensors(item, out)
    return out


def fingerprint(batch: Any) -> str | Tensor | None:
    """A cheap hash of the batch tensors' bytes: crc32 on the CPU (hex), an int64 tensor reduced on the device
    otherwise (converted at flush: no sync now). None when the batch holds no tensor."""
    tensors = batch if type(batch) in (tuple, list) and all(type(t) is Tensor for t in batch) else \
        _tensors(batch, [])
    if not tensors:
        return None
    crc = 0
    for t in tensors:
        try:
            crc = zlib.crc32(t.numpy(), crc)  # the usual CPU batch: no copy
        except (TypeError, ValueError, RuntimeError, BufferError):
            if t.device.type != "cpu":
                return _device_fingerprint(tensors)
            # requires grad, non-contiguous, or a dtype numpy has not (bfloat16): hash the values' bytes
            crc = zlib.crc32(t.detach().contiguous().view(-1).view(torch.uint8).numpy(), crc)
    return format(crc, "08x")


def _device_fingerprint(tensors: list[Tensor]) -> Tensor:
    """A position-weighted sum of the bytes of each tensor, on its device (int64; wraps on overflow)."""
    total = None
    for i, t in enumerate(tensors):
        b = t.detach().contiguous().view(-1).view(torch.uint8).to(torch.int64)
        h = (b * torch.arange(1, b.numel() + 1, device=b.device, dtype=torch.int64)).sum() * (2 * i + 1)
        total = h if total is None else total * 1000003 + h
    return total


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _metrics(metrics: Any) -> dict[str, Any]:
    """callback_metrics to keep: tensors detached and cloned (they are converted at flush)."""
    return {k: (v.detach().clone() if isinstance(v, Tensor) else v) for k, v in metrics.items()
            if not isinstance(v, Tensor) or v.numel() == 1}


class TraceRecorder:
    """The recording handler: subscribes the events of its level and hands one record per event to its sink."""

    priority = TRACE

    def __init__(self, config: TraceConfig, sink: Any = None) -> None:
        self.config = config
        self.sink = sink  # None: a TraceWriter made at the first Setup, at the path resolved then
        wanted = set(LEVEL_EVENTS[config.level]) | {t for t in ev.CATALOGUE if t.__name__ in config.include}
        self.events = tuple(t for t in ev.CATALOGUE if t in wanted and t.__name__ not in config.exclude)
        self.seq = 0
        self.rank = 0
        self.path: Path | None = None
        self._fit_machine: Any = None
        self._eval_machine: Any = None
        self._groups: list[dict] = []
        self._params: list[Tensor] = []
        self._last_checksum = -1
        self._phase: Any = None  # the run's PhaseContext (its grad_norm), when the run has one
        self._fingerprints = config.fingerprints
        self._checksum_every = config.param_checksum_every

    # -- attachment ----------------------------------------------------------------------------------------------
    def subscribe(self, bus: Bus, lifetime: bool = False) -> list[Subscription]:
        """Subscribe the level's events in the TRACE band (the run removes the subscriptions when it ends);
        `lifetime=True`: only StateChanged, which the machine must see listened to before a run starts."""
        name = type(self).__qualname__
        subs = []
        with bus.batch():
            for t in self.events:
                if (t is ev.StateChanged) != lifetime:
                    continue
                fn = self.on_batch_ended if t is ev.BatchEnded else self.record
                subs.append(bus.subscribe(t, fn, priority=TRACE, name=f"{name}.{t.__name__}"))
        return subs

    # -- the run's start -----------------------------------------------------------------------------------------
    def _start(self, event: ev.Event) -> None:
        run = event.run
        self.rank = run.global_rank
        self._fit_machine = getattr(run, "machine", None)
        self._eval_machine = getattr(run, "eval_machine", None)
        if self.sink is None:
            trainer = event.trainer
            root = "."
            if trainer is not None:  # rank 0's log dir on every rank (each rank reaches Setup): one run, one folder
                root = trainer.strategy.broadcast(trainer.log_dir if self.rank == 0 else None) or trainer.log_dir
            self.path = default_trace_path(root, self.rank, self.config.path)
            self.sink = TraceWriter(self.path, self.config.flush_every)
        if self.sink.is_open:
            return
        if self.sink.started:  # a later run of the same Trainer (fit, then test): append to the same trace
            self.sink.reopen(run)
        else:
            self.seq = 0
            self.sink.open(self.header(run), run)

    def header(self, run: Any) -> dict[str, Any]:
        """Versions, the Trainer config and resolved settings, the machines, the handler order, the world size."""
        import engine

        config = getattr(run, "config", None)
        settings = getattr(run, "settings", None)
        bus = getattr(run, "bus", None)
        machines = {m.name: m.to_mermaid() for m in (self._fit_machine, self._eval_machine) if m is not None}
        handlers = {}
        if bus is not None:
            for t in ev.CATALOGUE:
                order = bus.order(t)
                if order:
                    handlers[t.__name__] = order
        module = getattr(run, "module", None)
        seed = os.environ.get("PL_GLOBAL_SEED")
        return {
            "schema_version": SCHEMA_VERSION, "kind": "statetrain-trace", "engine": engine.__version__,
            "torch": torch.__version__, "python": platform.python_version(), "created": time.time(),
            "rank": self.rank, "world_size": run.world_size, "seed": int(seed) if seed and seed.isdigit() else None,
            "trace": self.config.model_dump(), "config": config.to_json_dict() if config is not None else {},
            "settings": _settings(settings), "machines": machines, "handlers": handlers,
            "module": None if module is None else type(module).__qualname__, "argv": list(sys.argv),
        }

    # -- recording -----------------------------------------------------------------------------------------------
    def _state(self) -> str | None:
        fm, em = self._fit_machine, self._eval_machine
        pos = fm.position if fm is not None else None
        inner = em.position if em is not None else None
        if inner is not None:
            return inner if pos is None else f"{pos}/{inner}"
        return pos

    def on_batch_ended(self, event: ev.BatchEnded) -> None:
        """The per-step record: kept small; tensors are kept, not converted."""
        out = event.outputs
        run = event.run
        fm, em = self._fit_machine, self._eval_machine
        state = fm.position if fm is not None else None
        if em is not None and em.position is not None:
            state = f"{state}/{em.position}"
        rec = {"seq": self.seq, "ev": "BatchEnded", "ts": event.timestamp, "rank": self.rank, "stage": run.stage,
               "state": state, "batch_idx": event.batch_idx}
        self.seq += 1
        if type(out) is dict:
            loss = out.get("loss")
            if loss is not None:
                rec["loss"] = loss
        groups = self._groups
        if groups:
            rec["lr"] = [g["lr"] for g in groups]
        if self._fingerprints:
            fp = fingerprint(event.batch)
            if fp is not None:
                rec["fp"] = fp
        phase = self._phase
        if phase is not None and phase.grad_norm is not None:
            rec["gn"] = phase.grad_norm
        every = self._checksum_every
        if every:
            step = event.timestamp.global_step
            if step % every == 0 and step != self._last_checksum and self._params:
                self._last_checksum = step
                rec["pc"] = torch.stack([p.detach().double().sum() for p in self._params]).sum()
        rec["wall"] = time.time()
        self.sink.add(rec)

    def record(self, event: ev.Event) -> None:
        """Any other event: the common keys plus what this event type carries."""
        t = type(event)
        if t is ev.Setup:
            self._start(event)
        run = event.run
        sink = self.sink
        if sink is None or not sink.is_open:  # StateChanged outside a recorded run
            return
        rec: dict[str, Any] = {"seq": self.seq, "ev": t.__name__, "ts": event.timestamp, "rank": self.rank,
                               "stage": run.stage, "state": self._state()}
        self.seq += 1
        if t is ev.MetricsWritten:
            rec["metrics"] = dict(event.metrics)
            rec["step"] = event.step
        elif t is ev.ControlRequested:
            r = event.request
            rec["request"] = {"action": r.action, "by": r.by, "reason": r.reason}
        elif t in (ev.Setup, ev.Teardown):
            rec["fn"] = event.stage
        elif t is ev.StateChanged:
            rec["machine"], rec["src"], rec["dst"] = event.machine, event.src, event.dst
        elif t is ev.ExceptionRaised:
            rec["error"] = f"{type(event.exception).__name__}: {event.exception}"
        elif isinstance(event, ev.EvalBatchEnded):
            rec["batch_idx"], rec["dataloader_idx"] = event.batch_idx, event.dataloader_idx
            out = event.outputs
            loss = out if type(out) is Tensor else out.get("loss") if type(out) is dict else None
            if type(loss) is Tensor and loss.numel() == 1:
                rec["loss"] = loss.detach()
            if self.config.fingerprints:
                fp = fingerprint(event.batch)
                if fp is not None:
                    rec["fp"] = fp
        elif isinstance(event, (ev.BatchStarted, ev.EvalBatchStarted, ev.BatchCompleted)):
            rec["batch_idx"] = event.batch_idx
        if t in _WITH_CBM:
            rec["cbm"] = _metrics(run.callback_metrics)
        if t is ev.FitStarted or t is ev.EpochStarted:
            self._watch_optimizers(run)
        rec["wall"] = time.time()
        sink.add(rec)
        if t is ev.Setup:
            self._hyperparams(event)
        if t is ev.Teardown or t is ev.ExceptionRaised:  # the run is over: a later run appends
            sink.close()
        elif t in _FLUSH_AT:
            sink.flush()

    def _watch_optimizers(self, run: Any) -> None:
        pipeline = getattr(run, "pipeline", None)
        opts = list(pipeline.optimizers) if pipeline is not None else []
        self._phase = pipeline.context if pipeline is not None else None
        self._groups = [g for o in opts for g in o.param_groups]
        module = getattr(run, "module", None)
        self._params = [p for p in module.parameters()] if module is not None and self.config.param_checksum_every \
            else []

    def _hyperparams(self, event: ev.Event) -> None:
        """What the loggers' log_hyperparams receives this run (for a replay into loggers)."""
        run = event.run
        hyperparams = getattr(run, "hyperparams", None)
        if hyperparams is None or not getattr(run, "loggers", None) or event.stage == "predict":
            return
        params = hyperparams()
        if params is None:
            return
        rec = {"seq": self.seq, "ev": "Hyperparams", "ts": event.timestamp, "rank": self.rank, "stage": run.stage,
               "state": self._state(), "params": _jsonable(params), "wall": time.time()}
        self.seq += 1
        self.sink.add(rec)

    def close(self) -> None:
        """Write what is held and close the file (the Trainer does it at exit too)."""
        if self.sink is not None:
            self.sink.close()


def _settings(settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    import dataclasses

    out = {}
    for f in dataclasses.fields(settings):
        if f.name in ("callbacks", "logger", "profiler"):
            continue
        out[f.name] = _jsonable(getattr(settings, f.name))
    return out
