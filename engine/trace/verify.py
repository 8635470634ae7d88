"""`Trainer(verify_trace=path)`: re-run training and compare every event with a recorded trace as it happens.

The verifier is the sink of a `TraceRecorder` configured like the recorded trace (level, fingerprints, checksums,
events): each live record is converted now (this mode syncs per record, it is for debugging) and compared with the
recorded one at the same position (`engine.trace.diff.compare_records`). At the first divergence it saves a
checkpoint of the run as it is (`divergence-step<N>.ckpt`, next to the recorded trace unless `checkpoint_dir` says
otherwise) and raises `TraceDivergence`, which holds the report and the checkpoint's path.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from engine.state import Timestamp
from engine.trace.diff import Divergence, compare_records, describe_record
from engine.trace.reader import Trace, read_trace
from engine.trace.schema import TraceConfig
from engine.trace.writer import rank_path, to_plain

__all__ = ["TraceDivergence", "TraceVerifier", "recorded_config"]

_dumps = json.JSONEncoder(separators=(",", ":")).encode


class TraceDivergence(RuntimeError):
    """The run diverged from the recorded trace: `report` (a `Divergence`) says where and how; `checkpoint` is
    the checkpoint saved at that moment (None if it could not be written)."""

    def __init__(self, report: Divergence, trace_path: str, checkpoint: str | None) -> None:
        self.report, self.trace_path, self.checkpoint = report, trace_path, checkpoint
        saved = f"; checkpoint of this moment: {checkpoint}" if checkpoint else ""
        super().__init__(f"the run diverged from the recorded trace {trace_path}{saved}\n{report}")


def recorded_config(trace: Trace) -> TraceConfig:
    """The TraceConfig the recorded trace was written with (the verifier records the same events)."""
    cfg = dict(trace.header.get("trace") or {})
    cfg["path"] = None
    return TraceConfig.model_validate(cfg)


class TraceVerifier:
    """A recorder sink that compares instead of writing (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, rtol: float = 0.0, atol: float = 0.0,
                 checkpoint_dir: str | os.PathLike | None = None) -> None:
        self.path = os.fspath(path)
        self.trace = read_trace(self.path)
        # what the loggers were given is configuration, not run behaviour: not compared
        self.expected = [r for r in self.trace.records if r["ev"] != "Hyperparams"]
        self.rtol, self.atol = rtol, atol
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else Path(self.path).parent
        self.index = 0
        self.run: Any = None
        self.diverged: TraceDivergence | None = None
        self.recent: deque[dict[str, Any]] = deque(maxlen=3)
        self.is_open = False
        self.started = False

    @property
    def config(self) -> TraceConfig:
        return recorded_config(self.trace)

    # -- the sink protocol ---------------------------------------------------------------------------------------
    def open(self, header: dict[str, Any], run: Any = None) -> None:
        rank = getattr(run, "global_rank", 0)
        if rank and not self.started:  # under DDP each rank compares with the file its rank recorded
            self.path = os.fspath(rank_path(self.path, rank))
            self.trace = read_trace(self.path)
            self.expected = [r for r in self.trace.records if r["ev"] != "Hyperparams"]
        self.run, self.is_open, self.started = run, True, True

    def reopen(self, run: Any = None) -> None:
        self.open({}, run)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.is_open = False

    def add(self, record: dict[str, Any]) -> None:
        """Compare one live record with the recorded one at the same position; raise at the first divergence."""
        if self.diverged is not None:  # the checkpoint being saved fires events of its own
            return
        if record["ev"] == "Hyperparams":
            return
        live = json.loads(_dumps(to_plain([record])[0]))
        i = self.index
        self.index += 1
        if i >= len(self.expected):
            self._diverge(Divergence("event", i, live["ev"], _ts(live),
                                     f"the recorded trace ends after {len(self.expected)} records; this run goes on "
                                     f"with {describe_record(live)}", context_b=[*self.recent, live]), live)
        want = self.expected[i]
        found = compare_records(want, live, self.rtol, self.atol)
        self.recent.append(live)
        if found is not None:
            kind, what = found
            what = what.replace("A=", "recorded=").replace("B=", "live=")
            self._diverge(Divergence(kind, i, want["ev"], _ts(want), what, None, None,
                                     self.expected[max(0, i - 3): i + 1], list(self.recent),
                                     batch_idx=want.get("batch_idx")), live)

    def _diverge(self, report: Divergence, live: dict[str, Any]) -> None:
        self.diverged = TraceDivergence(report, self.path, None)
        path = None
        run = self.run
        if run is not None and hasattr(run, "save_checkpoint"):
            ts = report.timestamp or _ts(live)
            step = ts.global_step if ts is not None else 0
            try:
                path = str(run.save_checkpoint(self.checkpoint_dir / f"divergence-step{step}.ckpt"))
            except Exception as exc:  # the report matters more than the checkpoint
                report.what += f" (the checkpoint could not be saved: {exc})"
        err = self.diverged = TraceDivergence(report, self.path, path)
        raise err


def _ts(rec: dict[str, Any] | None) -> Timestamp | None:
    return None if rec is None or not rec.get("ts") else Timestamp(*rec["ts"])
