"""The seams the next features plug into, each exercised on a real tiny fit: handler lifetimes, the phase context
of the step pipeline, unscale/clip/resolve_control providers, MetricsWritten / ControlRequested / BatchCompleted /
EpochCompleted, coexisting instrumentations, the strategy in the loop path, and the narrow run view of events."""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

import engine as pl
from engine import events as ev
from engine.bus import Bus
from engine.loops.context import run_stage
from engine.state import Timestamp
from hooks.csv_logger import CSVLogger
from hooks.profiler import SimpleProfiler
from strategies.single_device import SingleDeviceStrategy

QUIET = dict(logger=False, enable_progress_bar=False)


# -- handler lifetimes ----------------------------------------------------------------------------------------------
class CountingBackward:
    def __init__(self) -> None:
        self.calls = 0

    def provide_backward(self, loss: torch.Tensor) -> None:
        self.calls += 1
        loss.backward()


def test_a_provider_in_callbacks_lives_for_one_run_only(kit: Any) -> None:
    """fit -> validate -> fit with the same provider handler in callbacks (it used to fail with "two handlers
    provide the action 'backward'"); after each run nothing of it is left on the bus."""
    handler = CountingBackward()
    trainer = kit.trainer(max_epochs=1, callbacks=[handler, kit.Recorder()], **QUIET)
    model = kit.Model()
    trainer.fit(model, kit.loader(6, batch_size=2))
    assert trainer.bus.providers == {} and trainer.bus.order(ev.BatchEnded) == []
    trainer.validate(model, kit.loader(4), verbose=False)
    assert trainer.bus.providers == {}
    trainer.settings.max_epochs = 2  # a second fit continues from the first's counters (#11): one more epoch
    trainer.fit(model, kit.loader(6, batch_size=2))
    assert handler.calls == 6 and trainer.bus.providers == {}


def test_add_handler_lives_as_long_as_the_trainer(kit: Any) -> None:
    handler = CountingBackward()
    trainer = kit.trainer(max_epochs=1, **QUIET)
    trainer.add_handler(handler)
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    trainer.settings.max_epochs = 2  # a second fit continues from the first's counters (#11): one more epoch
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    assert handler.calls == 4 and "backward" in trainer.bus.providers


def test_describe_attaches_and_detaches_the_run_handlers(kit: Any) -> None:
    handler = CountingBackward()
    trainer = kit.trainer(max_epochs=1, callbacks=[handler], **QUIET)
    assert "provide backward: CountingBackward" in trainer.describe()
    assert trainer.bus.providers == {}
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    assert handler.calls == 2


# -- the phase context ----------------------------------------------------------------------------------------------
def test_wrappers_and_providers_receive_the_phase_context(kit: Any) -> None:
    log: list[tuple] = []

    class Phases:
        @contextmanager
        def _around(self, phase: str, context: Any) -> Iterator[None]:
            log.append(("enter", phase, context.batch_idx, context.will_step, type(context.optimizer).__name__))
            yield
            log.append(("exit", phase))

        def wrap_train_step(self, context: Any) -> Any:
            return self._around("train_step", context)

        def wrap_forward(self, context: Any) -> Any:
            return self._around("forward", context)

        def wrap_backward(self, context: Any) -> Any:
            return self._around("backward", context)

        def wrap_optimizer_step(self, context: Any) -> Any:
            return self._around("optimizer_step", context)

        def provide_optimizer_step(self, optimizer: Any, closure: Any, context: Any = None) -> Any:
            log.append(("provide step", context.batch_idx, context.accumulate))
            return optimizer.step(closure=closure)

    trainer = kit.trainer(max_epochs=1, callbacks=[Phases()], **QUIET)
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    one = [("enter", "train_step", 0, True, "SGD"), ("enter", "forward", 0, True, "SGD"), ("exit", "forward"),
           ("enter", "backward", 0, True, "SGD"), ("exit", "backward"), ("exit", "train_step"),
           ("enter", "optimizer_step", 0, True, "SGD"), ("provide step", 0, 1), ("exit", "optimizer_step")]
    assert log[:9] == one
    assert log[9:] == [(e[0], e[1], 1, *e[3:]) if e[0] == "enter" else
                       (("provide step", 1, 1) if e[0] == "provide step" else e) for e in one]


