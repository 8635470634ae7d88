"""TensorBoardLogger: scalars, hyperparameters (HPARAMS tab) and the model graph in TensorBoard event files,
written with tensorboardX into `save_dir/name/version_N[/sub_dir]` (Lightning's layout and semantics).

A `save_dir` fsspec URL (`memory://`, `s3://`, `gs://`, ...): tensorboardX writes files itself (it knows only local
paths and its own boto/GCS writers), so the event files are written to a local staging directory and uploaded to
`log_dir` by save() (at most every SAVE_INTERVAL_S while training) and finalize(), each upload a whole-file atomic
write (see `engine.utilities.cloud_io`); hparams.yaml is written to the URL directly. The staging directory is
removed at finalize()."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from engine.errors import user_stacklevel
from engine.utilities import cloud_io
from hooks.logger import (
    NoOpExperiment, RunDirLogger, add_prefix, flatten_params, params_to_dict, sanitize_params, write_guard,
    write_hparams_yaml,
)

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(RunDirLogger):
    """Log to TensorBoard event files in `save_dir/name/version_N[/sub_dir]`.

    A write failure (read-only directory, full disk) is reported once and the logger stops writing; training goes on.
    Extra keyword arguments go to `tensorboardX.SummaryWriter` (e.g. `flush_secs`, `max_queue`).

    Example:
        >>> logger = TensorBoardLogger("logs", name="mnist")  # doctest: +SKIP
        >>> trainer = Trainer(logger=logger)                  # doctest: +SKIP
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"
    SAVE_INTERVAL_S = 5.0  # save() writes queued scalars and flushes at most this often; finalize() always does
    MAX_PENDING = 1000  # queued log_metrics calls written at once even before SAVE_INTERVAL_S

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None = "lightning_logs",
                 version: int | str | None = None, log_graph: bool = False, default_hp_metric: bool = True,
                 prefix: str = "", sub_dir: str | os.PathLike[str] | None = None, strict: bool = False,
                 **kwargs: Any) -> None:
        if importlib.util.find_spec("tensorboardX") is None:
            raise ModuleNotFoundError("TensorBoardLogger needs tensorboardX: `pip install tensorboardX`, "
                                      "or use CSVLogger instead")
        super().__init__(save_dir, name, version, prefix, strict)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._staging: str | None = None  # local directory of the event files when log_dir is a URL
        self._uploaded: dict[str, tuple[int, int]] = {}  # staged file -> (size, mtime_ns) last uploaded
        self._kwargs = kwargs
        self._experiment: Any = None
        self._writers_opened = 0
        self._async_error: OSError | None = None  # set by tensorboardX's writer thread, reported by ours
        self._hparams_written = False
        self._last_save = float("-inf")
        self._pending: list[tuple[dict[str, Any], int | None, float]] = []
        self.hparams: dict[str, Any] = {}

    # -- directories --------------------------------------------------------------------------------------------
    @property
    def sub_dir(self) -> str | None:
        """Optional directory under the version directory that receives the event files."""
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        """save_dir/name/version_N[/sub_dir]."""
        log_dir = super().log_dir
        return cloud_io.join(log_dir, self._sub_dir) if self._sub_dir else log_dir

    # -- the writer ---------------------------------------------------------------------------------------------
    @property
    def experiment(self) -> Any:
        """The tensorboardX SummaryWriter (opened on first use); a do-nothing stand-in if it could not be opened."""
        if self._experiment is None and self.error is None:
            log_dir = self.log_dir  # allocates the version (may record a failure)
            if self.error is None:
                with write_guard(self, log_dir):
                    from tensorboardX import SummaryWriter  # lazy: importing it takes ~1.5 s

                    if not self._writers_opened:
                        self._warn_reused_version()
                    cloud_io.makedirs(log_dir)
                    writer_dir = log_dir
                    if cloud_io.is_remote(log_dir):
                        self._staging = self._staging or tempfile.mkdtemp(prefix="statetrain-tensorboard-")
                        writer_dir = self._staging
                    kwargs = dict(self._kwargs)
                    if self._writers_opened:
                        # Event files are named by the second they were opened: a writer reopened after finalize
                        # in the same second would truncate the first file, so give it its own name.
                        kwargs["filename_suffix"] = f"{kwargs.get('filename_suffix', '')}.{self._writers_opened}"
                    writer = SummaryWriter(logdir=writer_dir, **kwargs)
                    self._writers_opened += 1
                    self._guard_file_writers(writer, synchronous=True)
                    self._experiment = writer
        return self._experiment if self._experiment is not None else NoOpExperiment()

    def _warn_reused_version(self) -> None:
        """An explicitly given version whose directory already holds files: say so, as Lightning's CSV logger does."""
        version_dir = super().log_dir  # without sub_dir
        if self._explicit_version and cloud_io.listdir(version_dir):
            warnings.warn(f"Experiment logs directory {version_dir} exists and is not empty. The new event files are "
                          "written next to the old ones, so TensorBoard shows both runs as one; pass a new "
                          "`version=` to keep them apart.", UserWarning, stacklevel=user_stacklevel())

    def _upload(self) -> None:
        """Copy the staged event files that changed since the last upload to log_dir (a URL)."""
        if self._staging is None:
            return
        log_dir = self.log_dir
        for folder, _, files in os.walk(self._staging):
            for name in files:
                local = os.path.join(folder, name)
                stat = os.stat(local)
                mark = (stat.st_size, stat.st_mtime_ns)
                if self._uploaded.get(local) == mark:
                    continue
                rel = os.path.relpath(local, self._staging).replace(os.sep, "/")
                with open(local, "rb") as fh:
                    cloud_io.atomic_write(cloud_io.join(log_dir, rel), fh.read())
                self._uploaded[local] = mark

    def _guard_file_writers(self, writer: Any, synchronous: bool = False) -> None:
        """Catch OSErrors inside tensorboardX's event writers, which also run on its background thread: an error
        there would kill the thread and a later add_* would block forever on its full queue. The error is kept
        and reported from the training thread by `_check_async_error`."""
        for file_writer in (getattr(writer, "all_writers", None) or {}).values():
            event_writer = getattr(file_writer, "event_writer", None)
            events = getattr(event_writer, "_ev_writer", None)
            if events is None or getattr(events, "_statetrain_guarded", False):
                continue
            for method in ("write_event", "flush", "close"):
                setattr(events, method, self._swallow_oserror(getattr(events, method)))
            events._statetrain_guarded = True
            if synchronous:
                # Write events synchronously into the (buffered) file: tensorboardX's default hands each event to a
                # multiprocessing.Queue and a thread, about 4x the cost of the write itself (11 us vs 40 us per
                # scalar) plus the thread's share of the GIL. Flushing stays with save()/finalize(). Only for a
                # writer that has written nothing yet (add_scalars' writers already queued an event: keep order).
                event_writer.add_event = events.write_event

    def _swallow_oserror(self, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                if self._async_error is None:
                    self._async_error = exc
                return None

        return call

    def _check_async_error(self) -> bool:
        """Report an error the writer thread hit; True when this logger must not write."""
        if self._async_error is not None and self.error is None:
            self.record_failure(self._async_error, self.log_dir)
        return self.error is not None

    # -- the Logger API -----------------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Queue the scalars ('<prefix>-<key>'; a dict value becomes add_scalars runs) for the next save().

        Writing happens in save()/finalize() (at most every SAVE_INTERVAL_S while training): an event write between
        training steps runs cold and costs ~10x what it costs in a batch of writes."""
        if self._experiment is None:
            self.experiment  # open the writer (and the run directory) now, so an unwritable disk shows at once
        if self.error is not None or self._check_async_error():
            return
        row = {}
        for key, value in add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, Tensor):
                value = value.item()  # host sync; the Trainer already hands over floats
            elif not isinstance(value, (int, float, Mapping)) and not hasattr(value, "__float__"):
                raise ValueError(f"TensorBoardLogger.log_metrics: metric {key!r} has value {value!r} of type "
                                 f"{type(value).__name__}; expected a number, a one-element tensor or a dict "
                                 "of numbers")
            row[key] = value
        self._pending.append((row, step, time.time()))
        if len(self._pending) >= self.MAX_PENDING:
            self._write_pending()

    def _write_pending(self) -> None:
        """Write the queued scalars: all plain scalars of one log_metrics call go into one event."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        writer = self.experiment
        if self.error is not None:
            return
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar

        with write_guard(self, self.log_dir):
            file_writer = writer._get_file_writer()
            for row, step, walltime in pending:
                values = []
                for key, value in row.items():
                    if isinstance(value, Mapping):
                        writer.add_scalars(key, dict(value), step, walltime)
                        self._guard_file_writers(writer)
                    else:
                        values.extend(scalar(key, value).value)
                if values:
                    file_writer.add_summary(Summary(value=values), step, walltime)

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace | None,
                        metrics: Mapping[str, Any] | float | None = None, step: int | None = None) -> None:
        """Write hparams.yaml (nested) and the HPARAMS plugin data (flattened with '/', sanitized) into this run's
        directory, with `metrics` (default: hp_metric=-1 when default_hp_metric) as the HPARAMS metrics."""
        params = params_to_dict(params)
        self.hparams.update(params)
        if self._check_async_error():
            return
        self._write_hparams_yaml()
        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else None
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if not metrics or self.error is not None:
            return
        from tensorboardX.summary import hparams as hparams_summaries

        self.log_metrics(metrics, step)
        if self.error is not None:
            return
        flat = sanitize_params(flatten_params(params))
        names = add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        with write_guard(self, self.log_dir):
            file_writer = self.experiment._get_file_writer()
            for summary in hparams_summaries(flat, dict(names)):
                file_writer.add_summary(summary, step)

    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        """Trace `model` on `input_array` (default: model.example_input_array) into the GRAPHS tab; only with
        log_graph=True. Missing input or a failed trace warns instead of stopping the run."""
        if not self._log_graph or self._check_async_error():
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            warnings.warn("TensorBoardLogger.log_graph: no graph written; set `model.example_input_array` or pass "
                          "`input_array`", UserWarning, stacklevel=user_stacklevel())
            return
        if not isinstance(input_array, (Tensor, tuple)):
            warnings.warn(f"TensorBoardLogger.log_graph: no graph written; input_array has type "
                          f"{type(input_array).__name__}, expected a Tensor or a tuple of forward()'s positional "
                          "arguments", UserWarning, stacklevel=user_stacklevel())
            return
        input_array = _to_model_device(model, input_array)
        writer = self.experiment
        if self.error is not None:
            return
        exporting = model.__dict__.get("_exporting", False)
        model._exporting = True  # tracing walks the module's attributes: `trainer` must not raise meanwhile
        try:
            with write_guard(self, self.log_dir):
                try:
                    with warnings.catch_warnings():  # tensorboardX traces with torch.jit: not the user's to fix
                        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
                        writer.add_graph(model, input_array)
                except OSError:
                    raise
                except Exception as exc:
                    warnings.warn(f"TensorBoardLogger.log_graph: tracing {type(model).__name__} failed ({exc!r}); "
                                  "no graph written", UserWarning, stacklevel=user_stacklevel())
        finally:
            model._exporting = exporting

    def save(self, force: bool = False) -> None:
        """Flush the event files (opening the writer if needed) and write hparams.yaml if it is missing.

        The trainer calls this after every write; tensorboardX's flush ends in an fsync (milliseconds), so between
        writes it flushes at most every SAVE_INTERVAL_S seconds. finalize() always flushes."""
        if self._check_async_error():
            return
        now = time.monotonic()
        if not force and self._hparams_written and now - self._last_save < self.SAVE_INTERVAL_S:
            return
        self._last_save = now
        self._write_pending()
        writer = self.experiment
        if self.error is not None:
            return
        with write_guard(self, self.log_dir):
            self._guard_file_writers(writer)  # add_scalars made by user code through `experiment`
            writer.flush()
            self._upload()
        self._check_async_error()
        if not self._hparams_written:
            self._write_hparams_yaml()

    def finalize(self, status: str) -> None:
        """Save, then close the writer; a later write opens a new event file in the same directory."""
        if self._experiment is None and not self._pending:
            return
        self.save(force=True)
        with write_guard(self, self.log_dir):
            self._experiment.close()
            self._upload()
        self._experiment = None
        self._check_async_error()
        if self._staging is not None and self.error is None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging, self._uploaded = None, {}

    def _write_hparams_yaml(self) -> None:
        if self.error is not None:
            return
        log_dir = self.log_dir
        with write_guard(self, log_dir):
            cloud_io.makedirs(log_dir)
            write_hparams_yaml(cloud_io.join(log_dir, self.NAME_HPARAMS_FILE), self.hparams)
            self._hparams_written = True

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None  # the writer (threads, open files) does not pickle
        return state


def _to_model_device(model: nn.Module, batch: Any) -> Any:
    """The example input passed through the module's batch-transfer hooks, as a training batch would be."""
    transfer = getattr(model, "transfer_batch_to_device", None)
    if not callable(transfer):
        return batch
    device = getattr(model, "device", None)
    if device is None:
        device = next((p.device for p in model.parameters()), None)
    batch = model.on_before_batch_transfer(batch, 0) if hasattr(model, "on_before_batch_transfer") else batch
    batch = transfer(batch, device, 0) if device is not None else batch
    return model.on_after_batch_transfer(batch, 0) if hasattr(model, "on_after_batch_transfer") else batch
