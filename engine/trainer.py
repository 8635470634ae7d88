"""Trainer: the facade. It validates the config, assembles strategy, handlers, machines and the run context, starts
fit/validate/test/predict, and exposes Lightning's read-only views of the run state.

It owns no run state and makes no loop decision: the run state lives in `engine.loops.context.RunContext`
(progress, control, results, data sources, the step pipeline) and the decisions in the state functions of
`engine.loops` (`fit.py`, `evaluate.py`, `policy.py`). Every entry point runs through `strategy.launch(run_stage, ...)`
with a module-level function, so a spawning strategy can start it in its workers.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from engine import assembly, checkpoint
from engine import state as states  # Lightning's `lightning.pytorch.trainer.states` path: engine.trainer.states
from engine.bus import CALLBACK, Bus, Subscription
from engine.config import TrainerConfig
from engine.control import Control
from engine.datamodule import LightningDataModule
from engine.errors import MisconfigurationException, PossibleUserWarning, user_stacklevel
from engine.log import log_lines
from engine.loops.context import RunContext, check_model, no_model, run_stage
from engine.loops.data import overridden
from engine.loops.evaluate import build_eval_machine, check_step_implemented
from engine.loops.fit import build_fit_machine
from engine.machine import Machine
from engine.module import LightningModule
from engine.state import RunStatus, Stage, Timestamp
from engine.utilities.rank_zero import rank_zero_only
from hooks.callback import Callback, attach_run
from hooks.grad_clip import clipping_for
from hooks.lr_scheduler import lr_stepper_for
from hooks.precision import precision_for, resolve_precision
from strategies.accelerator import select_strategy

__all__ = ["Trainer"]
sys.modules.setdefault(f"{__name__}.states", states)


def _setting(name: str) -> property:
    """A read-only view of `trainer.settings.<name>` (Lightning exposes each flag as a Trainer property)."""
    return property(lambda self: getattr(self.settings, name), doc=f"The resolved `{name}` flag.")


def _data(name: str) -> property:
    """A read-only view of the run's data sources (`RunContext.sources.<name>`)."""
    return property(lambda self: getattr(self.context.sources, name), doc=f"The run's `{name}`.")


def _stage_is(stage: str) -> property:
    return property(lambda self: self.state.stage == stage, doc=f"Whether the running stage is {stage!r}.")