def test_unscale_runs_before_and_clip_after_before_optimizer_step(kit: Any) -> None:
    order: list[str] = []

    class Precisionish:
        def provide_unscale(self, optimizer: Any) -> None:
            order.append("unscale")

        def provide_clip(self, optimizer: Any, value: Any, algorithm: Any) -> None:
            order.append(f"clip {value} {algorithm}")

    class Watch(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            order.append("on_before_optimizer_step")

    trainer = kit.trainer(max_epochs=1, callbacks=[Precisionish(), Watch()], gradient_clip_val=0.5, **QUIET)
    trainer.fit(kit.Model(), kit.loader(2, batch_size=2))
    assert order == ["unscale", "on_before_optimizer_step", "clip 0.5 norm"]


def test_resolve_control_is_called_at_the_decision_points_and_can_stop(kit: Any) -> None:
    points: list[tuple[str, int]] = []

    class Resolver:
        def provide_resolve_control(self, point: str, control: Any) -> None:
            step = control_owner.global_step
            points.append((point, step))
            if point == "batch_end" and step == 2:
                control.request_stop("agreed by every rank", by="Resolver")

    trainer = control_owner = kit.trainer(max_epochs=2, callbacks=[Resolver()], **QUIET)
    trainer.fit(kit.Model(), kit.loader(8, batch_size=2))
    assert trainer.global_step == 2
    assert points == [("batch_start", 0), ("after_backward", 0), ("batch_end", 1), ("batch_start", 1),
                      ("after_backward", 1), ("batch_end", 2), ("epoch_end", 2)]
    assert [r.by for r in trainer.control.history] == ["Resolver"]


# -- events for replay and tracing ------------------------------------------------------------------------------
def test_loggers_are_metrics_written_handlers_in_the_logger_band(kit: Any, tmp_path: Path) -> None:
    class Model(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    written: list[tuple[int, dict]] = []
    during: list[list[str]] = []
    trainer = kit.trainer(max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_progress_bar=False,
                          trace=False)  # the listeners checked below are exactly the watcher and the logger

    @trainer.on(ev.MetricsWritten)
    def watch(event: ev.MetricsWritten) -> None:
        written.append((event.step, dict(event.metrics)))
        during.append(event.trainer.bus.order(ev.MetricsWritten))

    trainer.fit(Model(), kit.loader(4, batch_size=2))
    assert [s for s, _ in written] == [0, 1]
    assert all(isinstance(m["train_loss"], float) and m["epoch"] == 0 for _, m in written)
    assert set(written[0][1]) == {"train_loss", "epoch"}
    assert during[0] == ["test_loggers_are_metrics_written_handlers_in_the_logger_band.<locals>.watch",
                         "CSVLogger.log_metrics"]
    assert trainer.bus.order(ev.MetricsWritten) == [during[0][0]]  # the logger left with the run
    rows = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + the two writes the handler saw


def test_control_requested_names_who_asked(kit: Any) -> None:
    requests: list[tuple[str, str, Timestamp]] = []
    trainer = kit.trainer(max_epochs=3, callbacks=[kit.Recorder(stop_at=(0, 1))], **QUIET)
    trainer.on(ev.ControlRequested)(lambda e: requests.append((e.request.action, e.request.reason, e.timestamp)))
    trainer.fit(kit.Model(), kit.loader(8, batch_size=2))
    assert requests == [("stop", "trainer.should_stop = True", Timestamp(0, 1, 2, 2, 4))]


def test_batch_and_epoch_completed_come_after_validation_and_epoch_metrics(kit: Any) -> None:
    order: list[tuple] = []
    trainer = kit.trainer(max_epochs=1, val_check_interval=2, num_sanity_val_steps=0, **QUIET)
    trainer.on(ev.BatchEnded)(lambda e: order.append(("BatchEnded", e.batch_idx)))
    trainer.on(ev.ValidationEnded)(lambda e: order.append(("ValidationEnded",)))
    trainer.on(ev.BatchCompleted)(lambda e: order.append(("BatchCompleted", e.batch_idx,
                                                          e.trainer.batches_stepped)))
    trainer.on(ev.EpochEnded)(lambda e: order.append(("EpochEnded",)))
    trainer.on(ev.EpochCompleted)(lambda e: order.append(("EpochCompleted", e.trainer.current_epoch,
                                                          "val_loss" in e.run.callback_metrics)))
    trainer.fit(kit.Model(), kit.loader(8, batch_size=2), kit.loader(4))
    assert order == [
        ("BatchEnded", 0), ("BatchCompleted", 0, 0), ("BatchEnded", 1), ("ValidationEnded",),
        ("BatchCompleted", 1, 1), ("BatchEnded", 2), ("BatchCompleted", 2, 2), ("BatchEnded", 3),
        ("ValidationEnded",), ("BatchCompleted", 3, 3), ("EpochEnded",), ("EpochCompleted", 0, True)]


def test_events_carry_the_run_view_and_a_replay_can_stub_it() -> None:
    class Stub:
        trainer = None
        control = object()
        timestamp = Timestamp()
        stage = "train"
        callback_metrics: dict = {}
        global_rank = 0
        world_size = 1

    got: list[Any] = []
    bus = Bus()
    bus.subscribe(ev.EpochEnded, lambda e: got.append((e.trainer, e.control, e.run.stage)))
    stub = Stub()
    bus.fire(ev.EpochEnded(stub, Timestamp(epoch=3)))
    assert got == [(None, stub.control, "train")]


def test_in_a_real_run_the_view_is_the_run_context(kit: Any) -> None:
    trainer = kit.trainer(max_epochs=1, **QUIET)
    seen: list[Any] = []
    trainer.on(ev.BatchStarted)(lambda e: seen.append((e.run, e.run.stage, e.trainer, e.run.world_size)))
    trainer.fit(kit.Model(), kit.loader(2, batch_size=2))
    assert seen == [(trainer.context, "train", trainer, 1)]


# -- instrumentations -------------------------------------------------------------------------------------------
def test_several_instrumentations_coexist(kit: Any) -> None:
    calls: dict[str, int] = {"handler": 0, "state": 0}

    def count_handler(event_type: type, name: str, fn: Any) -> Any:
        def run(event: Any) -> None:
            calls["handler"] += 1
            fn(event)
        return run

    def count_state(state: str, fn: Any) -> Any:
        def run(ctx: Any) -> Any:
            calls["state"] += 1
            return fn(ctx)
        return run

    trainer = kit.trainer(max_epochs=1, callbacks=[kit.Recorder()], **QUIET)
    trainer.bus.add_instrumentation(count_handler, owner="tracer")
    trainer.machine.add_instrumentation(count_state, owner="tracer")
    profiler = SimpleProfiler()
    profiler.attach(trainer)
    assert trainer.bus.instrumented_by() == ["tracer", profiler]
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    profiler.detach(trainer)
    assert profiler.stats()["state:batch"]["count"] == 2
    assert calls["handler"] > 0 and calls["state"] > 0
    assert trainer.bus.instrumented_by() == ["tracer"] and trainer.machine.instrumented_by() == ["tracer"]
    trainer.bus.remove_instrumentation("tracer")
    assert trainer.bus.instrumentation is None


# -- the strategy in the loop path ------------------------------------------------------------------------------
class Wrapper(nn.Module):
    """What a DDP-like strategy returns from setup_module: its forward runs the module's current step."""

    def __init__(self, module: pl.LightningModule) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args: Any) -> Any:
        self.calls += 1
        stage = self.module.trainer.state.stage
        name = {"train": "training_step", "validate": "validation_step", "sanity_check": "validation_step",
                "test": "test_step", "predict": "predict_step"}[stage]
        return getattr(self.module, name)(*args)


class RecordingStrategy(SingleDeviceStrategy):
    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.log: list[Any] = []
        self.wrapper: Wrapper | None = None

    def launch(self, fn: Any, *args: Any) -> Any:
        self.log.append(("launch", fn.__name__, args[1]))
        pickle.dumps(fn)  # a module-level function: a spawning launcher can send it to its workers
        return fn(*args)

    def setup_module(self, module: nn.Module) -> nn.Module:
        self.wrapper = Wrapper(super().setup_module(module))
        return self.wrapper

    def process_dataloader(self, loader: Any, stage: str) -> Any:
        self.log.append(("loader", stage))
        return loader

    def batch_to_device(self, batch: Any) -> Any:
        self.log.append(("batch",))
        return super().batch_to_device(batch)


def test_the_strategy_is_in_the_loop_path(kit: Any) -> None:
    strategy = RecordingStrategy()
    trainer = kit.trainer(max_epochs=1, strategy=strategy, **QUIET)
    assert trainer.strategy is strategy
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2), kit.loader(2))
    assert strategy.log[0] == ("launch", run_stage.__name__, "fit")
    assert ("loader", "fit") in strategy.log and ("loader", "validate") in strategy.log
    # 1 sanity batch + 2 train batches + 1 validation batch, every one through the strategy and its wrapper
    assert strategy.log.count(("batch",)) == 4
    assert strategy.wrapper is not None and strategy.wrapper.calls == 4
    assert trainer.model is strategy.wrapper and trainer.lightning_module is strategy.wrapper.module
    strategy.log.clear()
    out = trainer.test(dataloaders=kit.loader(2), verbose=False)
    assert strategy.log == [("launch", "run_stage", "test"), ("loader", "test"), ("batch",)] and "test_loss" in out[0]


