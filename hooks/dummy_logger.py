"""DummyLogger: a logger that records nothing and accepts any call (Lightning's `loggers.logger.DummyLogger`).

The tuner runs its trial fits with it in place of the user's loggers, so a module that calls
`self.logger.experiment.add_image(...)` keeps working while nothing is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from hooks.logger import Logger, NoOpExperiment

__all__ = ["DummyLogger"]


class DummyLogger(Logger):
    """Does nothing: `log_metrics`, `log_hyperparams` and any other method call are no-ops; indexing and
    iterating give the logger itself, so code written for a list of loggers works too."""

    def __init__(self) -> None:
        super().__init__()
        self._experiment = NoOpExperiment()

    @property
    def experiment(self) -> NoOpExperiment:
        return self._experiment

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Drop `metrics`."""

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any) -> None:
        """Drop `params`."""

    def __getitem__(self, idx: int) -> DummyLogger:
        return self

    def __iter__(self) -> Any:
        yield from ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None
