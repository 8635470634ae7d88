"""The trace format: versioned pydantic models of the header and of one record, published as JSON Schema.

A trace is JSON Lines: line 1 is the header (`TraceHeader`), every further line one record (`TraceRecord`). The
writer does not build these models per record (the hot path allocates no pydantic object); they are the contract
the reader checks against and what `python -m engine trace schema` prints. Record keys are short and written in a
fixed order with the only run-dependent one, `wall`, last, so two equal runs give equal lines up to `"wall"`.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["SCHEMA_VERSION", "LEVELS", "TraceConfig", "TraceHeader", "TraceRecord", "RequestRecord", "json_schema"]

SCHEMA_VERSION = 1
LEVELS = ("epoch", "step", "full")


class TraceConfig(BaseModel):
    """What a trace records: `Trainer(trace=TraceConfig(path="run.jsonl", level="step", fingerprints=True))`.

    `path` None writes `trace.jsonl` next to the logs; `param_checksum_every` N > 0 records a parameter checksum
    every N optimizer steps; `include`/`exclude` add or drop event types by name (e.g. `include=["StateChanged"]`);
    `flush_every` bounds the records held in memory between flushes (a crash loses at most those)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    level: Literal["epoch", "step", "full"] = "step"
    fingerprints: bool = True
    param_checksum_every: int = Field(0, ge=0)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    flush_every: int = Field(8192, ge=1)

    @field_validator("path", mode="before")
    @classmethod
    def _v_path(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("include", "exclude")
    @classmethod
    def _v_events(cls, value: list[str]) -> list[str]:
        from engine.events import CATALOGUE

        known = {t.__name__ for t in CATALOGUE}
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; expected names from engine.events.CATALOGUE, "
                             f"e.g. {sorted(known)[:4]}")
        return value


class RequestRecord(BaseModel):
    """A control request as recorded: what was asked, by whom, why (its Timestamp is the record's)."""

    action: str
    by: str
    reason: str = ""


class TraceHeader(BaseModel):
    """Line 1 of a trace: what ran, with which code, configuration, machine graph and handler order."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    kind: Literal["statetrain-trace"] = "statetrain-trace"
    engine: str
    torch: str
    python: str
    created: float
    rank: int = 0
    world_size: int = 1
    seed: int | None = None
    trace: TraceConfig
    config: dict[str, Any] = Field(default_factory=dict, description="Trainer flags (TrainerConfig.to_json_dict)")
    settings: dict[str, Any] = Field(default_factory=dict, description="the resolved flags the loops read")
    machines: dict[str, str] = Field(default_factory=dict, description="machine name -> Mermaid graph")
    handlers: dict[str, list[str]] = Field(default_factory=dict, description="event type -> handlers in call order")
    module: str | None = None


class TraceRecord(BaseModel):
    """One event as recorded. Optional keys appear only when the event or the level has them."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(description="0-based position in the trace")
    ev: str = Field(description="event type name (engine.events), or 'Hyperparams'")
    ts: tuple[int, int, int, int, int] = Field(
        description="Timestamp: epoch, batch_in_epoch, global_step, batches_seen, samples_seen")
    rank: int = 0
    stage: str | None = None
    state: str | None = Field(None, description="machine position, 'fit_state/eval_state' during validation")
    batch_idx: int | None = None
    dataloader_idx: int | None = None
    loss: float | None = None
    lr: list[float] | None = None
    fp: str | None = Field(None, description="batch fingerprint (crc32 of the batch tensors' bytes)")
    gn: float | None = Field(None, description="total gradient norm, when a clip provider measured it")
    pc: float | None = Field(None, description="parameter checksum (sum of all parameters)")
    metrics: dict[str, float] | None = Field(None, description="MetricsWritten: what the loggers received")
    step: int | None = Field(None, description="MetricsWritten: the loggers' x-axis")
    cbm: dict[str, float] | None = Field(None, description="callback_metrics at epoch/validation boundaries")
    request: RequestRecord | None = None
    machine: str | None = None
    src: str | None = None
    dst: str | None = None
    error: str | None = Field(None, description="ExceptionRaised: 'Type: message'")
    params: dict[str, Any] | None = Field(None, description="Hyperparams: what the loggers' log_hyperparams got")
    wall: float = Field(description="time.time() when recorded")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of both line kinds, with the schema version."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "statetrain trace",
            "schema_version": SCHEMA_VERSION,
            "description": "JSON Lines: line 1 is `header`, every further line a `record`.",
            "header": TraceHeader.model_json_schema(), "record": TraceRecord.model_json_schema()}