class Trainer:
    """Lightning's Trainer on a state machine: `Trainer(max_epochs=3).fit(model, dataloader)`.

    Every Lightning 2.x flag is accepted and validated before any work starts (see `engine.config`). Beyond
    Lightning: `trainer.on(EventType, every=...)` and `trainer.add_handler(obj)` attach handlers,
    `trainer.describe()` shows their resolved order, `trainer.machine` is the fit machine, open to composition, and
    `trainer.context` is the run context the state functions use.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.config = TrainerConfig.from_kwargs(**kwargs)
        self.config.check_implemented()
        self.settings = s = self.config.effective()
        warn_default_epochs = self.config.max_epochs is None and self.config.max_steps == -1 and s.max_epochs == 1000
        self.strategy = select_strategy(s)
        rank_zero_only.rank = self.strategy.global_rank  # type: ignore[attr-defined]
        s.precision = resolve_precision(s.precision, self.strategy.root_device)
        assembly.set_torch_flags(s)
        self.bus = Bus()
        assembly.configure_messages(s.log_format, self.strategy.global_rank)
        if self.strategy.is_global_zero:
            log_lines(self.config.info_messages())
        callbacks, time_limit = assembly.default_callbacks(s, self.config, list(s.callbacks))
        if time_limit and self.config.max_epochs is None and self.config.max_steps == -1:
            s.max_epochs = -1  # a time limit replaces the 1000-epoch default, as in Lightning
            warn_default_epochs = False
        self.warn_default_epochs = warn_default_epochs
        self.ckpt_path: str | None = None  # the checkpoint the last run loaded (Lightning's trainer.ckpt_path)
        self.profiler: Any = assembly.build_profiler(s.profiler)
        loggers = assembly.build_loggers(s)
        self.tracers = assembly.build_tracers(s, loggers)  # trace recorder / verifier (engine.trace), run handlers
        self._rc = RunContext(self, self.config, s, self.strategy, self.bus, build_fit_machine(),
                              build_eval_machine(), callbacks, loggers, fit_handlers=[lr_stepper_for, clipping_for],
                              attach_callbacks=assembly.with_tracers(attach_run, self.tracers, self.bus),
                              stage_handlers=[precision_for])

    # -- the run context and what the Trainer assembled -------------------------------------------------------------
    @property
    def context(self) -> RunContext:
        """The run context: progress, control, results, data sources and the step pipeline (engine.loops.context)."""
        return self._rc

    @property
    def control(self) -> Control:
        return self._rc.control

    @property
    def state(self) -> RunStatus:
        return self._rc.status

    @property
    def machine(self) -> Machine:
        """The fit machine (compose it: insert/replace states), or assign your own."""
        return self._rc.machine

    @machine.setter
    def machine(self, machine: Machine) -> None:
        self._rc.machine = machine

    @property
    def eval_machine(self) -> Machine:
        return self._rc.eval_machine

    @property
    def callbacks(self) -> list[Any]:
        return self._rc.callbacks

    @property
    def loggers(self) -> list[Any]:
        return self._rc.loggers

    @loggers.setter
    def loggers(self, loggers: list[Any] | None) -> None:
        self._rc.loggers = list(loggers or [])

    @property
    def logger(self) -> Any:
        return self._rc.loggers[0] if self._rc.loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self._rc.loggers = [] if logger is None else [logger]

    # -- handlers -------------------------------------------------------------------------------------------------
    def on(self, event_type: type, *, every: int | None = None, once: int | None = None,
           when: Callable[[Any], bool] | None = None, priority: int = CALLBACK) -> Callable[[Callable], Callable]:
        """Decorator: `@trainer.on(EpochEnded, every=2)` calls the function with the event."""
        return self.bus.on(event_type, priority=priority, every=every, once=once, when=when)

    def add_handler(self, handler: object, priority: int | None = None) -> list[Subscription]:
        """Attach a handler object for the Trainer's lifetime: its `on_<event>(event)` methods, `wrap_<phase>`
        and `provide_<action>` (pass it in `callbacks=[...]` instead to attach it for each run only)."""
        if isinstance(handler, Callback):
            raise TypeError(f"{type(handler).__name__} is a pl.Callback: pass it in Trainer(callbacks=[...]) instead")
        return self.bus.attach(handler, priority=priority)

    def describe(self) -> str:
        """The resolved handler order per event, then the machine. Outside a run, the run's handlers (and the hooks
        of the last model run) are attached for the moment, so the order shown is the one a run uses."""
        rc = self._rc
        if rc.run_subs or rc.run_handlers:
            return f"{self.bus.describe()}\n\n{rc.machine}"
        rc.attach_run_handlers()
        try:
            return f"{self.bus.describe()}\n\n{rc.machine}"
        finally:
            rc.detach_run_handlers()

    # -- entry points ---------------------------------------------------------------------------------------------
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | None = None,
            weights_only: bool | None = None) -> None:
        """Train `model`; data from the arguments, the datamodule, or the model's *_dataloader hooks."""
        check_model(model, "fit")
        if isinstance(train_dataloaders, LightningDataModule):
            if datamodule is not None:
                raise MisconfigurationException("trainer.fit: pass the datamodule once (datamodule=...)")
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException("trainer.fit: pass either dataloaders or datamodule=..., not both")
        name = type(model).__name__
        if not overridden(model, LightningModule, "training_step"):
            raise MisconfigurationException(
                f"trainer.fit: {name} has no training_step; define "
                "`def training_step(self, batch, batch_idx)` returning the loss")
        if not overridden(model, LightningModule, "configure_optimizers"):
            raise MisconfigurationException(
                f"trainer.fit: {name} has no configure_optimizers; define it to return an optimizer, "
                "e.g. `return torch.optim.Adam(self.parameters(), lr=1e-3)`")
        if (train_dataloaders is None and datamodule is None
                and not overridden(model, LightningModule, "train_dataloader")):
            raise MisconfigurationException(
                f"trainer.fit: no training data; pass train_dataloaders, a datamodule, or define {name}.train_dataloader()")
        self._use_datamodule(datamodule)
        self._rc.sources.prepare("fit", model, datamodule, train=train_dataloaders, val=val_dataloaders)
        self._load_ckpt(ckpt_path, "fit", weights_only)
        if self.warn_default_epochs:
            warnings.warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, "
                          "set `max_epochs=-1`.", PossibleUserWarning, stacklevel=user_stacklevel())
        self.strategy.launch(run_stage, self._rc, "fit", model, self.profiler)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: LightningDataModule | None = None,
                 weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run validation once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("validate", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: LightningDataModule | None = None,
             weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the test loop once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("test", model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None,
                datamodule: LightningDataModule | None = None, return_predictions: bool | None = None,
                ckpt_path: str | None = None, weights_only: bool | None = None) -> Any:
        """Run predict_step over the data; returns the list of predictions (a list per dataloader if several)."""
        model, datamodule = self._eval_inputs("predict", model, dataloaders, ckpt_path, datamodule, weights_only)
        keep = True if return_predictions is None else bool(return_predictions)
        out = self.strategy.launch(run_stage, self._rc, "predict", model, self.profiler, keep)
        return out if keep else None

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, ckpt_path: Any, verbose: bool,
                  datamodule: Any, weights_only: bool | None) -> list[dict[str, float]]:
        model, datamodule = self._eval_inputs(stage, model, dataloaders, ckpt_path, datamodule, weights_only)
        results = self.strategy.launch(run_stage, self._rc, stage, model, self.profiler, True)
        if verbose and self.is_global_zero:
            assembly.print_results(stage, results)
        return results

    def _eval_inputs(self, stage: str, model: Any, dataloaders: Any, ckpt_path: Any, datamodule: Any,
                     weights_only: bool | None) -> tuple:
        """Check the arguments of validate/test/predict, remember where their data comes from, read the checkpoint."""
        if model is None:
            model = self.lightning_module
            if model is None:
                raise no_model(stage)
            handlers = self._rc.checkpoint_handlers()
            if ckpt_path is None and handlers and handlers[0].best_model_path:
                warnings.warn(f"`.{stage}(ckpt_path=None)` was called without a model: the best model of the "
                              f"previous `fit` call is used ({handlers[0].best_model_path}); pass "
                              f"`.{stage}(ckpt_path='best')` to say so", UserWarning, stacklevel=user_stacklevel())
                ckpt_path = "best"
        else:
            check_model(model, stage)
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if datamodule is not None and dataloaders is not None:
            raise MisconfigurationException(f"trainer.{stage}: pass either dataloaders or datamodule=..., not both")
        check_step_implemented(model, stage)
        self._use_datamodule(datamodule)
        self._rc.sources.prepare(stage, model, datamodule, eval_loaders=dataloaders)
        self._load_ckpt(ckpt_path, stage, weights_only)
        return model, datamodule

    def _load_ckpt(self, ckpt_path: Any, fn: str, weights_only: bool | None) -> None:
        """Resolve and read `ckpt_path` before any work; the run restores from it (engine.loops.resume)."""
        path = self._rc.resolve_ckpt_path(ckpt_path, fn)
        self.ckpt_path = path
        load = getattr(self.strategy, "load_checkpoint", None) or checkpoint.load  # FSDP reads shards itself
        self._rc.resume_from = None if path is None else load(
            path, weights_only=True if weights_only is None else weights_only)
        self._rc.resume_source = path

    def _use_datamodule(self, datamodule: Any) -> None:
        self._rc.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self

    # -- Lightning's read-only views of the run state ---------------------------------------------------------------
    @property
    def timestamp(self) -> Timestamp:
        """Where the run is now (built from the progress counters on each read)."""
        return self._rc.progress.timestamp()

    @property
    def current_epoch(self) -> int:
        return self._rc.progress.epoch

    @property
    def global_step(self) -> int:
        return self._rc.progress.global_step

    @property
    def batches_stepped(self) -> int:
        """Training batches completed so far (validation included): the x-axis of logger writes (Lightning's)."""
        return self._rc.progress.batches_stepped

    @property
    def is_last_batch(self) -> bool:
        return self._rc.progress.is_last_batch

    @property
    def should_update_logs(self) -> bool:
        """Whether this training batch's step metrics go to the loggers (every log_every_n_steps, or stopping)."""
        from engine.loops.policy import should_update_logs

        rc = self._rc
        return should_update_logs(rc.progress, rc.settings, rc.control.stop_requested)

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        """Send metrics to every logger (MetricsWritten): tensors become floats with one host sync; step defaults
        to batches_stepped (with an 'epoch' entry added), or a 'step' entry in `metrics` is used as the step."""
        self._rc.log_metrics(metrics, step)

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        return self._rc.metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, Tensor]:
        return self._rc.metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._rc.metrics.progress_bar_metrics

    @property
    def should_stop(self) -> bool:
        return self._rc.control.stop_requested

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            frame = sys._getframe(1)
            self._rc.control.request_stop("trainer.should_stop = True",
                                          by=getattr(frame.f_code, "co_qualname", frame.f_code.co_name))
        else:
            self._rc.control.stop_requested = False

    @property
    def lightning_module(self) -> LightningModule | None:
        return self._rc.module

    @property
    def model(self) -> Any:
        """The module the loops call: what the strategy's setup_module returned (the LightningModule on one
        device), or the LightningModule before the first run."""
        rc = self._rc
        return rc.model if rc.model is not None else rc.module

    @property
    def datamodule(self) -> LightningDataModule | None:
        return self._rc.datamodule

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._rc.pipeline.optimizers

    @optimizers.setter
    def optimizers(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self._rc.pipeline.optimizers = list(optimizers)

    @property
    def lr_scheduler_configs(self) -> list[Any]:
        return self._rc.pipeline.lr_scheduler_configs

    @property
    def sanity_checking(self) -> bool:
        return self._rc.sanity_checking

    train_dataloader = _data("train_dataloader")
    val_dataloaders = _data("val_dataloaders")
    test_dataloaders = _data("test_dataloaders")
    predict_dataloaders = _data("predict_dataloaders")
    num_training_batches = _data("num_training_batches")
    num_sanity_val_batches = _data("num_sanity_val_batches")
    num_val_batches = _data("num_val_batches")
    num_test_batches = _data("num_test_batches")
    num_predict_batches = _data("num_predict_batches")
    val_check_batch = _data("val_check_batch")

    barebones = _setting("barebones")
    max_epochs = _setting("max_epochs")
    min_epochs = _setting("min_epochs")
    max_steps = _setting("max_steps")
    min_steps = _setting("min_steps")
    fast_dev_run = _setting("fast_dev_run")
    limit_train_batches = _setting("limit_train_batches")
    limit_val_batches = _setting("limit_val_batches")
    limit_test_batches = _setting("limit_test_batches")
    limit_predict_batches = _setting("limit_predict_batches")
    val_check_interval = _setting("val_check_interval")
    check_val_every_n_epoch = _setting("check_val_every_n_epoch")
    num_sanity_val_steps = _setting("num_sanity_val_steps")
    log_every_n_steps = _setting("log_every_n_steps")
    @property
    def accumulate_grad_batches(self) -> int:
        """Micro-batches per optimizer step now (a GradientAccumulationScheduler changes it by epoch)."""
        return self._rc.pipeline.context.accumulate

    gradient_clip_val = _setting("gradient_clip_val")
    precision = _setting("precision")
    reload_dataloaders_every_n_epochs = _setting("reload_dataloaders_every_n_epochs")
    default_root_dir = _setting("default_root_dir")
    num_nodes = _setting("num_nodes")

    @property
    def gradient_clip_algorithm(self) -> str | None:
        return self.config.gradient_clip_algorithm

    @property
    def log_dir(self) -> str:
        """The first logger's log_dir (its save_dir for other logger types), else default_root_dir."""
        if not self.loggers:
            return self.default_root_dir
        lg = self.loggers[0]
        return getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None) or self.default_root_dir

    @property
    def device_ids(self) -> list[int]:
        """The device indices of this node's processes (CPU processes count 0, 1, ...), as in Lightning."""
        return list(getattr(self.strategy, "device_indices", None) or [self.strategy.root_device.index or 0])

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def received_sigterm(self) -> bool:
        return False

    @property
    def interrupted(self) -> bool:
        return self.state.status == "interrupted"

    training = _stage_is(Stage.TRAIN)
    validating = _stage_is(Stage.VALIDATE)
    testing = _stage_is(Stage.TEST)
    predicting = _stage_is(Stage.PREDICT)

    @property
    def progress_bar_callback(self) -> Any:
        """The first progress bar among the callbacks (TQDMProgressBar or another `*ProgressBar`), or None."""
        return next((c for c in self.callbacks if any(k.__name__.endswith("ProgressBar") for k in type(c).__mro__)),
                    None)

    @property
    def checkpoint_callback(self) -> Any:
        """The first ModelCheckpoint among the callbacks, or None."""
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from hooks.checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def early_stopping_callback(self) -> Any:
        """The first EarlyStopping among the callbacks, or None."""
        found = self.early_stopping_callbacks
        return found[0] if found else None

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from hooks.early_stopping import EarlyStopping

        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (Lightning's formula), e.g. for OneCycleLR."""
        s = self.settings
        n = self._rc.sources.estimated_train_batches()
        per_epoch = n // s.accumulate_grad_batches if n != math.inf else math.inf
        total = per_epoch * s.max_epochs if s.max_epochs != -1 else math.inf
        if s.max_steps != -1:
            return min(total, s.max_steps) if total != math.inf else s.max_steps
        return total

    def print(self, *args: Any, **kwargs: Any) -> None:
        """print on global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    def save_checkpoint(self, filepath: str, weights_only: bool | None = None, storage_options: Any = None) -> None:
        """Write the checkpoint of the run as it is now, atomically (engine.checkpoint); during a fit, a checkpoint
        written at a batch or epoch boundary (ModelCheckpoint does so) resumes bit-exactly."""
        if storage_options is not None:
            raise MisconfigurationException("trainer.save_checkpoint(storage_options=...): only local paths are "
                                            "supported; leave storage_options None")
        self._rc.save_checkpoint(filepath, weights_only=bool(weights_only))
