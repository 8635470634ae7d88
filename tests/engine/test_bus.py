"""The event bus: ordering, filters, subscriptions, base-class delivery, errors, attach(), wrappers, providers, and
steering through `event.control` in real (tiny, CPU) fits."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine import events as ev
from engine.bus import CALLBACK, MODULE, Bus
from engine.errors import HandlerError
from engine.state import Timestamp

__all__: list[str] = []


# -- helpers ------------------------------------------------------------------------------------------------------
def at(epoch: int = 0, batch: int = 0, step: int = 0) -> Timestamp:
    return Timestamp(epoch, batch, step, 0, 0)


def recorder(name: str, log: list) -> Callable[[Any], None]:
    def fn(event: Any) -> None:
        log.append(name)
    fn.__qualname__ = name
    return fn


class RecordingSGD(torch.optim.SGD):
    """SGD that records each step in a shared log (the step itself runs the closure first, as torch does)."""

    def __init__(self, params: Any, lr: float, log: list) -> None:
        super().__init__(params, lr=lr)
        self.log = log

    def step(self, closure: Callable | None = None) -> Any:  # type: ignore[override]
        loss = super().step(closure)
        self.log.append("step")
        return loss


class Tiny(pl.LightningModule):
    """y = Wx + b on 3 features; records training_step / backward / step in `calls`."""

    def __init__(self, lr: float = 0.1, record_backward: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.lr = lr
        self.calls: list[str] = []
        self.record_backward = record_backward

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.calls.append("training_step")
        return nn.functional.mse_loss(self.layer(x), y)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.record_backward:
            self.calls.append("backward")
        loss.backward(*args, **kwargs)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return RecordingSGD(self.parameters(), lr=self.lr, log=self.calls)


def data(n: int = 8, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)),
                      batch_size=batch_size)


def trainer(**flags: Any) -> pl.Trainer:
    base = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**base, **flags})


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# -- ordering and describe ----------------------------------------------------------------------------------------
def test_order_is_priority_then_registration() -> None:
    bus, log = Bus(), []
    bus.subscribe(ev.EpochEnded, recorder("late", log), priority=500)
    bus.subscribe(ev.EpochEnded, recorder("first_300", log))
    bus.subscribe(ev.EpochEnded, recorder("second_300", log), priority=CALLBACK)
    bus.subscribe(ev.EpochEnded, recorder("early", log), priority=100)
    bus.fire(ev.EpochEnded(None, at()))
    assert log == ["early", "first_300", "second_300", "late"]
    assert bus.order(ev.EpochEnded) == log
    assert bus.listening(ev.EpochEnded) and not bus.listening(ev.EpochStarted)


def test_describe_shows_the_resolved_order_wrappers_and_providers() -> None:
    class Amp:
        priority = 200

        def wrap_forward(self) -> Any:
            return nullcontext()

        def provide_backward(self, loss: torch.Tensor) -> None:
            loss.backward()

    bus, log = Bus(), []
    assert bus.describe() == "(no handlers)"
    bus.subscribe(ev.BatchEnded, recorder("metrics", log), priority=500)
    bus.subscribe(ev.BatchEnded, recorder("user", log))
    bus.subscribe(ev.EpochStarted, recorder("epoch", log), priority=MODULE)
    bus.attach(Amp())
    assert bus.describe() == (
        "EpochStarted:\n"
        "   400  epoch\n"
        "BatchEnded:\n"
        "   300  user\n"
        "   500  metrics\n"
        "wrap forward: test_describe_shows_the_resolved_order_wrappers_and_providers.<locals>.Amp.wrap_forward\n"
        "provide backward: test_describe_shows_the_resolved_order_wrappers_and_providers.<locals>.Amp")


# -- filters ------------------------------------------------------------------------------------------------------
def fire_epochs(bus: Bus, n: int) -> None:
    for epoch in range(n):
        bus.fire(ev.EpochEnded(None, at(epoch=epoch)))


def test_every_fires_on_the_nth_firings_and_once_only_on_the_nth() -> None:
    bus = Bus()
    every, once, when = [], [], []
    bus.subscribe(ev.EpochEnded, lambda e: every.append(e.timestamp.epoch), every=2)
    bus.subscribe(ev.EpochEnded, lambda e: once.append(e.timestamp.epoch), once=3)
    bus.subscribe(ev.EpochEnded, lambda e: when.append(e.timestamp.epoch), when=lambda e: e.timestamp.epoch % 3 == 0)
    fire_epochs(bus, 7)
    assert every == [1, 3, 5]  # the 2nd, 4th and 6th firings
    assert once == [2]  # the 3rd firing only
    assert when == [0, 3, 6]


def test_every_counts_firings_before_when_filters() -> None:
    bus, seen = Bus(), []
    bus.subscribe(ev.EpochEnded, lambda e: seen.append(e.timestamp.epoch), every=2,
                  when=lambda e: e.timestamp.epoch > 2)
    fire_epochs(bus, 8)
    assert seen == [3, 5, 7]


def test_decorator_form_returns_the_function() -> None:
    bus, seen = Bus(), []

    @bus.on(ev.EpochEnded, every=3)
    def handler(event: ev.EpochEnded) -> None:
        seen.append(event.timestamp.epoch)

    fire_epochs(bus, 6)
    assert callable(handler) and seen == [2, 5]


@pytest.mark.parametrize("kwargs, shown", [({"every": 0}, "every=0"), ({"once": -1}, "once=-1"),
                                           ({"every": True}, "every=True"), ({"once": 1.5}, "once=1.5")])
def test_bad_filters_are_refused(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"subscribe\({shown}\): expected a positive int"):
        Bus().subscribe(ev.EpochEnded, lambda e: None, **kwargs)


def test_subscribe_checks_its_arguments() -> None:
    bus = Bus()
    with pytest.raises(TypeError, match="expected an Event subclass from engine.events"):
        bus.subscribe(int, lambda e: None)
    with pytest.raises(TypeError, match=r"subscribe\(EpochEnded, 3\): the handler must be callable"):
        bus.subscribe(ev.EpochEnded, 3)  # type: ignore[arg-type]


# -- subscription handles -----------------------------------------------------------------------------------------
def test_subscription_remove_is_idempotent() -> None:
    bus, log = Bus(), []
    sub = bus.subscribe(ev.EpochEnded, recorder("h", log), priority=150)
    assert repr(sub) == "Subscription(EpochEnded, h, priority=150)"
    fire_epochs(bus, 1)
    sub.remove()
    sub.remove()
    fire_epochs(bus, 1)
    assert log == ["h"]
    assert not bus.listening(ev.EpochEnded) and bus.subscriptions() == ()


def test_subscription_as_context_manager() -> None:
    bus, log = Bus(), []
    with bus.subscribe(ev.EpochEnded, recorder("inside", log)):
        fire_epochs(bus, 2)
    fire_epochs(bus, 2)
    assert log == ["inside", "inside"]


# -- base classes -------------------------------------------------------------------------------------------------
def test_a_base_class_subscription_receives_subclasses() -> None:
    bus, evals, everything = Bus(), [], []
    bus.subscribe(ev.EvalBatchStarted, lambda e: evals.append(type(e).__name__))
    bus.subscribe(ev.Event, lambda e: everything.append(type(e).__name__), priority=900)
    for cls in (ev.ValidationBatchStarted, ev.TestBatchStarted, ev.PredictBatchStarted):
        bus.fire(cls(None, at(), None, 0, 0, 1))
    bus.fire(ev.BatchStarted(None, at(), None, 0))
    bus.fire(ev.EpochEnded(None, at()))
    assert evals == ["ValidationBatchStarted", "TestBatchStarted", "PredictBatchStarted"]
    assert everything == evals + ["BatchStarted", "EpochEnded"]


def test_base_class_subscription_in_a_real_fit() -> None:
    t, seen = trainer(limit_val_batches=2), []
    t.on(ev.EvalBatchStarted)(lambda e: seen.append((type(e).__name__, e.batch_idx)))
    t.fit(Tiny(), data(), data())
    assert seen == [("ValidationBatchStarted", 0), ("ValidationBatchStarted", 1)]


# -- errors in handlers -------------------------------------------------------------------------------------------
def test_a_handler_exception_is_reraised_unchanged_with_a_note() -> None:
    bus = Bus()
    boom = ZeroDivisionError("boom")

    def explode(event: Any) -> None:
        raise boom

    bus.subscribe(ev.EpochEnded, recorder("before", []))
    bus.subscribe(ev.EpochEnded, explode)
    with pytest.raises(ZeroDivisionError) as info:
        bus.fire(ev.EpochEnded(None, at(epoch=2, batch=3, step=7)))
    assert info.value is boom
    assert info.value.__notes__ == [
        "[statetrain] raised in handler test_a_handler_exception_is_reraised_unchanged_with_a_note.<locals>.explode "
        "while handling EpochEnded at epoch=2 batch=3 step=7"]


def test_a_handler_exception_in_a_real_fit_keeps_its_type_and_names_the_handler() -> None:
    class Fragile:
        def on_batch_ended(self, event: ev.BatchEnded) -> None:
            if event.batch_idx == 1:
                raise KeyError("missing")

    t, seen = trainer(), []
    t.add_handler(Fragile())
    t.on(ev.ExceptionRaised)(lambda e: seen.append(type(e.exception)))
    with pytest.raises(KeyError, match="missing") as info:
        t.fit(Tiny(), data())
    assert seen == [KeyError]
    assert any("handler " + "test_a_handler_exception_in_a_real_fit_keeps_its_type_and_names_the_handler.<locals>"
               ".Fragile.on_batch_ended while handling BatchEnded at epoch=0 batch=1 step=2" in n
               for n in info.value.__notes__)


# -- attach -------------------------------------------------------------------------------------------------------
class Early:
    priority = 150

    def __init__(self, log: list) -> None:
        self.log = log

    def on_epoch_ended(self, event: ev.EpochEnded) -> None:
        self.log.append("Early.epoch")

    def on_batch_ended(self, event: ev.BatchEnded) -> None:
        self.log.append("Early.batch")


def test_attach_subscribes_on_methods_with_the_handler_priority() -> None:
    bus, log = Bus(), []
    bus.subscribe(ev.EpochEnded, recorder("plain", log))
    handler = Early(log)
    subs = bus.attach(handler)
    assert sorted(s.name for s in subs) == ["Early.on_batch_ended", "Early.on_epoch_ended"]
    assert {s.priority for s in subs} == {150}
    fire_epochs(bus, 1)
    bus.fire(ev.BatchEnded(None, at(), None, None, 0))
    assert log == ["Early.epoch", "plain", "Early.batch"]
    assert bus.order(ev.EpochEnded) == ["Early.on_epoch_ended", "plain"]
    bus.detach(handler)
    assert bus.order(ev.EpochEnded) == ["plain"] and not bus.listening(ev.BatchEnded)


def test_attach_priority_argument_overrides_the_class_attribute() -> None:
    bus = Bus()
    bus.subscribe(ev.EpochEnded, recorder("plain", []), priority=100)
    bus.attach(Early([]), priority=50)
    assert bus.order(ev.EpochEnded) == ["Early.on_epoch_ended", "plain"]


def test_a_misspelt_on_method_is_a_handler_error_with_a_suggestion() -> None:
    class Typo:
        def on_epoch_end(self, event: Any) -> None: ...

    with pytest.raises(HandlerError, match=r"handler .*Typo defines on_epoch_end\(\), which matches no event; "
                                           r"did you mean on_epoch_ended\(\)\?"):
        Bus().attach(Typo())


def test_unknown_phases_and_actions_are_handler_errors() -> None:
    class BadWrap:
        def wrap_everything(self) -> Any: ...

    class BadProvide:
        def provide_loss(self, loss: Any) -> None: ...

    with pytest.raises(HandlerError, match=r"defines wrap_everything\(\); known phases: train_step, forward, "
                                           r"backward, optimizer_step, eval_forward"):
        Bus().attach(BadWrap())
    with pytest.raises(HandlerError, match=r"defines provide_loss\(\); known actions: convert_input, forward, backward, unscale, "
                                           r"clip, optimizer_step, resolve_control"):
        Bus().attach(BadProvide())


def test_a_rejected_handler_leaves_nothing_subscribed() -> None:
    """attach() is all or nothing (ENGINE BUG: on_batch_ended stays subscribed after on_epoch_end is refused)."""
    class HalfRight:
        def on_batch_ended(self, event: Any) -> None: ...
        def on_epoch_end(self, event: Any) -> None: ...

    bus = Bus()
    with pytest.raises(HandlerError, match="did you mean on_epoch_ended"):
        bus.attach(HalfRight())
    assert bus.subscriptions() == ()
    assert not bus.listening(ev.BatchEnded)


# -- wrap ---------------------------------------------------------------------------------------------------------
class Wrapper:
    """wrap_forward / wrap_backward / wrap_optimizer_step record enter/exit into a shared log."""

    def __init__(self, log: list, tag: str = "", priority: int = CALLBACK) -> None:
        self.log, self.tag, self.priority = log, tag, priority

    @contextmanager
    def _around(self, phase: str) -> Iterator[None]:
        self.log.append(f"enter {phase}{self.tag}")
        try:
            yield
        finally:
            self.log.append(f"exit {phase}{self.tag}")

    def wrap_forward(self) -> Any:
        return self._around("forward")

    def wrap_backward(self) -> Any:
        return self._around("backward")

    def wrap_optimizer_step(self) -> Any:
        return self._around("optimizer_step")


def test_wrappers_are_entered_around_their_phase_in_a_real_fit() -> None:
    model = Tiny(record_backward=True)
    t = trainer(limit_train_batches=2)
    t.add_handler(Wrapper(model.calls))
    t.fit(model, data())
    one = ["enter forward", "training_step", "exit forward", "enter backward", "backward", "exit backward",
           "enter optimizer_step", "step", "exit optimizer_step"]
    assert model.calls == one + one


def test_wrappers_nest_by_priority() -> None:
    model = Tiny()
    t = trainer(limit_train_batches=1)
    t.add_handler(Wrapper(model.calls, " inner", priority=250))
    t.add_handler(Wrapper(model.calls, " outer", priority=120))
    t.fit(model, data())
    assert model.calls[:5] == ["enter forward outer", "enter forward inner", "training_step", "exit forward inner",
                               "exit forward outer"]
    assert "wrap forward: Wrapper.wrap_forward > Wrapper.wrap_forward" in t.describe()


# -- provide ------------------------------------------------------------------------------------------------------
class ScaledBackward:
    """Provides the backward action: backpropagates `scale * loss`."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.calls = 0

    def provide_backward(self, loss: torch.Tensor) -> None:
        self.calls += 1
        (loss * self.scale).backward()


