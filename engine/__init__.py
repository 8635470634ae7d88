"""statetrain: a PyTorch training framework built as an explicit state machine, Lightning-compatible.

`import engine as pl` gives `pl.Trainer`, `pl.LightningModule`, `pl.LightningDataModule`, `pl.Callback` and
`pl.seed_everything`; the events, the bus and the machine are here too for custom handlers and loops.
"""

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
from engine.trainer import Trainer
from hooks.callback import Callback

__version__ = "0.1.0"

# Handlers re-exported for `pl.EarlyStopping`-style access; loaded on first use to keep `import engine` light.
_HANDLERS = ("ModelSummary", "TensorBoardLogger", "CSVLogger", "Logger", "TQDMProgressBar", "LearningRateMonitor",
             "Timer", "ThroughputMonitor", "SimpleProfiler", "PyTorchProfiler")

__all__ = [
    "Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything", "Machine", "Bus",
    "Subscription", "Control", "Timestamp", "AttributeDict", "MisconfigurationException",
    "IllegalTransition", "HandlerError", *_HANDLERS, *_events_all,
]


def __getattr__(name: str) -> object:
    if name in _HANDLERS:
        import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