def test_a_lone_backward_wrapper_sees_the_current_batch(kit: Any) -> None:
    seen: list[int] = []

    class OnlyBackward:
        @contextmanager
        def wrap_backward(self, context: Any) -> Iterator[None]:
            seen.append(context.batch_idx)
            yield

    trainer = kit.trainer(max_epochs=2, callbacks=[OnlyBackward()], **QUIET)
    trainer.fit(kit.Model(), kit.loader(6, batch_size=2))
    assert seen == [0, 1, 2, 0, 1, 2]


def test_manual_optimization_goes_through_the_same_phases(kit: Any) -> None:
    log: list[tuple] = []

    class Manual(kit.Model):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self._loss(batch))
            opt.step()

    class Phases:
        @contextmanager
        def wrap_backward(self, context: Any) -> Iterator[None]:
            log.append(("backward", context.batch_idx))
            yield

        @contextmanager
        def wrap_optimizer_step(self, context: Any) -> Iterator[None]:
            log.append(("step", context.batch_idx, type(context.optimizer).__name__))
            yield

        def provide_unscale(self, optimizer: Any) -> None:
            log.append(("unscale",))

    trainer = kit.trainer(max_epochs=1, callbacks=[Phases()], **QUIET)
    trainer.fit(Manual(), kit.loader(4, batch_size=2))
    assert log == [("backward", 0), ("step", 0, "SGD"), ("unscale",), ("backward", 1), ("step", 1, "SGD"),
                   ("unscale",)]
    assert trainer.global_step == 2


def test_a_run_handler_listening_to_state_changed_sees_the_running_machine(kit: Any) -> None:
    """StateChanged handlers attached for a run (callbacks) get the fit machine's transitions from the first one on,
    although the machine started before they were attached; without a listener the plain loop runs."""

    class Watcher:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str, str]] = []

        def on_state_changed(self, event: ev.StateChanged) -> None:
            self.seen.append((event.machine, event.src, event.dst))

    watcher = Watcher()
    trainer = kit.trainer(max_epochs=1, callbacks=[watcher], **QUIET)
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    fit_edges = [(s, d) for m, s, d in watcher.seen if m == trainer.machine.name]
    assert fit_edges[0][0] == "setup" and ("batch", "backward") in fit_edges and fit_edges[-1] == ("teardown", "done")
    plain = kit.trainer(max_epochs=1, **QUIET)
    plain.fit(kit.Model(), kit.loader(4, batch_size=2))
    assert plain.machine.on_transition is None
