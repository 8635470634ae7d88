"""The buffered trace writer: records are held in memory and written in batches, so recording costs no I/O per step.

Tensors in a record (a loss, a gradient norm still on the device) are kept as they are and converted with one
`torch.stack(...).tolist()` per flush: recording at level 'step' adds no device sync the run does not already do.
The writer flushes when `flush_every` records are held, when the recorder asks (epoch ends, exceptions, the run's
end) and at interpreter exit; a crash loses at most the records since the last flush, and the reader tolerates the
truncated last line a kill in the middle of a write leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

__all__ = ["TraceWriter", "to_plain", "rank_path"]

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_LIVE: "weakref.WeakSet[TraceWriter]" = weakref.WeakSet()


def rank_path(path: str | os.PathLike, rank: int) -> Path:
    """The file rank `rank` writes for the trace `path`: `path` itself on rank 0, `name.rank<r>.jsonl` beside it."""
    p = Path(path)
    return p if rank == 0 else p.with_name(f"{p.stem}.rank{rank}{p.suffix or '.jsonl'}")


def _flush_all_at_exit() -> None:
    for writer in list(_LIVE):
        writer.close()


atexit.register(_flush_all_at_exit)


_MAYBE_TENSOR = ("loss", "lr", "fp", "gn", "pc", "cbm")  # the keys a recorder may leave a tensor under


def _tensor_slots(records: list[dict[str, Any]]) -> list[tuple[Any, Any, Tensor]]:
    """Every tensor value in the records as (container, key, tensor), for one conversion."""
    slots = []
    for rec in records:
        for key in _MAYBE_TENSOR:
            value = rec.get(key)
            if value is None:
                continue
            if type(value) is Tensor:
                slots.append((rec, key, value))
            elif type(value) is list:
                for i, item in enumerate(value):
                    if type(item) is Tensor:
                        slots.append((value, i, item))
            elif type(value) is dict:
                for k, item in value.items():
                    if type(item) is Tensor:
                        slots.append((value, k, item))
    return slots


def _convert(slots: list[tuple[Any, Any, Tensor]]) -> None:
    """Tensors to Python numbers: on an accelerator one stack and one host sync per (device, dtype); int64 tensors
    are device-side fingerprints and become hex strings."""
    by_kind: dict[tuple[Any, Any], list[tuple[Any, Any, Tensor]]] = {}
    for slot in slots:
        t = slot[2]
        by_kind.setdefault((t.device, t.dtype), []).append(slot)
    for (device, dtype), group in by_kind.items():
        if device.type == "cpu":  # no device to sync with: item() is cheaper than stacking thousands of scalars
            values = [t.item() for _, _, t in group]
        else:
            stacked = torch.stack([t if t.dim() == 0 else t.reshape(()) for _, _, t in group]).detach()
            values = (stacked if dtype == torch.int64 else stacked.double()).tolist()
        if dtype == torch.int64:
            for (box, key, _), v in zip(group, values):
                box[key] = format(v & 0xFFFFFFFFFFFFFFFF, "016x")
        else:
            for (box, key, _), v in zip(group, values):
                box[key] = float(v)


def to_plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Convert the tensors of buffered records in place (see module docstring); returns the records."""
    slots = _tensor_slots(records)
    if slots:
        _convert(slots)
    return records


class TraceWriter:
    """Append records to a JSON Lines file in batches; the header is the first line."""

    def __init__(self, path: str | os.PathLike, flush_every: int = 8192) -> None:
        self.path = Path(path)
        self.flush_every = flush_every
        self.buffer: list[dict[str, Any]] = []
        self.written = 0
        self._file: Any = None
        self.started = False
        self.error: OSError | None = None

    def open(self, header: dict[str, Any], run: Any = None) -> None:
        """Create (or replace) the file and write the header line."""
        self.started = True
        with self._guard():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
            self._file.write(_dumps(header) + "\n")
            self._file.flush()
            _LIVE.add(self)

    def reopen(self, run: Any = None) -> None:
        """Append to the trace this writer started (a later run of the same Trainer)."""
        if self.error is None:
            with self._guard():
                self._file = open(self.path, "a", encoding="utf-8")
                _LIVE.add(self)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A write failure (unwritable directory, full disk) is reported once; the run goes on without a trace."""
        try:
            yield
        except OSError as exc:
            self.error = exc
            self.buffer = []
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
            warnings.warn(f"trace {self.path}: cannot write ({exc}); the run goes on without recording a trace",
                          RuntimeWarning, stacklevel=2)

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def add(self, record: dict[str, Any]) -> None:
        """Hold one record; written at the next flush (dropped when the file could not be written)."""
        if self._file is None:
            return
        buf = self.buffer
        buf.append(record)
        if len(buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Convert the held records' tensors (one sync) and write them; the OS has them when this returns."""
        buf = self.buffer
        if not buf or self._file is None:
            return
        self.buffer = []
        to_plain(buf)
        with self._guard():
            self._file.write("".join([_dumps(r) + "\n" for r in buf]))
            self._file.flush()
            self.written += len(buf)

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        if self._file is None:
            return
        self.flush()
        if self._file is None:  # the flush failed and was reported
            return
        try:
            with self._guard():
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
            _LIVE.discard(self)
