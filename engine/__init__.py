"""statetrain: a PyTorch training framework built as an explicit state machine, Lightning-compatible.

`import engine as pl` gives `pl.Trainer`, `pl.LightningModule`, `pl.LightningDataModule`, `pl.Callback` and
`pl.seed_everything`; the events, the bus and the machine are here too for custom handlers and loops. Lightning's
import paths are submodules: `engine.callbacks`, `engine.loggers`, `engine.profilers`, `engine.utilities`,
`engine.core`, `engine.tuner`.

Import layering: this package imports only leaf modules eagerly (none of them imports `hooks` or the Trainer).
`Trainer`, `Callback`, the handlers and the Lightning-path submodules load on first access (PEP 562), so
`import engine.events` or `import hooks.<any>` in a fresh interpreter never reaches `engine.trainer`, which itself
imports `hooks` modules at module level: importing it here would put every `hooks` module in a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from engine.bus import Bus, Subscription
from engine.control import Control
from engine.datamodule import LightningDataModule
from engine.errors import HandlerError, IllegalTransition, MisconfigurationException
from engine.events import *  # noqa: F403  (the event catalogue is part of the public API)
from engine.events import __all__ as _events_all
from engine.hparams import AttributeDict
from engine.machine import Machine
from engine.module import LightningModule
from engine.seed import seed_everything
from engine.state import Timestamp

if TYPE_CHECKING:  # pragma: no cover
    from engine.trainer import Trainer
    from hooks.callback import Callback

__version__ = "0.1.0"

# Loaded on first use: name -> module that defines it.
_LAZY = {"Trainer": "engine.trainer", "Callback": "hooks.callback"}
# Handlers re-exported for `pl.EarlyStopping`-style access (through `hooks`, which is lazy too).
_HANDLERS = ("ModelCheckpoint", "OnExceptionCheckpoint", "EarlyStopping", "ModelSummary", "TensorBoardLogger",
             "CSVLogger", "Logger", "TQDMProgressBar", "LearningRateMonitor", "Timer", "ThroughputMonitor", "SimpleProfiler", "PyTorchProfiler")
# Submodules reachable as attributes without importing them first, as `pl.loggers.CSVLogger` is in Lightning.
_SUBMODULES = ("callbacks", "loggers", "profilers", "utilities", "core", "trainer", "loops", "tuner")

__all__ = [
    "Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything", "Machine", "Bus",
    "Subscription", "Control", "Timestamp", "AttributeDict", "MisconfigurationException",
    "IllegalTransition", "HandlerError", *_HANDLERS, *_events_all,
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _HANDLERS:
        value = getattr(importlib.import_module("hooks"), name)
    elif name in _SUBMODULES:
        return importlib.import_module(f"engine.{name}")  # the import binds it as an attribute
    else:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
