"""Event traces: record a run (`Trainer(trace=...)`, `hooks.trace_recorder`), read it back, diff two runs, replay a
trace through handlers without a model, and re-run training against a trace (`Trainer(verify_trace=...)`).

Format and rules: DESIGN §6; the schema: `engine.trace.schema` (`python -m engine trace schema`).
"""

from __future__ import annotations

from engine.trace.diff import DiffReport, Divergence, compare_records, diff_traces
from engine.trace.reader import Trace, TraceCorrupt, read_trace
from engine.trace.replay import ReplayResult, TraceFieldMissing, replay
from engine.trace.schema import SCHEMA_VERSION, TraceConfig, json_schema
from engine.trace.show import plot, sparkline, summary
from engine.trace.verify import TraceDivergence, TraceVerifier

__all__ = ["TraceConfig", "Trace", "TraceCorrupt", "read_trace", "diff_traces", "DiffReport", "Divergence",
           "compare_records", "replay", "ReplayResult", "TraceFieldMissing", "TraceDivergence", "TraceVerifier",
           "summary", "sparkline", "plot", "json_schema", "SCHEMA_VERSION"]