def test_provide_backward_replaces_loss_backward_in_a_real_fit() -> None:
    model = Tiny(lr=0.0)
    reference = Tiny(lr=0.0)
    reference.load_state_dict(model.state_dict())
    loader = data(n=2, batch_size=2)
    x, y = next(iter(loader))
    nn.functional.mse_loss(reference.layer(x), y).backward()
    expected = [3.0 * p.grad for p in reference.parameters()]

    grads: list[list[torch.Tensor]] = []
    provider = ScaledBackward(3.0)
    t = trainer()
    t.add_handler(provider)
    t.on(ev.AfterBackward)(lambda e: grads.append([p.grad.clone() for p in e.trainer.lightning_module.parameters()]))
    t.fit(model, loader)
    assert provider.calls == 1 and len(grads) == 1
    for got, want in zip(grads[0], expected):
        torch.testing.assert_close(got, want)
    assert "provide backward: ScaledBackward" in t.describe()


def test_two_providers_of_one_action_is_a_handler_error() -> None:
    class OtherBackward:
        def provide_backward(self, loss: torch.Tensor) -> None: ...

    t = trainer()
    t.add_handler(ScaledBackward(2.0))
    with pytest.raises(HandlerError, match="two handlers provide the action 'backward': ScaledBackward and "
                                           r".*OtherBackward; an action has a single provider, remove one of them"):
        t.add_handler(OtherBackward())


