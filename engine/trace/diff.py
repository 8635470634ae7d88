"""Diff two traces: align them record by record and report the first divergence, with the context around it.

Kinds of divergence, in the order they are looked for within a record: an event missing or reordered (`event`), a
control decision taken in one run only (`control`), the event at a different Timestamp (`timestamp`), a batch
fingerprint that differs (`data`: the data order diverged), a scalar beyond `rtol`/`atol` (`numeric`: loss, learning
rates, gradient norm, parameter checksum, logged or callback metrics), any other recorded field (`field`). The
`Hyperparams` records (what the loggers were given) are configuration and are not compared.
Two equal runs write equal lines up to their `wall` key, so most records are compared as strings and never parsed:
diffing two 1,000,000-record traces takes seconds.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from engine.state import Timestamp
from engine.trace.reader import TraceCorrupt, iter_lines, parse_header

__all__ = ["Divergence", "DiffReport", "diff_traces", "compare_records", "describe_record"]

_loads = json.loads
_SCALARS = ("loss", "lr", "gn", "pc", "step", "metrics", "cbm")
_SKIP = {"seq", "wall", "rank", "ev", "ts", "request", "fp", *_SCALARS}


@dataclass
class Divergence:
    """Where two runs first differ: the record index, its event and Timestamp, what differs and the context."""

    kind: str
    index: int
    event: str
    timestamp: Timestamp | None
    what: str
    a: Any = None
    b: Any = None
    context_a: list[dict[str, Any]] = field(default_factory=list)
    context_b: list[dict[str, Any]] = field(default_factory=list)
    batch_idx: int | None = None

    @property
    def global_step(self) -> int | None:
        return None if self.timestamp is None else self.timestamp.global_step

    def __str__(self) -> str:
        where = f" at {self.timestamp} (batches_seen={self.timestamp.batches_seen})" if self.timestamp else ""
        batch = f", batch_idx={self.batch_idx}" if self.batch_idx is not None else ""
        lines = [f"first divergence ({self.kind}) at record {self.index}: {self.event}{where}{batch}",
                 f"  {self.what}"]
        if self.context_a or self.context_b:
            lines.append("  context (A | B):")
            for i in range(max(len(self.context_a), len(self.context_b))):
                ra = self.context_a[i] if i < len(self.context_a) else None
                rb = self.context_b[i] if i < len(self.context_b) else None
                mark = ">>" if (ra or rb or {}).get("seq") == self.index else "  "
                lines.append(f"  {mark} {describe_record(ra):<58} | {describe_record(rb)}")
        return "\n".join(lines)


@dataclass
class DiffReport:
    """The result of `diff_traces`: `equal`, the first `divergence` (None when equal) and what was compared."""

    a: str
    b: str
    equal: bool
    compared: int
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.equal

    def __str__(self) -> str:
        head = [f"A: {self.a}", f"B: {self.b}", *(f"note: {n}" for n in self.notes)]
        if self.equal:
            return "\n".join(head + [f"equal: {self.compared} records match"])
        return "\n".join(head + [str(self.divergence)])


def describe_record(rec: dict[str, Any] | None) -> str:
    """One short line for a record: seq, event, Timestamp and its main values."""
    if rec is None:
        return "(none)"
    ts = rec.get("ts") or (0, 0, 0, 0, 0)
    parts = [f"#{rec.get('seq')} {rec.get('ev')} e{ts[0]} b{ts[1]} s{ts[2]}"]
    for key in ("loss", "fp"):
        if key in rec:
            v = rec[key]
            parts.append(f"{key}={v:.6g}" if isinstance(v, float) else f"{key}={v}")
    if "request" in rec:
        r = rec["request"]
        parts.append(f"{r.get('action')} by {r.get('by')}")
    return " ".join(parts)


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if a == b:
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= atol + rtol * abs(b)
    return False


def _scalar_diff(key: str, a: Any, b: Any, rtol: float, atol: float) -> str | None:
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{key}: {len(a)} values in A, {len(b)} in B"
        for i, (x, y) in enumerate(zip(a, b)):
            if not _close(x, y, rtol, atol):
                return f"{key}[{i}]: A={x!r} B={y!r}"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{key}: keys differ, only in A: {sorted(set(a) - set(b))}, only in B: {sorted(set(b) - set(a))}"
        for k in a:
            if not _close(a[k], b[k], rtol, atol):
                return f"{key}[{k!r}]: A={a[k]!r} B={b[k]!r}"
        return None
    if not _close(a, b, rtol, atol):
        return f"{key}: A={a!r} B={b!r}"
    return None


def compare_records(a: dict[str, Any], b: dict[str, Any], rtol: float = 0.0, atol: float = 0.0
                    ) -> tuple[str, str] | None:
    """(kind, what differs) for two aligned records, or None when they agree within rtol/atol."""
    if a["ev"] != b["ev"]:
        if "ControlRequested" in (a["ev"], b["ev"]):
            one = a if a["ev"] == "ControlRequested" else b
            r = one.get("request", {})
            side = "A" if one is a else "B"
            return "control", (f"control decision in {side} only: {r.get('action')!r} requested by {r.get('by')} "
                               f"({r.get('reason') or 'no reason given'})")
        return "event", f"event: A has {a['ev']}, B has {b['ev']}"
    if a.get("request") != b.get("request"):
        return "control", f"control request: A={a.get('request')} B={b.get('request')}"
    if list(a.get("ts") or ()) != list(b.get("ts") or ()):
        return "timestamp", f"{a['ev']} at a different Timestamp: A={a.get('ts')} B={b.get('ts')}"
    if a.get("fp") != b.get("fp"):
        return "data", (f"batch fingerprint differs (the data order diverged): A={a.get('fp')} B={b.get('fp')}")
    for key in _SCALARS:
        if key in a or key in b:
            if (key in a) != (key in b):
                return "numeric", f"{key}: recorded in {'A' if key in a else 'B'} only"
            what = _scalar_diff(key, a[key], b[key], rtol, atol)
            if what is not None:
                return "numeric", what
    for key in (set(a) | set(b)) - _SKIP:
        if a.get(key) != b.get(key):
            return "field", f"{key}: A={a.get(key)!r} B={b.get(key)!r}"
    return None


def _strip(line: str) -> str:
    cut = line.rfind(',"wall":')
    return line[:cut] if cut >= 0 else line


class _Stream:
    """The record lines of one trace with a little history, parsed on demand."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        if not first:
            raise TraceCorrupt(path, 1, "the file is empty (no header)")
        self.header = parse_header(path, first)
        self.lines: Iterator[tuple[int, str, bool]] = iter_lines(path)
        self.history: deque[tuple[int, str]] = deque(maxlen=4)
        self.truncated = False

    def next(self) -> tuple[int, str] | None:
        for n, line, last in self.lines:
            if '"ev":"Hyperparams"' in line[:48]:  # what the loggers were given: configuration, not compared
                continue
            if last and not line.endswith("\n"):
                try:
                    _loads(line)
                except ValueError:
                    self.truncated = True
                    return None
            self.history.append((n, line))
            return n, line
        return None

    def parse(self, n: int, line: str) -> dict[str, Any]:
        try:
            rec = _loads(line)
        except ValueError as exc:
            raise TraceCorrupt(self.path, n, f"not valid JSON ({exc})") from None
        if type(rec) is not dict or "ev" not in rec:
            raise TraceCorrupt(self.path, n, "not a trace record (expected a JSON object with 'ev')")
        return rec

    def context(self, after: int = 3) -> list[dict[str, Any]]:
        out = [self.parse(n, line) for n, line in self.history]
        for _ in range(after):
            got = self.next()
            if got is None:
                break
            out.append(self.parse(*got))
        return out


