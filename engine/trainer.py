"""Trainer: validates the config, assembles strategy, handlers and machines, and runs fit/validate/test/predict.

Read top to bottom: `__init__` (config, strategy, bus, machines) -> `fit` / `validate` / `test` / `predict`
(checks, then `_run`) -> the pieces the state functions of `engine.loops` call, in the order a run meets them.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from engine import events as ev
from engine.bus import CALLBACK, Bus, Subscription, entered
from engine.config import TrainerConfig
from engine.control import Control
from engine.datamodule import LightningDataModule, move_data_to_device
from engine.errors import MisconfigurationException
from engine.loops.data import (
    as_loader_list, check_not_empty, has_len, maybe_seed_workers, num_batches, without_shuffle,
)
from engine.log import log
from engine.loops.evaluate import EvalLoop, build_eval_machine, check_step_implemented
from engine.loops.fit import FitLoop, SkipStep, build_fit_machine
from engine.machine import Machine
from engine.module import LightningModule
from engine.optim import LightningOptimizer, LRSchedulerConfig, parse_optimizers
from engine.results import LoggedMetrics, ResultCollection
from engine.seed import collect_rng_states, set_rng_states
from engine.state import RunStatus, Stage, Timestamp
from hooks.callback import Callback, attach_callback, attach_module
from hooks.lr_scheduler import LRSchedulerStepper
from strategies.accelerator import resolve_device
from strategies.single_device import SingleDeviceStrategy

__all__ = ["Trainer"]

_NO_WRAP = nullcontext()


class _MockOptimizer(torch.optim.Optimizer):
    """Stands in when configure_optimizers returns None: step only runs the closure."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Callable | None = None) -> Any:  # type: ignore[override]
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