# -- steering through event.control -------------------------------------------------------------------------------
def test_request_stop_stops_training_at_the_right_timestamp() -> None:
    model = Tiny()
    t = trainer(max_epochs=5)

    @t.on(ev.BatchEnded)
    def stop_after_three_steps(event: ev.BatchEnded) -> None:
        if event.timestamp.global_step == 3:
            event.control.request_stop("enough")

    t.fit(model, data(n=16))  # 8 batches per epoch
    assert model.calls.count("training_step") == 3
    assert t.global_step == 3 and t.current_epoch == 1 and t.should_stop
    (req,) = t.control.history
    assert (req.action, req.reason, req.timestamp) == ("stop", "enough", Timestamp(0, 2, 3, 3, 6))


def test_control_history_records_who_asked_and_when() -> None:
    """`by` is the qualname of the handler that called the Control method (ENGINE BUG: 'Control.request_stop')."""
    class Stopper:
        def on_batch_ended(self, event: ev.BatchEnded) -> None:
            if event.batch_idx == 1:
                event.control.request_stop("from a handler class")

    def validate_first(event: ev.BatchEnded) -> None:
        if event.batch_idx == 0:
            event.control.validate_now()

    t = trainer(max_epochs=3, limit_val_batches=1, num_sanity_val_steps=1)
    t.add_handler(Stopper())
    t.on(ev.BatchEnded)(validate_first)
    t.fit(Tiny(), data(), data())
    assert [(r.action, r.by, r.timestamp.global_step, r.timestamp.batch_in_epoch) for r in t.control.history] == [
        ("validate", "test_control_history_records_who_asked_and_when.<locals>.validate_first", 1, 0),
        ("stop", "test_control_history_records_who_asked_and_when.<locals>.Stopper.on_batch_ended", 2, 1),
    ]