def _ts(rec: dict[str, Any] | None) -> Timestamp | None:
    return None if rec is None or not rec.get("ts") else Timestamp(*rec["ts"])


def diff_traces(a: str | os.PathLike, b: str | os.PathLike, rtol: float = 0.0, atol: float = 0.0) -> DiffReport:
    """Compare two traces record by record; the report names the first divergence (see the module docstring)."""
    sa, sb = _Stream(os.fspath(a)), _Stream(os.fspath(b))
    notes = []
    ca, cb = ({k: v for k, v in (s.header.get("trace") or {}).items() if k != "path"} for s in (sa, sb))
    if ca != cb:
        notes.append(f"the traces were recorded with different trace settings: A={ca} B={cb}")
    compared = 0
    while True:
        ga, gb = sa.next(), sb.next()
        if ga is None or gb is None:
            if ga is None and gb is None:
                for s in (sa, sb):
                    if s.truncated:
                        notes.append(f"{s.path}: its last line is cut off (the run was killed); compared up to it")
                return DiffReport(sa.path, sb.path, True, compared, notes=notes)
            have, side, other = (ga, "A", "B") if gb is None else (gb, "B", "A")
            stream = sa if gb is None else sb
            rec = stream.parse(*have)
            div = Divergence("event", rec.get("seq", compared), rec["ev"], _ts(rec),
                             f"{other} ends after {compared} records; {side} goes on with {describe_record(rec)}",
                             context_a=sa.context(), context_b=sb.context(), batch_idx=rec.get("batch_idx"))
            return DiffReport(sa.path, sb.path, False, compared, div, notes)
        (na, la), (nb, lb) = ga, gb
        if _strip(la) == _strip(lb):
            compared += 1
            continue
        ra, rb = sa.parse(na, la), sb.parse(nb, lb)
        found = compare_records(ra, rb, rtol, atol)
        if found is None:
            compared += 1
            continue
        kind, what = found
        if kind == "event":
            what += _reorder_hint(ra, rb)
        div = Divergence(kind, ra.get("seq", compared), ra["ev"], _ts(ra), what, _value(ra, what), _value(rb, what),
                         sa.context(), sb.context(), batch_idx=ra.get("batch_idx", rb.get("batch_idx")))
        return DiffReport(sa.path, sb.path, False, compared, div, notes)


def _reorder_hint(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f" (A: {describe_record(a)}; B: {describe_record(b)})"


def _value(rec: dict[str, Any], what: str) -> Any:
    key = what.split(":", 1)[0].split("[", 1)[0].strip()
    return rec.get(key)
