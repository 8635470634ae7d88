"""Reading traces: the header, then the records; a truncated last line (a crash mid-write) is tolerated and
reported, a corrupt line anywhere else is an error naming its line number."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from engine.trace.schema import SCHEMA_VERSION, TraceHeader

__all__ = ["Trace", "TraceCorrupt", "read_trace", "iter_lines", "parse_header"]

_loads = json.loads


class TraceCorrupt(ValueError):
    """A trace line that is not a JSON object, other than a truncated last line."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}; the trace is corrupt there (a truncated *last* line is "
                         "tolerated, a bad line in the middle is not): restore the file or re-record the run")


@dataclass
class Trace:
    """A trace read back: its header, its records (dicts), and whether the last line was cut off."""

    path: str
    header: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    @property
    def level(self) -> str:
        return self.header.get("trace", {}).get("level", "step")

    def of(self, *types: str) -> list[dict[str, Any]]:
        """The records of the given event types, in order."""
        wanted = set(types)
        return [r for r in self.records if r["ev"] in wanted]


def parse_header(path: str, line: str) -> dict[str, Any]:
    """Check line 1 against `TraceHeader` (kind and schema version first, for a clear message)."""
    try:
        header = _loads(line)
    except ValueError as exc:
        raise TraceCorrupt(path, 1, f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("kind") != "statetrain-trace":
        raise TraceCorrupt(path, 1, "line 1 is not a statetrain trace header (expected kind='statetrain-trace')")
    version = header.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceCorrupt(path, 1, f"schema_version {version!r}, this statetrain reads version {SCHEMA_VERSION}")
    TraceHeader.model_validate(header)
    return header


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, is_last) for each record line, skipping the header; whole lines only."""
    with open(path, encoding="utf-8") as fh:
        fh.readline()
        prev: str | None = None
        n = 1
        for line in fh:
            if prev is not None:
                yield n, prev, False
            n += 1
            prev = line
        if prev is not None:
            yield n, prev, True


def read_trace(path: str | os.PathLike, validate: bool = False) -> Trace:
    """Read a whole trace. `validate=True` also checks every record against `TraceRecord` (slower)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
        if not first:
            raise TraceCorrupt(path, 1, "the file is empty (no header)")
        header = parse_header(path, first)
        text = fh.read()
    truncated = False
    if text and not text.endswith("\n"):  # a last line cut off by a crash is dropped, if it does not parse
        cut = text.rfind("\n") + 1
        try:
            _loads(text[cut:])
            text += "\n"
        except ValueError:
            text, truncated = text[:cut], True
    try:  # the fast path: the records as one JSON array, parsed in one call
        records = _loads("[" + text[:-1].replace("\n", ",") + "]") if text else []
        ok = all(type(r) is dict and "ev" in r for r in records)
    except ValueError:
        ok = False
    if not ok:
        records = _parse_lines(path, text.splitlines())
    if validate:
        from engine.trace.schema import TraceRecord

        for i, rec in enumerate(records):
            try:
                TraceRecord.model_validate(rec)
            except ValueError as exc:
                raise TraceCorrupt(path, i + 2, f"does not match the record schema: {exc}") from None
    return Trace(path, header, records, truncated)


def _parse_lines(path: str, lines: list[str]) -> list[dict[str, Any]]:
    """Line by line, to name the first bad line (line 1 is the header)."""
    records = []
    for i, line in enumerate(lines):
        try:
            rec = _loads(line)
        except ValueError as exc:
            raise TraceCorrupt(path, i + 2, f"not valid JSON ({exc.__class__.__name__}: {exc})") from None
        if type(rec) is not dict or "ev" not in rec:
            raise TraceCorrupt(path, i + 2, "not a trace record (expected a JSON object with 'ev')")
        records.append(rec)
    return records