def test_skip_epoch_skips_the_rest_of_the_epoch() -> None:
    model = Tiny()
    t = trainer(max_epochs=2)

    @t.on(ev.BatchStarted)
    def skip(event: ev.BatchStarted) -> None:
        if event.timestamp.epoch == 0 and event.batch_idx == 1:
            event.control.skip_epoch("warm-up epoch cut short")

    epochs: list[int] = []
    t.on(ev.EpochEnded)(lambda e: epochs.append(e.timestamp.epoch))
    t.fit(model, data())  # 4 batches per epoch
    assert model.calls.count("training_step") == 1 + 4
    assert t.global_step == 5 and epochs == [0, 1]
    assert [r.action for r in t.control.history] == ["skip_epoch"]


def test_skip_step_leaves_the_weights_unchanged_for_that_step() -> None:
    model = Tiny()
    t = trainer()
    snapshots: dict[tuple[str, int], list[torch.Tensor]] = {}

    @t.on(ev.BatchStarted)
    def start(event: ev.BatchStarted) -> None:
        snapshots["start", event.batch_idx] = weights(model)
        if event.batch_idx == 1:
            event.control.skip_step()

    t.on(ev.BatchEnded)(lambda e: snapshots.__setitem__(("end", e.batch_idx), weights(model)))
    t.fit(model, data())
    assert same(snapshots["start", 1], snapshots["end", 1])
    for i in (0, 2, 3):
        assert not same(snapshots["start", i], snapshots["end", i])
    assert t.global_step == 3 and model.calls.count("step") == 3