def _batch_size(batch: Any) -> int:
    """Samples in a batch for the Timestamp: size(0) of the first tensor found (0 when there is none)."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = _batch_size(item)
            if n:
                return n
        return 0
    if isinstance(batch, dict):
        for item in batch.values():
            n = _batch_size(item)
            if n:
                return n
    return 0


class Trainer:
    """Lightning's Trainer on a state machine: `Trainer(max_epochs=3).fit(model, dataloader)`.

    Every Lightning 2.x flag is accepted and validated before any work starts (see `engine.config`). Beyond
    Lightning: `trainer.on(EventType, every=...)` and `trainer.add_handler(obj)` attach handlers,
    `trainer.describe()` shows their resolved order, and `trainer.machine` is the fit machine, open to composition.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.config = TrainerConfig.from_kwargs(**kwargs)
        self.config.check_implemented()
        self.settings = s = self.config.effective()
        self._step_limit = s.max_steps if s.max_steps != -1 else math.inf  # read per batch
        if self.config.max_epochs is None and self.config.max_steps == -1 and s.max_epochs == 1000:
            self._warn_default_epochs = True
        else:
            self._warn_default_epochs = False
        self.strategy = SingleDeviceStrategy(resolve_device(s.accelerator, s.devices))
        self._set_torch_flags()
        self.bus = Bus()
        # the run's counters; `timestamp` builds the immutable Timestamp from them when someone asks (events)
        self._epoch = self._batch_in_epoch = self._global_step = self._batches_seen = self._samples_seen = 0
        self.control = Control(lambda: self.timestamp)
        self.state = RunStatus()
        self.machine: Machine = build_fit_machine()
        self.eval_machine: Machine = build_eval_machine()
        _configure_messages(s.log_format, self.strategy.global_rank)
        self.callbacks: list[Any] = list(s.callbacks)
        self._default_callbacks()
        self.loggers: list[Any] = self._build_loggers(s.logger)
        self.profiler: Any = self._build_profiler(s.profiler)
        self._metrics = LoggedMetrics()
        self._results: ResultCollection | None = None
        self._train_results = ResultCollection(training=True)
        self._eval_results = ResultCollection(training=False)
        self.lightning_module: LightningModule | None = None
        self.datamodule: LightningDataModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.num_training_batches: int | float = math.inf
        self.num_sanity_val_batches: list[int | float] = []
        self.num_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.val_check_batch: int | float = math.inf
        self._loop: FitLoop | None = None
        self._run_subs: list[Subscription] = []
        self._val_source: Callable[[], Any] | None = None
        self._val_on = False
        self._transfer_plan: tuple | None = None
        self._device_where: int | None = None
        self._val_loaders: list[Any] | None = None
        self._last_val_reload = -1
        self._train_source: Callable[[], Any] | None = None
        self._train_sized = True
        self._batches_stepped = 0
        self._eval_steps: dict[tuple[str, int], int] = {}
        self._lr: LRSchedulerStepper | None = None
        self._barebones_warned = False
        self.sanity_checking = False

    def _set_torch_flags(self) -> None:
        s = self.settings
        if s.deterministic:
            if torch.cuda.is_available():
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=s.deterministic == "warn")
        if s.benchmark is not None and torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = s.benchmark

    def _default_callbacks(self) -> None:
        """Lightning appends its default callbacks after the user's: Timer (max_time), progress bar, model summary."""
        s = self.settings
        timers = [c for c in self.callbacks if type(c).__name__ == "Timer"]
        if s.max_time_seconds is not None:
            if timers:
                log.info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
            else:
                from hooks.timer import Timer

                timers = [Timer(duration=self.config.max_time, interval="step")]
                self.callbacks.append(timers[0])
        if timers and self.config.max_epochs is None and self.config.max_steps == -1:
            s.max_epochs = -1  # a time limit replaces the 1000-epoch default, as in Lightning
            self._warn_default_epochs = False
        bars = [c for c in self.callbacks if _is_progress_bar(c)]
        if not s.enable_progress_bar and bars:
            raise MisconfigurationException(
                f"Trainer(enable_progress_bar=False) but callbacks contains {type(bars[0]).__name__}; remove it or "
                "set enable_progress_bar=True")
        if s.enable_progress_bar and not bars:
            from hooks.progress import TQDMProgressBar

            self.callbacks.append(TQDMProgressBar())
        if s.enable_model_summary and not any(_is_summary(c) for c in self.callbacks):
            from hooks.model_summary import ModelSummary

            self.callbacks.append(ModelSummary())

    def _build_loggers(self, flag: Any) -> list[Any]:
        """logger=True/None: TensorBoard at default_root_dir (CSV without tensorboardX); False: none; else as given.
        No logger under fast_dev_run, as in Lightning."""
        if flag is False or self.settings.fast_dev_run:
            return []
        if flag is True:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                from hooks.csv_logger import CSVLogger

                return [CSVLogger(save_dir=self.settings.default_root_dir)]
            from hooks.tensorboard import TensorBoardLogger

            return [TensorBoardLogger(save_dir=self.settings.default_root_dir)]
        return list(flag) if isinstance(flag, (list, tuple)) else [flag]

    def _build_profiler(self, flag: Any) -> Any:
        if flag is None:
            return None
        from hooks.profiler import resolve_profiler

        return resolve_profiler(flag)

    # -- handlers -------------------------------------------------------------------------------------------------
    def on(self, event_type: type, *, every: int | None = None, once: int | None = None,
           when: Callable[[Any], bool] | None = None, priority: int = CALLBACK) -> Callable[[Callable], Callable]:
        """Decorator: `@trainer.on(EpochEnded, every=2)` calls the function with the event."""
        return self.bus.on(event_type, priority=priority, every=every, once=once, when=when)

    def add_handler(self, handler: object, priority: int | None = None) -> list[Subscription]:
        """Attach a handler object: its `on_<event>(event)` methods, `wrap_<phase>` and `provide_<action>`."""
        if isinstance(handler, Callback):
            raise TypeError(f"{type(handler).__name__} is a pl.Callback: pass it in Trainer(callbacks=[...]) instead")
        return self.bus.attach(handler, priority=priority)

    def describe(self) -> str:
        """The resolved handler order per event, then the machine. Outside a run, the callbacks (and the hooks of
        the last model run) are attached for the moment, so the order shown is the one a run uses."""
        if self._run_subs:
            return f"{self.bus.describe()}\n\n{self.machine}"
        model = self.lightning_module
        subs: list[Subscription] = []
        for cb in self.callbacks:
            if isinstance(cb, Callback):
                subs.extend(attach_callback(self.bus, cb, self, model))  # type: ignore[arg-type]
        if model is not None:
            subs.extend(attach_module(self.bus, model, self))
        try:
            return f"{self.bus.describe()}\n\n{self.machine}"
        finally:
            for sub in subs:
                sub.remove()

    # -- entry points ---------------------------------------------------------------------------------------------
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | None = None,
            weights_only: bool | None = None) -> None:
        """Train `model`; data from the arguments, the datamodule, or the model's *_dataloader hooks."""
        self._check_model(model, "fit")
        if isinstance(train_dataloaders, LightningDataModule):
            if datamodule is not None:
                raise MisconfigurationException("trainer.fit: pass the datamodule once (datamodule=...)")
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException(
                "trainer.fit: pass either dataloaders or datamodule=..., not both")
        self._check_ckpt(ckpt_path)
        if not _overridden(model, "training_step"):
            raise MisconfigurationException(
                f"trainer.fit: {type(model).__name__} has no training_step; define "
                "`def training_step(self, batch, batch_idx)` returning the loss")
        if not _overridden(model, "configure_optimizers"):
            raise MisconfigurationException(
                f"trainer.fit: {type(model).__name__} has no configure_optimizers; define it to return an optimizer, "
                "e.g. `return torch.optim.Adam(self.parameters(), lr=1e-3)`")
        if train_dataloaders is None and datamodule is None and not _overridden(model, "train_dataloader"):
            raise MisconfigurationException(
                "trainer.fit: no training data; pass train_dataloaders, a datamodule, or define "
                f"{type(model).__name__}.train_dataloader()")
        self._prepare_sources("fit", model, datamodule, train=train_dataloaders, val=val_dataloaders)
        if self._warn_default_epochs:
            warnings.warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, "
                          "set `max_epochs=-1`.", UserWarning, stacklevel=2)
        self._run("fit", model, lambda: self.machine.run(self._new_fit_loop()))

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: LightningDataModule | None = None,
                 weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run validation once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: LightningDataModule | None = None,
             weights_only: bool | None = None) -> list[dict[str, float]]:
        """Run the test loop once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None,
                datamodule: LightningDataModule | None = None, return_predictions: bool | None = None,
                ckpt_path: str | None = None, weights_only: bool | None = None) -> Any:
        """Run predict_step over the data; returns the list of predictions (a list per dataloader if several)."""
        model = self._model_or_last(model, "predict")
        self._check_ckpt(ckpt_path)
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if datamodule is not None and dataloaders is not None:
            raise MisconfigurationException("trainer.predict: pass either dataloaders or datamodule=..., not both")
        self._prepare_sources("predict", model, datamodule, eval_loaders=dataloaders)
        keep = True if return_predictions is None else bool(return_predictions)
        out: list[Any] = []
        self._run("predict", model, lambda: out.append(self._run_eval_stage("predict", keep)))
        return out[0] if keep else None

    # -- run plumbing ---------------------------------------------------------------------------------------------
    def _check_model(self, model: Any, fn: str) -> None:
        if not isinstance(model, LightningModule):
            raise TypeError(
                f"trainer.{fn}: `model` must be a LightningModule (subclass engine.LightningModule), got "
                f"{type(model).__module__}.{type(model).__qualname__}")

    def _check_ckpt(self, ckpt_path: Any) -> None:
        if ckpt_path is not None:
            raise NotImplementedError(
                f"ckpt_path={ckpt_path!r}: loading checkpoints is not available in statetrain yet; leave it None")

    def _model_or_last(self, model: Any, fn: str) -> LightningModule:
        if model is None:
            if self.lightning_module is None:
                raise MisconfigurationException(
                    f"trainer.{fn}() needs a model: pass one, or call it after trainer.fit(model)")
            return self.lightning_module
        self._check_model(model, fn)
        return model

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, ckpt_path: Any, verbose: bool,
                  datamodule: Any) -> list[dict[str, float]]:
        model = self._model_or_last(model, stage)
        self._check_ckpt(ckpt_path)
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        if datamodule is not None and dataloaders is not None:
            raise MisconfigurationException(f"trainer.{stage}: pass either dataloaders or datamodule=..., not both")
        check_step_implemented(model, stage)
        self._prepare_sources(stage, model, datamodule, eval_loaders=dataloaders)
        out: list[Any] = []
        self._run(stage, model, lambda: out.append(self._run_eval_stage(stage, True)))
        results = out[0]
        if verbose and self.is_global_zero:
            _print_results(stage, results)
        return results

    def _prepare_sources(self, fn: str, model: LightningModule, datamodule: Any, train: Any = None,
                         val: Any = None, eval_loaders: Any = None) -> None:
        """Remember where each dataloader comes from: an argument, the datamodule, or the model's hook."""
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self

        def source(given: Any, hook: str) -> Callable[[], Any] | None:
            if given is not None:
                return lambda: given
            owner = datamodule if datamodule is not None and _dm_overridden(datamodule, hook) else None
            if owner is None and _overridden(model, hook):
                owner = model
            if owner is None:
                return None
            return lambda: self._call_hook(owner, hook)

        if fn == "fit":
            self._train_source = source(train, "train_dataloader")
            self._val_source = source(val, "val_dataloader")
        else:
            hook = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}[fn]
            self._eval_source = source(eval_loaders, hook)
            if self._eval_source is None:
                raise MisconfigurationException(
                    f"trainer.{fn}: no data; pass dataloaders=..., a datamodule, or define "
                    f"{type(model).__name__}.{hook}()")
        self._val_loaders = None
        self._last_val_reload = -1

    def _run(self, fn: str, model: LightningModule, body: Callable[[], None]) -> None:
        """Common run frame: attach the model, run `body`, and on an exception fire ExceptionRaised and re-raise."""
        self.state.fn = fn
        self.state.status = "running"
        self.state.stage = {"fit": Stage.TRAIN, "validate": Stage.VALIDATE, "test": Stage.TEST,
                            "predict": Stage.PREDICT}[fn]
        self.lightning_module = model
        model.trainer = self
        self.control.reset()
        self.control.history = []
        self._metrics.reset()
        anomaly = torch.autograd.set_detect_anomaly(True) if self.settings.detect_anomaly else nullcontext()
        profiler = self.profiler
        if profiler is not None:
            profiler.attach(self)
        self._watch_transitions()
        try:
            with anomaly:
                body()
            self.state.status = "finished"
            self._finalize_loggers("success")
        except BaseException as exc:
            self.state.status = "interrupted"
            self._on_exception(exc)
            raise
        finally:
            if profiler is not None:
                profiler.detach(self)
                if self.is_global_zero:
                    profiler.describe()
            for sub in self._run_subs:
                sub.remove()
            self._run_subs = []
            model.__dict__["_current_fx_name"] = None
            self._results = None
            self.state.stage = None
            self.sanity_checking = False

    def _watch_transitions(self) -> None:
        """StateChanged costs nothing unless someone listens (decided when the run starts)."""
        for machine in (self.machine, self.eval_machine):
            if self.bus.listening(ev.StateChanged):
                def fire(src: str, dst: str, name: str = machine.name) -> None:
                    self.bus.fire(ev.StateChanged(self, self.timestamp, name, src, dst))
                machine.on_transition = fire
            else:
                machine.on_transition = None

    def _on_exception(self, exc: BaseException) -> None:
        """Lightning's order: callbacks' on_exception, the datamodule's, then internal cleanup."""
        hs = self.bus.table.get(ev.ExceptionRaised)
        if hs:
            self.bus.call(hs, ev.ExceptionRaised(self, self.timestamp, exc))
        if self.datamodule is not None:
            self.datamodule.on_exception(exc)
        self.strategy.teardown()
        self._finalize_loggers("failed", raise_strict=False)

    def _finalize_loggers(self, status: str, raise_strict: bool = True) -> None:
        """finalize(status) on every logger; a strict logger that failed to write turns the run into an error."""
        failed = []
        for lg in self.loggers:
            lg.finalize(status)
            if getattr(lg, "strict", False) and getattr(lg, "error", None) is not None:
                failed.append(lg)
        if failed and raise_strict:
            from hooks.logger import LoggerError

            raise LoggerError(
                "; ".join(f"{type(lg).__name__} could not write to {getattr(lg, 'log_dir', '?')}: {lg.error}"
                          for lg in failed) + " (strict=True: the run is marked failed)")

    # -- logging to loggers -------------------------------------------------------------------------------------
    @property
    def batches_stepped(self) -> int:
        """Training batches that stepped the optimizer so far: the x-axis of logger writes (Lightning's)."""
        return self._batches_stepped

    @property
    def should_update_logs(self) -> bool:
        """Whether this training batch's step metrics go to the loggers (every log_every_n_steps, or stopping)."""
        return self._should_update_logs()

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        """Send metrics to every logger: tensors become floats with one host sync; step defaults to
        batches_stepped (with an 'epoch' entry added), or a 'step' entry in `metrics` is used as the step."""
        if not self.loggers or not metrics:
            return
        metrics = dict(metrics)
        if step is None:
            if "step" in metrics:
                step = int(_to_floats({"step": metrics.pop("step")})["step"])
            else:
                metrics.setdefault("epoch", self.current_epoch)
                step = self._batches_stepped
        floats = _to_floats(metrics)
        for lg in self.loggers:
            lg.log_metrics(floats, step)
            lg.save()

    def _log_hyperparams(self) -> None:
        """Hyperparameters from save_hyperparameters() (module and datamodule) and the Trainer config."""
        if not self.loggers or not self.settings.enable_autolog_hparams:
            return
        params: dict[str, Any] = {}
        model, dm = self.lightning_module, self.datamodule
        for owner in (dm, model):
            if owner is not None and getattr(owner, "_log_hyperparams", False):
                params.update(owner.hparams_initial)
        params["trainer"] = self.config.to_json_dict()
        for lg in self.loggers:
            lg.log_hyperparams(params)
            if getattr(lg, "_log_graph", False) and model is not None:
                lg.log_graph(model)
            lg.save()

    def _attach_run_handlers(self, model: LightningModule) -> None:
        """Callbacks (in list order) then the module's overridden hooks; detached when the run ends."""
        subs = self._run_subs
        with self.bus.batch():
            for cb in self.callbacks:
                if isinstance(cb, Callback):
                    subs.extend(attach_callback(self.bus, cb, self, model))
                else:
                    subs.extend(self.bus.attach(cb))
            subs.extend(attach_module(self.bus, model, self))

    def _merge_model_callbacks(self, model: LightningModule) -> None:
        """configure_callbacks(): same-type trainer callbacks are replaced, the rest appended."""
        if not _overridden(model, "configure_callbacks"):
            return
        extra = self._call_hook(model, "configure_callbacks")
        if extra is None:
            return
        if not isinstance(extra, (list, tuple)):
            extra = [extra]
        types = {type(c) for c in extra}
        self.callbacks = [c for c in self.callbacks if type(c) not in types] + list(extra)

    def _call_hook(self, owner: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a module/datamodule hook with `self.log` context set to the hook's name."""
        module = self.lightning_module
        prev = module._current_fx_name if module is not None else None
        if module is not None:
            module.__dict__["_current_fx_name"] = name
        try:
            return getattr(owner, name)(*args, **kwargs)
        finally:
            if module is not None:
                module.__dict__["_current_fx_name"] = prev

    def _call_module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._call_hook(self.lightning_module, name, *args, **kwargs)

    def _plan_transfer(self) -> None:
        """Which batch-transfer hooks run: the datamodule's where it overrides one, else the module's overrides."""
        dm, model = self.datamodule, self.lightning_module
        plan = []
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            if dm is not None and _dm_overridden(dm, name):
                plan.append((dm, name))
            elif _overridden(model, name):
                plan.append((model, name))
            elif name == "transfer_batch_to_device":
                plan.append((None, name))
        self._transfer_plan = tuple(plan) if len(plan) > 1 or plan[0][0] is not None else None
        device = self.strategy.root_device  # get_device() of a tensor already there: -1 on the CPU, else the index
        self._device_where = -1 if device.type == "cpu" else (device.index if device.type == "cuda" else None)

    def _transfer_batch(self, batch: Any, dataloader_idx: int) -> Any:
        """on_before_batch_transfer -> transfer_batch_to_device -> on_after_batch_transfer (Lightning's order)."""
        device = self.strategy.root_device
        plan = self._transfer_plan
        if plan is None:
            where = self._device_where
            if where is not None and type(batch) in (tuple, list):  # the usual batch, often already there
                for item in batch:
                    if type(item) is not Tensor or item.get_device() != where:
                        break
                else:
                    return batch
            return move_data_to_device(batch, device)
        for owner, name in plan:
            if owner is None:
                batch = move_data_to_device(batch, device)
            elif name == "transfer_batch_to_device":
                batch = self._call_hook(owner, name, batch, device, dataloader_idx)
            else:
                batch = self._call_hook(owner, name, batch, dataloader_idx)
        return batch

    def _fire_simple(self, event_type: type) -> None:
        hs = self.bus.table.get(event_type)
        if hs:
            self.bus.call(hs, event_type(self, self.timestamp))

    def _setup_common(self, stage: str) -> None:
        """configure_callbacks, prepare_data, setup(stage), configure_model, move to device (Lightning §2.0)."""
        model = self.lightning_module
        assert model is not None
        self._merge_model_callbacks(model)
        self._attach_run_handlers(model)
        dm = self.datamodule
        if self.local_rank == 0:
            if dm is not None:
                self._call_hook(dm, "prepare_data")
            if _overridden(model, "prepare_data"):
                self._call_module("prepare_data")
        if dm is not None:
            self._call_hook(dm, "setup", stage=stage)
        hs = self.bus.table.get(ev.Setup)
        if hs:
            self.bus.call(hs, ev.Setup(self, self.timestamp, stage))
        if _overridden(model, "configure_model"):
            self._call_module("configure_model")
        self.strategy.setup_module(model)
        self._plan_transfer()
        self._val_on = (self._val_source is not None and self.settings.limit_val_batches != 0
                        and _overridden(model, "validation_step"))

    def _teardown_common(self, stage: str) -> None:
        if self.datamodule is not None:
            self._call_hook(self.datamodule, "teardown", stage=stage)
        hs = self.bus.table.get(ev.Teardown)
        if hs:
            self.bus.call(hs, ev.Teardown(self, self.timestamp, stage))

    # -- fit: setup -----------------------------------------------------------------------------------------------
    def _new_fit_loop(self) -> FitLoop:
        self._loop = FitLoop(self)
        return self._loop

    def _announce(self, fn: str) -> None:
        """The run's opening message: what runs where, and the flags that differ from Lightning's defaults."""
        if not self.is_global_zero:
            return
        device = self.strategy.root_device
        log.info(f"{fn} started", model=type(self.lightning_module).__name__, device=str(device),
                 cuda_available=torch.cuda.is_available(), accelerator=str(self.settings.accelerator),
                 loggers=[type(lg).__name__ for lg in self.loggers] or None,
                 log_dir=self.log_dir if self.loggers else None)
        defaults = TrainerConfig()
        changed = {k: v for k, v in self.config.to_json_dict().items()
                   if getattr(self.config, k) != getattr(defaults, k)}
        if changed:
            log.info("Trainer config", **changed)

    def _setup_fit(self, loop: FitLoop) -> None:
        """Everything before the first epoch: hooks, optimizers, FitStarted, zero_grad."""
        model = loop.module
        self._announce("fit")
        self.timestamp = Timestamp()
        self._batches_stepped = 0
        self._train_results = ResultCollection(training=True)
        self._eval_results = ResultCollection(training=False)
        self._setup_common("fit")
        self._setup_optimizers(model)
        self._fire_simple(ev.FitStarted)
        self._log_hyperparams()
        self._call_module("zero_grad")

    def _setup_optimizers(self, model: LightningModule) -> None:
        returned = self._call_module("configure_optimizers")
        opts, scheds, _monitor = parse_optimizers(returned, automatic_optimization=model.automatic_optimization)
        self.optimizers = list(opts)
        self.lr_scheduler_configs = list(scheds)
        self._automatic = model.automatic_optimization
        step_fn = self._auto_step if self._automatic else self._manual_step
        self._lightning_optimizers = [LightningOptimizer(o, step_fn=step_fn) for o in self.optimizers]
        self._step_optimizer = self.optimizers[0] if self.optimizers else _MockOptimizer()
        self._zero_grad_overridden = _overridden(model, "optimizer_zero_grad") and bool(self.optimizers)
        self._optimizer_step_overridden = _overridden(model, "optimizer_step")
        # optimizers that re-evaluate the closure (LBFGS) must get it; the others may be stepped after it ran
        self._direct_step = bool(self.optimizers) and not isinstance(self._step_optimizer, torch.optim.LBFGS)
        self._clip_hook = _overridden(model, "configure_gradient_clipping") or _overridden(model, "clip_gradients")
        self._clip_on = self._automatic and bool(self._clip_hook or self.settings.gradient_clip_val)
        provider = self.bus.providers.get("backward")
        if provider is not None:
            self._backward_fn = provider[1]
        elif _overridden(model, "backward"):
            self._backward_fn = lambda loss: self._call_module("backward", loss)
        else:
            self._backward_fn = Tensor.backward
        self._lr = LRSchedulerStepper(self, self.lr_scheduler_configs) if (
            self.lr_scheduler_configs and self._automatic) else None

    def _fit_skipped(self) -> bool:
        s = self.settings
        return s.max_epochs == 0 or s.max_steps == 0 or s.limit_train_batches == 0

    def _should_sanity_check(self) -> bool:
        return self._val_on and self.settings.num_sanity_val_steps != 0

    def _load_train_dataloader(self, loop: FitLoop) -> None:
        """Call the train_dataloader source, size it under limit_train_batches, compute val_check_batch."""
        assert self._train_source is not None
        loaders = as_loader_list(self._train_source(), "train_dataloaders")
        if len(loaders) != 1:
            raise MisconfigurationException(
                f"trainer.fit: expected one train dataloader, got {len(loaders)}; combine them into one")
        loader = loaders[0]
        check_not_empty([loader], "train")
        if self.settings.overfit_batches:
            loader = without_shuffle(loader)
        loader = maybe_seed_workers(loader, self)
        self.train_dataloader = loader
        self._train_sized = has_len(loader)
        self.num_training_batches = num_batches(loader, self.settings.limit_train_batches, "train")
        every = self.settings.log_every_n_steps
        if self.loggers and every and self.num_training_batches < every and not loop.warned_log_interval:
            loop.warned_log_interval = True
            warnings.warn(f"The number of training batches ({self.num_training_batches}) is smaller than the logging "
                          f"interval Trainer(log_every_n_steps={every}). Set a lower value for log_every_n_steps if "
                          "you want to see logs for the training epoch.", UserWarning, stacklevel=2)
        loop.last_train_reload = self.current_epoch
        s = self.settings
        vci = s.val_check_interval
        if isinstance(vci, int) and not isinstance(vci, bool):
            if (s.check_val_every_n_epoch is not None and self._train_sized
                    and vci > self.num_training_batches):
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}) must be <= the number of training batches "
                    f"({self.num_training_batches}); to validate by total batches across epochs set "
                    "check_val_every_n_epoch=None, to disable validation set limit_val_batches=0")
            self.val_check_batch = vci
        elif not self._train_sized or self.num_training_batches == math.inf:
            if vci != 1.0:
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}): with a train dataloader without a length, "
                    "val_check_interval must be 1.0 or an int number of batches")
            self.val_check_batch = math.inf
        else:
            self.val_check_batch = max(1, int(self.num_training_batches * vci))

    def _should_reload_train(self, loop: FitLoop) -> bool:
        n = self.settings.reload_dataloaders_every_n_epochs
        return bool(n) and self.current_epoch - loop.last_train_reload >= n

    # -- fit: one batch -------------------------------------------------------------------------------------------
    def _begin_train_batch(self, loop: FitLoop) -> None:
        """Advance the Timestamp, point self.log at this batch, fire BatchStarted."""
        self.control.skip_step_requested = False  # a request from an earlier batch does not carry over
        if loop.hot.version != self.bus.version:
            loop.hot.refresh(self.bus)
        batch = loop.batch
        self._batch_in_epoch = loop.batch_idx
        self._batches_seen += 1
        first = batch[0] if type(batch) in (tuple, list) and batch else None
        if type(first) is Tensor and first.dim():  # the usual (x, y) batch, without a call
            self._samples_seen += first.size(0)
        else:
            self._samples_seen += _batch_size(batch)
        self._train_results.set_batch(batch)  # self._results points at it from epoch_start and after validation
        hs = loop.hot.batch_started
        if hs:
            self.bus.call(hs, ev.BatchStarted(self, self.timestamp, batch, loop.batch_idx))
        # module code run by any state of this batch may self.log (written directly: nn.Module.__setattr__ is slow)
        loop.module.__dict__["_current_fx_name"] = "training_step"

    def _check_training_output(self, out: Any, loop: FitLoop) -> Tensor | None:
        """The loss from training_step's return (Tensor or dict with 'loss'); None skips the step."""
        if type(out) is Tensor and out.requires_grad and not out.ndim:  # the usual case: a scalar loss
            loop._extra = None
            loop.outputs = None
            return out
        if isinstance(out, Tensor):
            loss, extra = out, None
        elif isinstance(out, dict):
            if "loss" not in out:
                raise MisconfigurationException(
                    f"{type(loop.module).__name__}.training_step returned a dict without the key 'loss' (keys: "
                    f"{sorted(map(str, out))}); with automatic optimization put the loss under 'loss', e.g. "
                    "`return {'loss': loss, ...}`")
            loss = out["loss"]
            extra = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in out.items() if k != "loss"}
            if not isinstance(loss, Tensor):
                raise MisconfigurationException(
                    f"{type(loop.module).__name__}.training_step returned {{'loss': {type(loss).__name__}}}; the "
                    "loss must be a Tensor computed from the model's outputs")
        elif out is None:
            if not getattr(self, "_warned_none", False):
                warnings.warn(f"{type(loop.module).__name__}.training_step returned None: statetrain skips backward "
                              "and the optimizer step for that batch", UserWarning, stacklevel=2)
                self._warned_none = True
            loop._extra = None
            loop.loss = None
            loop.outputs = {}
            return None
        else:
            raise MisconfigurationException(
                f"{type(loop.module).__name__}.training_step returned {type(out).__name__} ({_short(out)}); "
                "expected a loss Tensor, a dict with the key 'loss', or None to skip the batch")
        if loss.numel() != 1:
            raise MisconfigurationException(
                f"{type(loop.module).__name__}.training_step returned a loss of shape {tuple(loss.shape)}; the loss "
                "must be a scalar tensor. Reduce it first, e.g. `loss.mean()`")
        if not loss.requires_grad:
            raise MisconfigurationException(
                f"{type(loop.module).__name__}.training_step returned a loss that does not require grad, so "
                "backward cannot reach the model's parameters. Was it computed under torch.no_grad(), "
                "detached, converted with .item(), or computed from data only?")
        loop._extra = extra
        loop.outputs = None  # built on demand in _after_optimizer_step when someone listens
        return loss

    def _manual_outputs(self, out: Any) -> Any:
        if isinstance(out, Tensor):
            return {"loss": out.detach()}
        if isinstance(out, dict):
            return {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in out.items()}
        if out is None:
            return {}
        raise MisconfigurationException(
            f"{type(self.lightning_module).__name__}.training_step returned {type(out).__name__} ({_short(out)}); "
            "under manual optimization return a Tensor, a dict, or None")

    def _auto_step(self, optimizer: Any, closure: Callable | None, **kwargs: Any) -> Any:
        """The optimizer step under automatic optimization (a precision provider may replace it)."""
        provider = self.bus.providers.get("optimizer_step")
        if provider is not None:
            return provider[1](optimizer, closure, **kwargs)
        return optimizer.step(closure=closure, **kwargs)

    def _before_optimizer_step(self, optimizer: Any) -> None:
        """BeforeOptimizerStep, then configure_gradient_clipping (Lightning's order, inside the closure)."""
        loop = self._loop
        hs = loop.hot.before_optimizer_step if loop is not None else self.bus.table.get(ev.BeforeOptimizerStep)
        if hs:
            self.bus.call(hs, ev.BeforeOptimizerStep(self, self.timestamp, optimizer))
        if self._clip_on:
            self._call_module("configure_gradient_clipping", self._lightning_optimizers[0] if
                              self._lightning_optimizers else optimizer,
                              gradient_clip_val=self.gradient_clip_val,
                              gradient_clip_algorithm=self.gradient_clip_algorithm)

    def _optimizer_step(self, loop: FitLoop) -> None:
        """module.optimizer_step(closure) or the plain step; count global_step; step-interval schedulers."""
        control = self.control
        if control.skip_step_requested:  # asked for before the step began (e.g. in on_after_backward)
            control.skip_step_requested = False
            return
        loop._closure_calls = 0
        optimizer = loop.optimizer
        hot = loop.hot
        wraps = hot.wrap_optimizer_step
        try:
            with entered(wraps) if wraps else _NO_WRAP:  # no call at all on the usual step
                if self._optimizer_step_overridden:
                    lopt = self._lightning_optimizers[0] if self._lightning_optimizers else optimizer
                    self._call_module("optimizer_step", self.current_epoch, loop.batch_idx, lopt, loop.closure)
                elif self._direct_step and hot.step_provider is None:
                    # what optimizer.step(closure) would do on its first closure call, then the plain step
                    loop._closure_calls = 1
                    if hot.before_optimizer_step or self._clip_on:
                        self._before_optimizer_step(optimizer)
                        if control.skip_step_requested:
                            raise SkipStep
                    optimizer.step()
                else:
                    self._auto_step(optimizer, loop.closure)
        except SkipStep:
            control.skip_step_requested = False
            return
        if loop._closure_calls == 0:
            raise MisconfigurationException(
                f"{type(loop.module).__name__}.optimizer_step did not call the optimizer closure; call "
                "`optimizer.step(closure=optimizer_closure)` (or `optimizer_closure()`) inside it")
        self._global_step += 1
        hs = hot.optimizer_stepped
        if hs:
            self.bus.call(hs, ev.OptimizerStepped(self, self.timestamp, optimizer))
        if self._lr is not None:
            self._lr.after_optimizer_step(loop.batch_idx, loop.is_last_batch)

    def _manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """self.manual_backward: BeforeBackward, module.backward (or provider), AfterBackward."""
        hs = self.bus.table.get(ev.BeforeBackward)
        if hs:
            self.bus.call(hs, ev.BeforeBackward(self, self.timestamp, loss))
        provider = self.bus.providers.get("backward")
        with entered(self.bus.wrappers.get("backward")):
            if provider is not None:
                provider[1](loss, *args, **kwargs)
            else:
                self._call_module("backward", loss, *args, **kwargs)
        hs = self.bus.table.get(ev.AfterBackward)
        if hs:
            self.bus.call(hs, ev.AfterBackward(self, self.timestamp))

    def _manual_step(self, optimizer: Any, closure: Callable | None, **kwargs: Any) -> Any:
        """opt.step() under manual optimization: closure, BeforeOptimizerStep, the step; counts global_step."""
        def wrapped() -> Any:
            result = closure() if closure is not None else None
            hs = self.bus.table.get(ev.BeforeOptimizerStep)
            if hs:
                self.bus.call(hs, ev.BeforeOptimizerStep(self, self.timestamp, optimizer))
            return result

        provider = self.bus.providers.get("optimizer_step")
        with entered(self.bus.wrappers.get("optimizer_step")):
            if provider is not None:
                result = provider[1](optimizer, wrapped, **kwargs)
            else:
                result = optimizer.step(closure=wrapped, **kwargs)
        self._global_step += 1
        hs = self.bus.table.get(ev.OptimizerStepped)
        if hs:
            self.bus.call(hs, ev.OptimizerStepped(self, self.timestamp, optimizer))
        return result

    def _after_train_batch(self, loop: FitLoop) -> None:
        """Step metrics into callback/progress-bar dicts (and loggers at log_every_n_steps)."""
        results = self._train_results
        # Readers of callback/progress-bar metrics see the running values live (LoggedMetrics reads the attached
        # collection); they are merged for good only when written, before validation and at the epoch's end.
        if self.loggers and self._should_update_logs():
            out = self._metrics.update_step(results, write_logs=True)
            if out:
                self.log_metrics(out)
        results.batch_end()

    def _should_update_logs(self) -> bool:
        n = self.settings.log_every_n_steps
        return bool(n) and ((self._batches_stepped + 1) % n == 0 or self.should_stop)

    def _can_stop_early(self, epochs_processed: int) -> bool:
        s = self.settings
        met_epochs = epochs_processed >= s.min_epochs if s.min_epochs else True
        met_steps = self.global_step >= s.min_steps if s.min_steps else True
        return met_epochs and met_steps

    def _should_validate(self, loop: FitLoop) -> bool:
        """Lightning's val-check rule, evaluated after each training batch (batch_idx already advanced)."""
        if self.control.validate_requested:
            self.control.validate_requested = False
            return self._val_on
        if not self._val_on:
            return False
        n = self.settings.check_val_every_n_epoch
        if n is not None and (self.current_epoch + 1) % n != 0:
            return False
        if self.should_stop and self._can_stop_early(self.current_epoch):
            return True
        if self.val_check_batch == math.inf:
            return loop.is_last_batch
        current = loop.total_batch_idx if n is None else loop.batch_idx
        return current % self.val_check_batch == 0

    def _after_batch_validation(self, loop: FitLoop) -> None:
        """The batch is over, including any validation it triggered: plateau step schedulers, then count it."""
        if self._lr is not None:
            self._lr.after_batch(loop.batch_idx - 1)
        self._batches_stepped += 1

    def _training_done(self, mid_epoch: bool) -> bool:
        """max_steps, max_epochs (at epoch end), or a stop request once min_epochs/min_steps are met."""
        s = self.settings
        if s.max_steps != -1 and self.global_step >= s.max_steps:
            if not mid_epoch and self.is_global_zero:
                log.info(f"`Trainer.fit` stopped: `max_steps={s.max_steps}` reached.")
            return True
        if not mid_epoch and s.max_epochs != -1 and self.current_epoch >= s.max_epochs:
            if self.is_global_zero:
                log.info(f"`Trainer.fit` stopped: `max_epochs={s.max_epochs}` reached.")
            return True
        if self.should_stop:
            if self._can_stop_early(self.current_epoch):
                if not mid_epoch and self.is_global_zero:
                    log.info("`Trainer.fit` stopped: `trainer.should_stop` was set.")
                return True
            if not getattr(self, "_min_info", False):
                self._min_info = True
                warnings.warn(f"Trainer was signaled to stop but min_epochs={s.min_epochs} or "
                              f"min_steps={s.min_steps} is not met; training continues", UserWarning, stacklevel=2)
        return False

    # -- fit: validation and epoch end ----------------------------------------------------------------------------
    def _load_val_dataloaders(self, stage: str) -> list[Any]:
        """val loaders: loaded the first time, then again every reload_dataloaders_every_n_epochs."""
        n = self.settings.reload_dataloaders_every_n_epochs
        if (self._val_loaders is None
                or (n and stage == "validate" and self.current_epoch - self._last_val_reload >= n)):
            assert self._val_source is not None
            loaders = [maybe_seed_workers(dl, self) for dl in as_loader_list(self._val_source(), "val_dataloaders")]
            check_not_empty(loaders, "val")
            self._val_loaders = loaders
            self._last_val_reload = self.current_epoch
            self.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
        return self._val_loaders

    def _run_sanity_check(self) -> None:
        """Validation on num_sanity_val_steps batches with the RNG isolated; its metrics are discarded."""
        states = collect_rng_states()
        self._metrics.reset()
        self.sanity_checking = True
        self.state.stage = Stage.SANITY_CHECK
        try:
            self._fire_simple(ev.SanityCheckStarted)
            loaders = self._load_val_dataloaders("sanity_check")
            steps = self.settings.num_sanity_val_steps
            limits = [num_batches(dl, self.settings.limit_val_batches, "val") for dl in loaders]
            self.num_sanity_val_batches = [lim if steps == -1 else min(steps, lim) for lim in limits]
            EvalLoop(self, "sanity_check", loaders, self.num_sanity_val_batches, in_fit=True).run()
            self._fire_simple(ev.SanityCheckEnded)
        finally:
            self.sanity_checking = False
            self.state.stage = Stage.TRAIN
            self._metrics.reset()
            set_rng_states(states)

    def _run_fit_validation(self, loop: FitLoop) -> None:
        """Validation inside the epoch: on_validation_model_zero_grad, the eval machine, then back to training."""
        self._metrics.update_step(self._train_results, write_logs=False)  # keep the train step values visible
        self._call_module("on_validation_model_zero_grad")
        self.state.stage = Stage.VALIDATE
        loaders = self._load_val_dataloaders("validate")
        self.num_val_batches = [num_batches(dl, self.settings.limit_val_batches, "val") for dl in loaders]
        EvalLoop(self, "validate", loaders, self.num_val_batches, in_fit=True).run()
        self.state.stage = Stage.TRAIN
        self._results = self._train_results
        self._metrics.attach(self._train_results)
        self._after_batch_validation(loop)

    def _end_train_epoch(self, loop: FitLoop) -> None:
        """EpochEnded with epoch metrics visible, plateau epoch schedulers, then current_epoch += 1."""
        results = self._results = self._train_results
        self._metrics.attach(results)
        self._metrics.update_step(results, write_logs=False)  # the last step values stay in callback_metrics
        results.epoch_end_reached()
        hs = self.bus.table.get(ev.EpochEnded)
        if hs:
            self.bus.call(hs, ev.EpochEnded(self, self.timestamp))
        out = self._metrics.update_epoch(results, write_logs=bool(self.loggers))
        if out:  # Lightning writes train epoch metrics at the step of the epoch's last batch
            self.log_metrics({**out, "epoch": self.current_epoch}, step=max(self._batches_stepped - 1, 0))
        results.reset()
        if self._lr is not None:
            self._lr.after_epoch()
        self._epoch += 1
        self._batch_in_epoch = 0

    def _teardown_fit(self, loop: FitLoop) -> None:
        if loop.train_started:
            self._fire_simple(ev.TrainEnded)
        self.strategy.teardown()
        self._metrics.attach(None)
        self._metrics.teardown()
        self._fire_simple(ev.FitEnded)
        self._teardown_common("fit")

    # -- validate / test / predict --------------------------------------------------------------------------------
    def _run_eval_stage(self, stage: str, return_predictions: bool) -> Any:
        self.timestamp = Timestamp(epoch=self.timestamp.epoch, global_step=self.timestamp.global_step)
        self._setup_common(stage)
        if stage != "predict":
            self._log_hyperparams()
        self._call_module("zero_grad")
        assert self._eval_source is not None
        loaders = [maybe_seed_workers(dl, self) for dl in as_loader_list(self._eval_source(), f"{stage} dataloaders")]
        check_not_empty(loaders, stage)
        what = {"validate": "val", "test": "test", "predict": "predict"}[stage]
        limit = getattr(self.settings, f"limit_{what}_batches")
        limits = [num_batches(dl, limit, what) for dl in loaders]
        attr = {"validate": "val_dataloaders", "test": "test_dataloaders", "predict": "predict_dataloaders"}[stage]
        setattr(self, attr, loaders[0] if len(loaders) == 1 else loaders)
        setattr(self, f"num_{what}_batches", limits)
        out = EvalLoop(self, stage, loaders, limits, in_fit=False, return_predictions=return_predictions).run()
        self._teardown_common(stage)
        return out

    def _after_eval_batch(self, results: ResultCollection, stage: str, dataloader_idx: int = 0) -> None:
        """Eval step metrics go to loggers at every batch, x-axis = batches seen by that dataloader (Lightning)."""
        write = bool(self.loggers) and stage != Stage.SANITY_CHECK
        out = self._metrics.update_step(results, write_logs=write)
        if out:
            key = (stage, dataloader_idx)
            self._eval_steps[key] = self._eval_steps.get(key, 0) + 1
            self.log_metrics(out, step=self._eval_steps[key] - 1)
        results.batch_end()

    def _after_eval_epoch(self, results: ResultCollection, stage: str, num_dataloaders: int) -> list[dict[str, float]]:
        """Eval epoch metrics into callback_metrics (not during the sanity check); per-dataloader result dicts."""
        if stage == Stage.SANITY_CHECK:
            return []
        out = self._metrics.update_epoch(results, write_logs=bool(self.loggers))
        if out:
            self.log_metrics(out)
        return [{k: (v.item() if isinstance(v, Tensor) else float(v)) for k, v in d.items()}  # host sync, once
                for d in results.dataloader_outputs(num_dataloaders)]

    # -- Lightning's read-only views ------------------------------------------------------------------------------
    @property
    def timestamp(self) -> Timestamp:
        """Where the run is now (built from the counters on each read)."""
        return Timestamp(self._epoch, self._batch_in_epoch, self._global_step, self._batches_seen, self._samples_seen)

    @timestamp.setter
    def timestamp(self, ts: Timestamp) -> None:
        (self._epoch, self._batch_in_epoch, self._global_step, self._batches_seen, self._samples_seen) = ts

    @property
    def current_epoch(self) -> int:
        return self._epoch

    @property
    def global_step(self) -> int:
        return self._global_step

    @property
    def callback_metrics(self) -> dict[str, Tensor]:
        return self._metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, Tensor]:
        return self._metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._metrics.progress_bar_metrics

    @property
    def should_stop(self) -> bool:
        return self.control.stop_requested

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            frame = sys._getframe(1)
            self.control.request_stop("trainer.should_stop = True",
                                      by=getattr(frame.f_code, "co_qualname", frame.f_code.co_name))
        else:
            self.control.stop_requested = False

    @property
    def is_last_batch(self) -> bool:
        return bool(self._loop is not None and self._loop.is_last_batch)

    @property
    def model(self) -> LightningModule | None:
        return self.lightning_module

    @property
    def barebones(self) -> bool:
        return self.settings.barebones

    @property
    def max_epochs(self) -> int:
        return self.settings.max_epochs

    @property
    def min_epochs(self) -> int:
        return self.settings.min_epochs

    @property
    def max_steps(self) -> int:
        return self.settings.max_steps

    @property
    def min_steps(self) -> int | None:
        return self.settings.min_steps

    @property
    def fast_dev_run(self) -> int:
        return self.settings.fast_dev_run

    @property
    def limit_train_batches(self) -> int | float:
        return self.settings.limit_train_batches

    @property
    def limit_val_batches(self) -> int | float:
        return self.settings.limit_val_batches

    @property
    def limit_test_batches(self) -> int | float:
        return self.settings.limit_test_batches

    @property
    def limit_predict_batches(self) -> int | float:
        return self.settings.limit_predict_batches

    @property
    def val_check_interval(self) -> int | float:
        return self.settings.val_check_interval

    @property
    def check_val_every_n_epoch(self) -> int | None:
        return self.settings.check_val_every_n_epoch

    @property
    def num_sanity_val_steps(self) -> int:
        return self.settings.num_sanity_val_steps

    @property
    def log_every_n_steps(self) -> int:
        return self.settings.log_every_n_steps

    @property
    def accumulate_grad_batches(self) -> int:
        return self.settings.accumulate_grad_batches

    @property
    def gradient_clip_val(self) -> int | float | None:
        return self.settings.gradient_clip_val

    @property
    def gradient_clip_algorithm(self) -> str | None:
        return self.config.gradient_clip_algorithm

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def reload_dataloaders_every_n_epochs(self) -> int:
        return self.settings.reload_dataloaders_every_n_epochs

    @property
    def default_root_dir(self) -> str:
        return self.settings.default_root_dir

    @property
    def log_dir(self) -> str:
        """The first logger's log_dir (its save_dir for other logger types), else default_root_dir."""
        if not self.loggers:
            return self.default_root_dir
        lg = self.loggers[0]
        return getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None) or self.default_root_dir

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @property
    def device_ids(self) -> list[int]:
        d = self.strategy.root_device
        return [d.index or 0]

    @property
    def num_devices(self) -> int:
        return 1

    @property
    def num_nodes(self) -> int:
        return self.settings.num_nodes

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

    @property
    def training(self) -> bool:
        return self.state.stage == Stage.TRAIN

    @property
    def validating(self) -> bool:
        return self.state.stage == Stage.VALIDATE

    @property
    def testing(self) -> bool:
        return self.state.stage == Stage.TEST

    @property
    def predicting(self) -> bool:
        return self.state.stage == Stage.PREDICT

    @property
    def checkpoint_callback(self) -> None:
        return None

    @property
    def checkpoint_callbacks(self) -> list:
        return []

    @property
    def early_stopping_callback(self) -> None:
        return None

    @property
    def early_stopping_callbacks(self) -> list:
        return []

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the whole fit will take (Lightning's formula), e.g. for OneCycleLR."""
        s = self.settings
        if self.train_dataloader is None and self._train_source is not None:
            loader = as_loader_list(self._train_source(), "train_dataloaders")[0]
            n = num_batches(loader, s.limit_train_batches, "train")
        else:
            n = self.num_training_batches
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
        raise NotImplementedError("trainer.save_checkpoint: checkpointing is not available in statetrain yet")


def _overridden(obj: Any, name: str) -> bool:
    return getattr(type(obj), name, None) is not getattr(LightningModule, name, None)


def _dm_overridden(dm: Any, name: str) -> bool:
    return getattr(type(dm), name, None) is not getattr(LightningDataModule, name, None)


def _is_progress_bar(cb: Any) -> bool:
    return any(k.__name__ in ("TQDMProgressBar", "ProgressBar", "RichProgressBar") for k in type(cb).__mro__)


def _to_floats(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensors to Python numbers with one host sync for all of them (the loggers' write points only)."""
    tensors = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    out = {k: v for k, v in metrics.items() if not isinstance(v, Tensor)}
    if tensors:
        items = [metrics[k].detach().reshape(()).double() for k in tensors]
        try:
            values = torch.stack(items).tolist()  # one host sync
        except RuntimeError:  # tensors on different devices
            values = [t.item() for t in items]
        out.update(zip(tensors, values))
    return {k: out[k] for k in metrics}


def _configure_messages(log_format: str | None, rank: int) -> None:
    from engine.log import configure

    configure(log_format=log_format, rank=rank)


def _is_summary(cb: Any) -> bool:
    return type(cb).__name__ in ("ModelSummary", "RichModelSummary")


def _short(obj: Any, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _print_results(stage: str, results: Iterable[dict[str, float]]) -> None:
    """The table Lightning prints after validate/test: metric name and value per dataloader."""
    results = list(results)
    if not any(results):
        return
    title = {"validate": "Validate metric", "test": "Test metric"}.get(stage, stage)
    for i, res in enumerate(results):
        if not res:
            continue
        width = max(len(title), *(len(k) for k in res)) + 2
        header = f"{title:<{width}}DataLoader {i}"
        print("-" * len(header) * 1 + "-" * 10)
        print(header)
        print("-" * len(header) + "-" * 10)
        for k, v in res.items():
            print(f"{k:<{width}}{v:.6g}")
        print("-" * len(header) + "-" * 10)
