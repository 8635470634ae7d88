"""The run context: the state of the runs of one Trainer and the services the state functions call.

Who owns what (DESIGN §2-4):

    progress        Progress            the run's position (epoch, batch, global_step, samples, flags)
    control         Control             pending steering requests and their history
    status          RunStatus           Lightning's trainer.state (status, fn, stage)
    metrics         LoggedMetrics       callback / logged / progress-bar metrics
    train_results   ResultCollection    values self.log'ged in training (reduced with strategy.reduce)
    eval_results    ResultCollection    values self.log'ged in the running evaluation
    sources         DataSources         where the dataloaders come from, when they are (re)loaded, their sizes
    pipeline        StepPipeline        optimizers, schedulers and the optimisation step with its phases
    loop            FitLoop | None      the running (or last) fit: per-batch slots

The Trainer assembles one RunContext and exposes Lightning's read-only views of it; events carry it as their
`run` (it implements `engine.events.RunView`). Loggers are handlers of `MetricsWritten` in the LOGGER band, and every
handler of a run (callbacks, the module's hooks, handler objects in `callbacks=[...]`, the loggers) is attached when
the run starts and detached when it ends, exactly once.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor

from engine import events as ev
from engine.bus import LOGGER, Bus, Subscription, declares_context
from engine.control import Control, ControlRequest
from engine.errors import LoggerError, MisconfigurationException, user_stacklevel
from engine.loops.data import BatchTransfer, DataSources, overridden
from engine.loops.progress import Progress
from engine.results import LoggedMetrics, ResultCollection
from engine.state import RunStatus, Stage, Timestamp

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import RunSettings, TrainerConfig
    from engine.loops.fit import FitLoop
    from engine.machine import Machine
    from engine.trainer import Trainer

__all__ = ["RunContext", "run_stage", "to_floats", "SignalStop", "EXIT_INTERRUPTED", "EXIT_SIGNAL_CHECKPOINTED"]

EXIT_INTERRUPTED = 130  # KeyboardInterrupt: on_exception ran, loggers flushed, no checkpoint
EXIT_SIGNAL_CHECKPOINTED = 75  # SIGTERM / first SIGINT: the step finished, on_signal.ckpt written (EX_TEMPFAIL)


class SignalStop(Exception):
    """A signal stopped the fit at a boundary, after `path` was written."""

    def __init__(self, signum: int, path: Any) -> None:
        self.signum, self.path = signum, path
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}; checkpoint {path}")

# attach_callbacks(bus, callbacks, trainer, module) -> (subscriptions, handler objects attached with bus.attach)
AttachFn = Callable[[Bus, list, Any, Any], "tuple[list[Subscription], list[object]]"]

_STAGE_OF = {"fit": Stage.TRAIN, "validate": Stage.VALIDATE, "test": Stage.TEST, "predict": Stage.PREDICT}


class RunContext:
    """The run state of a Trainer and what every loop needs: hooks, events, logging, handler lifetimes."""

    def __init__(self, trainer: "Trainer", config: "TrainerConfig", settings: "RunSettings", strategy: Any,
                 bus: Bus, machine: "Machine", eval_machine: "Machine", callbacks: list[Any],
                 loggers: list[Any], attach_callbacks: AttachFn,
                 fit_handlers: list[Callable[["RunContext"], object | None]] = (),
                 stage_handlers: list[Callable[["RunContext"], object | None]] = ()) -> None:
        from engine.loops.optimization import StepPipeline

        self.trainer = trainer
        self.config = config
        self.settings = settings
        self.strategy = strategy
        self.bus = bus
        self.machine = machine
        self.eval_machine = eval_machine
        self.callbacks = callbacks
        self.loggers = loggers
        # injected by the facade (engine/ does not import hooks/, DESIGN §1): the Lightning callback adapter, and the
        # handlers a fit attaches once its optimizers are known (e.g. the LR scheduler stepper)
        self.attach_callbacks = attach_callbacks
        self.fit_handlers = list(fit_handlers)
        self.stage_handlers = list(stage_handlers)  # attached in every stage once the module is set up (precision)
        self.precision: Any = None  # the precision handler of the run, if any (its state goes in checkpoints)
        self.progress = Progress()
        self.control = Control(self.now, notify=self._control_requested)
        self.status = RunStatus()
        self.metrics = LoggedMetrics()
        self.results: ResultCollection | None = None
        self.train_results = self.new_results(training=True)
        self.eval_results = self.new_results(training=False)
        self.sources = DataSources(self)
        self.pipeline = StepPipeline(self)
        self.transfer: BatchTransfer | None = None
        self.module: Any = None  # the LightningModule being run
        self.model: Any = None  # what strategy.setup_module returned: the module the loops call
        self.datamodule: Any = None
        self.loop: "FitLoop | None" = None
        self.sanity_checking = False
        self.val_on = False
        self.eval_steps: dict[tuple[str, int], int] = {}
        self.run_subs: list[Subscription] = []
        self.run_handlers: list[object] = []
        self.warned: set[str] = set()
        # checkpoints: writes queued for the next boundary, where the run is at (next state, epoch finished?)
        self.boundary_writes: list[Callable[[], None]] = []
        self.boundary: tuple[str, bool] | None = None
        self.epoch_rng: dict[str, Any] | None = None  # RNG states just before this epoch's iter(train loader)
        self.resume_from: dict[str, Any] | None = None  # the checkpoint `fit(ckpt_path=...)` resumes from
        self.resume_source: str | None = None  # and its path, for messages
        self.stop_signal: int | None = None  # SIGTERM/SIGINT received during fit, acted on at the next boundary
        self.signal_received: int | None = None  # with a sync handler: a signal this rank got, not yet agreed

    # -- the RunView events carry -------------------------------------------------------------------------------------
    def now(self) -> Timestamp:
        return self.progress.timestamp()

    @property
    def timestamp(self) -> Timestamp:
        """Where the run is now (built from the progress counters on each read)."""
        return self.progress.timestamp()

    @property
    def stage(self) -> str | None:
        return self.status.stage

    @property
    def callback_metrics(self) -> Mapping[str, Any]:
        return self.metrics.callback_metrics

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    def new_results(self, training: bool) -> ResultCollection:
        """A result collection that reduces `sync_dist=True` values with the strategy (identity on one process)."""
        if self.strategy.world_size > 1:
            return ResultCollection(training=training, device=self.strategy.root_device, sync_fn=self._sync)
        return ResultCollection(training=training)

    def _sync(self, tensor: Tensor, reduce_op: str = "mean", group: Any = None) -> Tensor:
        return self.strategy.reduce(tensor, reduce_op)

    # -- hooks and events ---------------------------------------------------------------------------------------------
    def call_hook(self, owner: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a module/datamodule hook with `self.log` context set to the hook's name."""
        module = self.module
        if module is None:
            return getattr(owner, name)(*args, **kwargs)
        state = module.__dict__
        prev = state.get("_current_fx_name")
        state["_current_fx_name"] = name
        try:
            return getattr(owner, name)(*args, **kwargs)
        finally:
            state["_current_fx_name"] = prev

    def call_module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.call_hook(self.module, name, *args, **kwargs)

    def fire_simple(self, event_type: type) -> None:
        """Fire an event that carries only the run and the Timestamp (built only when someone listens)."""
        hs = self.bus.table.get(event_type)
        if hs:
            self.bus.call(hs, event_type(self, self.progress.timestamp()))

    def _control_requested(self, request: ControlRequest) -> None:
        hs = self.bus.table.get(ev.ControlRequested)
        if hs:
            self.bus.call(hs, ev.ControlRequested(self, self.progress.timestamp(), request))

    def resolve_control(self, point: str) -> None:
        """A decision point of the machine (`policy.DECISION_POINTS`): a `provide_resolve_control` handler (the
        sync handler under DDP) may agree the pending requests across processes before the loop reads them."""
        provider = self.pipeline.resolve_control
        if provider is not None:
            provider(point, self.control)

    # -- logging --------------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """MetricsWritten to the loggers: tensors become floats with one host sync; step defaults to
        batches_stepped (with an 'epoch' entry added), or a 'step' entry in `metrics` is used as the step."""
        if not metrics:
            return
        hs = self.bus.table.get(ev.MetricsWritten)
        if not hs:
            return
        metrics = dict(metrics)
        if step is None:
            if "step" in metrics:
                step = int(to_floats({"step": metrics.pop("step")})["step"])
            else:
                metrics.setdefault("epoch", self.progress.epoch)
                step = self.progress.batches_stepped
        self.bus.call(hs, ev.MetricsWritten(self, self.progress.timestamp(), to_floats(metrics), step))

    def hyperparams(self) -> dict[str, Any] | None:
        """What `log_hyperparams` gives the loggers: save_hyperparameters() of the module and datamodule and the
        Trainer config; None when hyperparameters are not logged (no logger, enable_autolog_hparams=False)."""
        if not self.loggers or not self.settings.enable_autolog_hparams or not self.strategy.is_global_zero:
            return None
        params: dict[str, Any] = {}
        for owner in (self.datamodule, self.module):
            if owner is not None and owner.hparams_logged:
                params.update(owner.hparams_initial)
        params["trainer"] = self.config.to_json_dict()
        return params

    def log_hyperparams(self) -> None:
        """Hyperparameters from save_hyperparameters() (module and datamodule) and the Trainer config."""
        params = self.hyperparams()
        if params is None:
            return
        for lg in self.loggers:
            lg.log_hyperparams(params)
            if self.module is not None and hasattr(lg, "log_graph"):
                lg.log_graph(self.module)
            lg.save()

    def finalize_loggers(self, status: str, raise_strict: bool = True) -> None:
        """finalize(status) on every logger; a strict logger that failed to write turns the run into an error."""
        failed = []
        for lg in self.loggers if self.strategy.is_global_zero else ():
            lg.finalize(status)
            if getattr(lg, "strict", False) is True and getattr(lg, "error", None) is not None:  # not a mock's attr
                failed.append(lg)
        if failed and raise_strict:
            raise LoggerError(
                "; ".join(f"{type(lg).__name__} could not write to {getattr(lg, 'log_dir', '?')}: {lg.error}"
                          for lg in failed) + " (strict=True: the run is marked failed)")

    # -- a run's frame ------------------------------------------------------------------------------------------------
    def run(self, fn: str, model: Any, body: Callable[[], Any], profiler: Any = None) -> Any:
        """Common run frame: set the state, run `body`, and on an exception fire ExceptionRaised and re-raise;
        every handler attached for the run is detached at the end, whatever happened."""
        status = self.status
        status.fn, status.status, status.stage = fn, "running", _STAGE_OF[fn]
        self.module = model
        model.trainer = self.trainer
        self.control.reset()
        self.control.history = []
        self.metrics.reset()
        anomaly = torch.autograd.set_detect_anomaly(True) if self.settings.detect_anomaly else nullcontext()
        if profiler is not None:
            profiler.attach(self.trainer)
        self._watch_transitions()
        previous = self._install_signal_handlers() if fn == "fit" else None
        try:
            with anomaly:
                out = body()
            status.status = "finished"
            self.finalize_loggers("success")
            return out
        except KeyboardInterrupt as exc:  # Ctrl-C (a second one during fit) or raised by user code
            status.status = "interrupted"
            if self.strategy.is_global_zero:
                print("\nDetected KeyboardInterrupt, attempting graceful shutdown ...", file=sys.stderr)
            self._on_exception(exc)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except SignalStop as exc:  # SIGTERM / first SIGINT: the step finished and on_signal.ckpt is written
            status.status = "interrupted"
            self._on_exception(exc)
            if self.strategy.is_global_zero:
                print(f"\nstopped by {exc.name} after a checkpoint: {exc.path} (resume with "
                      "trainer.fit(..., ckpt_path='last'))", file=sys.stderr)
            raise SystemExit(EXIT_SIGNAL_CHECKPOINTED) from None
        except BaseException as exc:
            status.status = "interrupted"
            self._on_exception(exc)
            raise
        finally:
            if previous is not None:
                self._restore_signal_handlers(previous)
            if profiler is not None:
                profiler.detach(self.trainer)
                if self.strategy.is_global_zero:
                    profiler.describe()
            self.detach_run_handlers()
            self.resume_from = None
            self.boundary_writes = []
            model.__dict__["_current_fx_name"] = None
            self.results = None
            status.stage = None
            self.sanity_checking = False

    # -- signals ------------------------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any] | None:
        """During fit only (never at import): SIGTERM and the first SIGINT ask the fit to stop at its next boundary
        with a checkpoint; a second SIGINT raises KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            return None
        self.stop_signal = self.signal_received = None
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self.stop_signal = self.signal_received = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if (self.stop_signal or self.signal_received) is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.pipeline.resolve_control is not None:  # distributed: every rank stops at the same boundary, so the
            self.signal_received = signum  # sync handler turns it into stop_signal on all ranks at its agreement
        else:
            self.stop_signal = signum  # not a control stop request: the checkpoint must not carry it into the resume

    def signal_checkpoint_path(self) -> Any:
        from pathlib import Path

        handlers = self.checkpoint_handlers()
        folder = handlers[0].dirpath if handlers and handlers[0].dirpath else (
            Path(self.settings.default_root_dir) / "checkpoints")
        return Path(folder) / "on_signal.ckpt"

    def _watch_transitions(self) -> None:
        """StateChanged costs nothing unless someone listens (decided when the run starts and again once the run's
        handlers are attached; a running machine reads `on_transition` at each transition)."""
        for machine in (self.machine, self.eval_machine):
            if self.bus.listening(ev.StateChanged):
                def fire(src: str, dst: str, name: str = machine.name) -> None:
                    self.bus.fire(ev.StateChanged(self, self.progress.timestamp(), name, src, dst))
                machine.on_transition = fire
            else:
                machine.on_transition = None

    def _on_exception(self, exc: BaseException) -> None:
        """Lightning's order: callbacks' on_exception, the datamodule's, then internal cleanup."""
        self.pipeline.abandon(exc)
        hs = self.bus.table.get(ev.ExceptionRaised)
        if hs:
            self.bus.call(hs, ev.ExceptionRaised(self, self.progress.timestamp(), exc))
        if self.datamodule is not None:
            self.datamodule.on_exception(exc)
        self.strategy.teardown()
        self.finalize_loggers("failed", raise_strict=False)

    # -- handler lifetimes ------------------------------------------------------------------------------------------
    def attach_run_handlers(self) -> None:
        """Callbacks (in list order), then the module's overridden hooks, then the loggers; detached by
        `detach_run_handlers` when the run ends."""
        bus, subs = self.bus, self.run_subs
        with bus.batch():
            new_subs, handlers = self.attach_callbacks(bus, self.callbacks, self.trainer, self.module)
            subs.extend(new_subs)
            self.run_handlers.extend(handlers)
            for lg in self.loggers if self.strategy.is_global_zero else ():  # loggers write on rank 0 only
                subs.append(bus.subscribe(ev.MetricsWritten, _logger_sink(lg), priority=LOGGER,
                                          name=f"{type(lg).__qualname__}.log_metrics"))

    def attach_fit_handlers(self) -> None:
        """The handlers a fit attaches once configure_optimizers ran (`fit_handlers` factories; None: not needed)."""
        for factory in self.fit_handlers:
            handler = factory(self)
            if handler is not None:
                self.bus.attach(handler)
                self.run_handlers.append(handler)

    def detach_run_handlers(self) -> None:
        """Undo `attach_run_handlers` (idempotent: a second call finds nothing to remove)."""
        subs, handlers = self.run_subs, self.run_handlers
        self.run_subs, self.run_handlers = [], []
        with self.bus.batch():
            for sub in subs:
                sub.remove()
        for handler in handlers:
            self.bus.detach(handler)

    def merge_model_callbacks(self) -> None:
        """configure_callbacks(): same-type trainer callbacks are replaced, the rest appended."""
        from engine.module import LightningModule

        model = self.module
        if not overridden(model, LightningModule, "configure_callbacks"):
            return
        extra = self.call_hook(model, "configure_callbacks")
        if extra is None:
            return
        if not isinstance(extra, (list, tuple)):
            extra = [extra]
        types = {type(c) for c in extra}
        self.callbacks[:] = [c for c in self.callbacks if type(c) not in types] + list(extra)

    # -- setup and teardown shared by every stage ---------------------------------------------------------------------
    def setup_common(self, stage: str) -> None:
        """configure_callbacks, prepare_data, setup(stage), configure_model, the strategy's module (Lightning §2.0)."""
        from engine.module import LightningModule

        model = self.module
        self.merge_model_callbacks()
        self.attach_run_handlers()
        self._watch_transitions()  # a run handler may listen to StateChanged: the running machine picks it up
        dm = self.datamodule
        if self.strategy.local_rank == 0:
            if dm is not None:
                self.call_hook(dm, "prepare_data")
            if overridden(model, LightningModule, "prepare_data"):
                self.call_module("prepare_data")
        if dm is not None:
            self.call_hook(dm, "setup", stage=stage)
        hs = self.bus.table.get(ev.Setup)
        if hs:
            self.bus.call(hs, ev.Setup(self, self.progress.timestamp(), stage))
        if overridden(model, LightningModule, "configure_model"):
            self.call_module("configure_model")
        self.model = self.strategy.setup_module(model)
        self._agree_logger_versions()
        stage_handler = getattr(self.strategy, "stage_handler", None)  # e.g. the DDP sync handler (no_sync, agreement)
        handler = stage_handler(self) if stage_handler is not None else None
        if handler is not None:
            self.bus.attach(handler)
            self.run_handlers.append(handler)
        self.precision = None
        for factory in self.stage_handlers:
            handler = factory(self)
            if handler is not None:
                self.bus.attach(handler)
                self.run_handlers.append(handler)
                self.precision = handler
        self.transfer = BatchTransfer(self)
        self.val_on = (self.sources.val_source is not None and self.settings.limit_val_batches != 0
                       and overridden(model, LightningModule, "validation_step"))

    def _agree_logger_versions(self) -> None:
        """Distributed: every rank's loggers take rank 0's versions (one broadcast per stage), so `log_dir` and
        `logger.version` agree and no rank allocates a version directory of its own."""
        adopters = [lg for lg in self.loggers if callable(getattr(lg, "adopt_version", None))]
        if self.strategy.world_size == 1 or not adopters:
            return
        versions = self.strategy.broadcast([lg.version for lg in adopters] if self.strategy.is_global_zero else None)
        if versions is not None and not self.strategy.is_global_zero:
            for lg, version in zip(adopters, versions):
                lg.adopt_version(version)

    def step_method(self, name: str) -> Callable[..., Any]:
        """The step the loops call: the module's method `name`, or, when the strategy's `setup_module` wrapped
        the module, the wrapper itself (its forward runs the module's current step, as Lightning's wrappers do)."""
        model = self.model
        if model is None or model is self.module:
            return getattr(self.module, name)
        return model

    def teardown_common(self, stage: str) -> None:
        if self.datamodule is not None:
            self.call_hook(self.datamodule, "teardown", stage=stage)
        hs = self.bus.table.get(ev.Teardown)
        if hs:
            self.bus.call(hs, ev.Teardown(self, self.progress.timestamp(), stage))

    def announce(self, fn: str) -> None:
        """The run's opening message: what runs where, and the flags that differ from Lightning's defaults."""
        from engine.config import TrainerConfig
        from engine.log import log

        if not self.strategy.is_global_zero:
            return
        device = self.strategy.root_device
        log.info(f"{fn} started", model=type(self.module).__name__, device=str(device),
                 cuda_available=torch.cuda.is_available(), accelerator=str(self.settings.accelerator),
                 loggers=[type(lg).__name__ for lg in self.loggers] or None,
                 log_dir=self.trainer.log_dir if self.loggers else None)
        defaults = TrainerConfig()
        changed = {k: v for k, v in self.config.to_json_dict().items()
                   if getattr(self.config, k) != getattr(defaults, k)}
        if changed:
            log.info("Trainer config", **changed)

    def warn_once(self, key: str, message: str, category: type[Warning] = UserWarning) -> None:
        """A warning shown once per Trainer, by rank 0 (as Lightning's rank_zero_warn)."""
        if key not in self.warned:
            self.warned.add(key)
            if self.strategy.global_rank == 0:
                warnings.warn(message, category, stacklevel=user_stacklevel())

    # -- checkpoints: boundaries ------------------------------------------------------------------------------------
    def at_boundary(self, write: Callable[[], None]) -> None:
        """Run `write` at the fit's next boundary (the end of the current batch, validation included, or of the
        epoch), where a checkpoint describes a moment the run can resume from exactly."""
        self.boundary_writes.append(write)

    def reach_boundary(self, next_state: str, epoch_done: bool) -> None:
        """The loop is at a boundary: run the queued writes with `boundary` saying where the fit goes on."""
        writes, self.boundary_writes = self.boundary_writes, []
        self.boundary = (next_state, epoch_done)
        try:
            for write in writes:
                write()
            if self.stop_signal is not None:
                path = self.save_checkpoint(self.signal_checkpoint_path())
                raise SignalStop(self.stop_signal, path)
        finally:
            self.boundary = None

    def resume_record(self) -> dict[str, Any]:
        """Where a fit resumed from a checkpoint written now goes on: exact at a boundary, else the best guess
        (the next batch, the epoch's end, or the next epoch)."""
        if self.boundary is not None:
            nxt, done = self.boundary
            # "training is over" is decided again on resume (max_epochs may have grown): go to the next epoch's start
            return {"next": "epoch_start" if nxt == "teardown" else nxt, "epoch_done": done, "exact": True}
        p = self.progress
        if p.batch_idx == 0:
            return {"next": "epoch_start", "epoch_done": p.epoch > 0, "exact": self.status.status != "running"}
        return {"next": "epoch_end" if p.is_last_batch else "batch", "epoch_done": False, "exact": False}

    def save_checkpoint(self, path: Any, weights_only: bool = False) -> Any:
        """Build the checkpoint (handlers' on_save_checkpoint, then the module's) and write it atomically."""
        from engine import checkpoint

        ckpt = checkpoint.build(self, weights_only=weights_only)
        if not weights_only:
            outside_run = not (self.run_subs or self.run_handlers)
            if outside_run:  # after a fit: the callbacks still add to the checkpoint, as in Lightning
                self.attach_run_handlers()
            try:
                hs = self.bus.table.get(ev.SaveCheckpoint)
                if hs:
                    self.bus.call(hs, ev.SaveCheckpoint(self, self.progress.timestamp(), ckpt))
            finally:
                if outside_run:
                    self.detach_run_handlers()
        self.call_module("on_save_checkpoint", ckpt)
        write = getattr(self.strategy, "save_checkpoint", None)  # a distributed strategy writes on rank 0 only
        return write(ckpt, path) if write is not None else checkpoint.save(ckpt, path)

    def checkpoint_handlers(self) -> list[Any]:
        """The ModelCheckpoint-like handlers of the run (they know `best_model_path`)."""
        return [cb for cb in self.callbacks if hasattr(cb, "best_model_path") and hasattr(cb, "dirpath")]

    def resolve_ckpt_path(self, ckpt_path: Any, fn: str) -> Any:
        """`ckpt_path`: a path, 'best' (the first checkpoint handler's best model) or 'last' (the newest last*.ckpt
        of the checkpoint handlers, local or at a URL); None stays None."""
        if ckpt_path is None:
            return None
        handlers = self.checkpoint_handlers()
        if ckpt_path == "best":
            first = self.trainer.checkpoint_callback  # the first ModelCheckpoint, as in Lightning
            best = first.best_model_path if first is not None else ""
            if not best:
                raise MisconfigurationException(
                    f"trainer.{fn}(ckpt_path='best'): no best checkpoint is known"
                    + ("" if handlers else " (there is no ModelCheckpoint in callbacks)")
                    + "; run fit with a ModelCheckpoint first, or pass a path")
            return best
        if ckpt_path == "last":  # local folders or fsspec URLs (engine.utilities.cloud_io)
            from fnmatch import fnmatch

            from engine.sharded_checkpoint import is_sharded
            from engine.utilities import cloud_io

            found = [str(h.last_model_path) for h in handlers if getattr(h, "last_model_path", "")]
            found.extend(h.ckpt_path for h in handlers if isinstance(getattr(h, "ckpt_path", None), str))
            folders = [str(h.dirpath) for h in handlers if h.dirpath] + [str(self.signal_checkpoint_path().parent)]
            for folder in folders:
                found.extend(cloud_io.join(folder, name) for name in cloud_io.listdir(folder)
                             if fnmatch(name, "last*.ckpt") or name == "on_signal.ckpt")
            found = [f for f in dict.fromkeys(found) if cloud_io.isfile(f) or is_sharded(f)]  # FSDP: directories
            if not found:
                self.warn_once(f"no_last_{fn}", f"trainer.{fn}(ckpt_path='last'): no last checkpoint found; "
                               "starting from scratch")
                return None
            return max(found, key=cloud_io.modified)
        return str(ckpt_path)

    def data_position(self) -> dict[str, Any]:
        """The train data's position: the RNG states at the epoch's start and the batches consumed in it."""
        return {"epoch_rng": self.epoch_rng, "batch_idx": self.progress.batch_idx}

    # -- state -------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The run position as data: progress, control, the machine position, the result collections and the
        metrics dicts."""
        return {"progress": self.progress.state_dict(), "control": self.control.state_dict(),
                "machine": self.machine.position, "train_results": self.train_results.state_dict(),
                "metrics": self.metrics.state_dict(),
                "eval_steps": [[stage, idx, n] for (stage, idx), n in self.eval_steps.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned (the machine position is for `Machine.run(start=...)`)."""
        self.progress.load_state_dict(state["progress"])
        self.control.load_state_dict(state["control"])
        self.train_results.load_state_dict(state["train_results"])
        if "metrics" in state:
            self.metrics.load_state_dict(state["metrics"])
        self.eval_steps = {(stage, int(idx)): int(n) for stage, idx, n in state.get("eval_steps", [])}


