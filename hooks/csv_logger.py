"""CSVLogger: metrics.csv (a row per log_metrics call, columns = every key seen, sorted, 'step' among them) and
hparams.yaml in `save_dir/name/version_N`, Lightning's format. Needs nothing beyond the standard library and PyYAML
(and fsspec, for a `save_dir` URL such as `memory://` or `s3://`)."""

from __future__ import annotations

import argparse
import csv
import io
import os
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from engine.errors import MisconfigurationException, user_stacklevel
from engine.utilities import cloud_io
from hooks.logger import (
    NoOpExperiment, RunDirLogger, add_prefix, atomic_open, params_to_dict, write_guard, write_hparams_yaml,
)

__all__ = ["CSVLogger", "ExperimentWriter"]


class ExperimentWriter:
    """Buffers metric rows and writes them to `log_dir/metrics.csv`; writes hparams to `log_dir/hparams.yaml`.

    Rows are appended while the columns stay the same; when a new key appears the whole file is rewritten with the
    wider header (temp file + os.replace, so a reader never sees a half-written file). On an fsspec URL every save
    rewrites the whole file atomically (object stores cannot append). OSErrors propagate.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str, check_existing: bool = True) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = cloud_io.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict[str, Any]] = []  # rows not written yet
        self.metrics_keys: list[str] = []  # the header of the file on disk
        self.hparams: dict[str, Any] = {}
        self.rows_logged = 0
        self._file_started = False
        self._remote = cloud_io.is_remote(log_dir)
        if check_existing and cloud_io.listdir(log_dir):  # a version used before (Lightning's warning)
            warnings.warn(f"Experiment logs directory {log_dir} exists and is not empty. Previous log files in this "
                          "directory will be deleted when the new ones are saved!", UserWarning,
                          stacklevel=user_stacklevel())
        cloud_io.makedirs(log_dir)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row; `step` defaults to the number of rows logged so far."""
        row = {k: (v.item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        row["step"] = self.rows_logged if step is None else step
        self.metrics.append(row)
        self.rows_logged += 1

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Merge `params` into the run's hyperparameters and rewrite hparams.yaml."""
        self.hparams.update(params)
        write_hparams_yaml(cloud_io.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def save(self) -> None:
        """Write the buffered rows: append, or rewrite the whole file when the header grows (or on first write)."""
        if not self.metrics:
            return
        keys = set(self.metrics_keys).union(*self.metrics)
        if self._file_started and len(keys) == len(self.metrics_keys) and not self._remote:
            with open(self.metrics_file_path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self.metrics_keys).writerows(self.metrics)
        else:
            header = sorted(keys)
            old_rows: list[dict[str, str]] = []
            if self._file_started:
                text = cloud_io.read_bytes(self.metrics_file_path).decode("utf-8")
                old_rows = list(csv.DictReader(io.StringIO(text, newline="")))
            with atomic_open(self.metrics_file_path) as fh:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                writer.writerows(old_rows)
                writer.writerows(self.metrics)
            self.metrics_keys = header
            self._file_started = True
        self.metrics = []


class CSVLogger(RunDirLogger):
    """Log metrics to `save_dir/name/version_N/metrics.csv` and hyperparameters to `hparams.yaml` next to it.

    Rows are buffered and written every `flush_logs_every_n_steps` steps and on save()/finalize(). A write failure
    (read-only directory, full disk) is reported once and the logger stops writing; training goes on.

    Example:
        >>> logger = CSVLogger("logs", name="mnist")  # doctest: +SKIP
        >>> trainer = Trainer(logger=logger)          # doctest: +SKIP
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100,
                 strict: bool = False) -> None:
        if isinstance(flush_logs_every_n_steps, bool) or not isinstance(flush_logs_every_n_steps, int) \
                or flush_logs_every_n_steps < 1:
            raise MisconfigurationException(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}): expected an int >= 1 "
                "(how many steps to buffer before writing metrics.csv)")
        super().__init__(save_dir, name, version, prefix, strict)
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: ExperimentWriter | None = None

    @property
    def experiment(self) -> ExperimentWriter | NoOpExperiment:
        """The ExperimentWriter (created on first use); a do-nothing stand-in if the directory could not be made."""
        if self._experiment is None and self.error is None:
            log_dir = self.log_dir  # allocates the version (may record a failure)
            if self.error is None:
                with write_guard(self, log_dir):
                    # a version_N allocated just now holds nothing of an earlier run: only an explicit one can
                    self._experiment = ExperimentWriter(log_dir, check_existing=self._explicit_version)
        return self._experiment if self._experiment is not None else NoOpExperiment()

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer a row ('<prefix>-<key>' columns plus 'step'); write when (step + 1) % flush_logs_every_n_steps == 0."""
        experiment = self.experiment
        if self.error is not None:
            return
        experiment.log_metrics(add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), step)
        if step is None:
            step = experiment.rows_logged - 1
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace | None = None,
                        metrics: Mapping[str, Any] | None = None) -> None:
        """Merge `params` into hparams.yaml (nested, yaml-safe); `metrics`, if given, are logged as a row."""
        params = params_to_dict(params)
        experiment = self.experiment
        if self.error is not None:
            return
        with write_guard(self, cloud_io.join(self.log_dir, ExperimentWriter.NAME_HPARAMS_FILE)):
            experiment.log_hparams(params)
        if metrics:
            self.log_metrics(metrics)

    def save(self) -> None:
        """Write the buffered rows to metrics.csv."""
        if self._experiment is None or self.error is not None:
            return
        with write_guard(self, self._experiment.metrics_file_path):
            self._experiment.save()

    def finalize(self, status: str) -> None:
        """Write what is still buffered."""
        self.save()