def test_skip_step_from_before_optimizer_step_skips_that_step_not_the_next() -> None:
    """BeforeOptimizerStep is where gradients are final (e.g. skip on non-finite gradients). A skip asked there must
    not leak into the next batch."""
    model = Tiny()
    t = trainer()
    snapshots: dict[tuple[str, int], list[torch.Tensor]] = {}
    t.on(ev.BatchStarted)(lambda e: snapshots.__setitem__(("start", e.batch_idx), weights(model)))
    t.on(ev.BatchEnded)(lambda e: snapshots.__setitem__(("end", e.batch_idx), weights(model)))

    @t.on(ev.BeforeOptimizerStep)
    def skip_first(event: ev.BeforeOptimizerStep) -> None:
        if event.timestamp.epoch == 0 and event.timestamp.batch_in_epoch == 0:
            event.control.skip_step("first gradients look bad")

    t.fit(model, data())
    assert not same(snapshots["start", 1], snapshots["end", 1]), "batch 1's step was skipped instead"
    assert same(snapshots["start", 0], snapshots["end", 0])
    assert t.global_step == 3


def test_validate_now_runs_validation_after_the_current_batch() -> None:
    t = trainer(limit_val_batches=1, num_sanity_val_steps=1)
    runs: list[tuple[int, int, int]] = []

    @t.on(ev.ValidationStarted)
    def record(event: ev.ValidationStarted) -> None:
        if not event.trainer.sanity_checking:
            runs.append((event.timestamp.epoch, event.timestamp.batch_in_epoch, event.timestamp.global_step))

    @t.on(ev.BatchEnded)
    def ask(event: ev.BatchEnded) -> None:
        if event.batch_idx == 1:
            event.control.validate_now("look now")

    t.fit(Tiny(), data(), data())  # 4 batches: validation after batch 1 (asked) and batch 3 (end of epoch)
    assert runs == [(0, 1, 2), (0, 3, 4)]
    assert [(r.action, r.reason) for r in t.control.history] == [("validate", "look now")]