def run_stage(run: RunContext, fn: str, model: Any, profiler: Any = None, *args: Any) -> Any:
    """One whole stage (fit, validate, test or predict) in the run frame: what `strategy.launch` runs. A module-level
    function, so a spawning launcher can start it in its workers."""
    if fn == "fit":
        from engine.loops.fit import FitLoop

        def body() -> None:
            loop = run.loop = FitLoop(run)
            run.machine.run(loop)
    else:
        from engine.loops.evaluate import run_eval_stage

        def body() -> Any:
            return run_eval_stage(run, fn, *args)
    return run.run(fn, model, body, profiler)


def _logger_sink(lg: Any) -> Callable[[Any], None]:
    """A logger as a MetricsWritten handler: write the floats at the event's step, then save."""
    def write(event: Any) -> None:
        lg.log_metrics(metrics=event.metrics, step=event.step)  # keywords, as Lightning calls it (mocks, subclasses)
        lg.save()
    write.__qualname__ = f"{type(lg).__qualname__}.log_metrics"
    return write


def with_context(fn: Callable | None, context: Any) -> Callable | None:
    """A provider called with `context=` when it declares that parameter; as it is otherwise."""
    if fn is None or not declares_context(fn):
        return fn

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, context=context, **kwargs)
    return call


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
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


def check_model(model: Any, fn: str) -> None:
    from engine.module import LightningModule

    if not isinstance(model, LightningModule):
        raise TypeError(
            f"trainer.{fn}: `model` must be a LightningModule (subclass engine.LightningModule), got "
            f"{type(model).__module__}.{type(model).__qualname__}")


def no_model(fn: str) -> MisconfigurationException:
    return MisconfigurationException(f"trainer.{fn}() needs a model: pass one, or call it after trainer.fit(model)")
