"""Custom loops: the EMA state inserted into the fit machine, the GAN machine built from scratch, replacing a state,
illegal transitions from custom states, and the graph export. Both examples also run as scripts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch

import engine as pl
from engine.errors import IllegalTransition
from engine.loops import fit
from engine.loops.fit import FitLoop
from engine.machine import DONE, Machine

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    """Import examples/<name>.py (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"statetrain_example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ema_example = load("ema")
gan_example = load("gan")


def assert_mermaid_has_every_edge(m: Machine) -> None:
    lines = set(m.to_mermaid().splitlines())
    assert f"    [*] --> {m.initial}" in lines
    for src, targets in m.transitions.items():
        for dst in targets:
            assert f"    {src} --> {'[*]' if dst == DONE else dst}" in lines, (src, dst)
    assert len(lines) == 2 + sum(len(t) for t in m.transitions.values())


# -- the examples as scripts ----------------------------------------------------------------------------------------
def test_examples_run_as_scripts() -> None:
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "examples" / f"{name}.py")], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("ema", "gan")}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"examples/{name}.py failed:\n{stderr}"
        out[name] = stdout
    assert "optimizer_step -> ema" in out["ema"] and "stateDiagram-v2" in out["ema"]
    assert "optimizer steps: 48, EMA updates: 48" in out["ema"]
    assert "Machine 'gan' (initial: setup)" in out["gan"] and "d_step --> g_step" in out["gan"]
    assert "generated mean:" in out["gan"]


# -- EMA ------------------------------------------------------------------------------------------------------------
class ValRegressor(ema_example.Regressor):
    """The example's regressor with a validation_step, so that validation runs."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))


def test_ema_equals_a_hand_computed_ema_and_differs_from_the_live_weights() -> None:
    decay = 0.7
    pl.seed_everything(0)
    loader, _, _ = ema_example.make_data(n=64, batch_size=16)
    ema = ema_example.EMA(decay=decay)
    trainer = ema_example.build_trainer(ema, max_epochs=2)
    model = ema_example.Regressor()
    after_steps: list[dict[str, torch.Tensor]] = []
    trainer.on(pl.OptimizerStepped)(
        lambda e: after_steps.append({k: p.detach().clone() for k, p in model.named_parameters()}))
    trainer.fit(model, loader)
    assert len(after_steps) == trainer.global_step == 8
    expected = {k: v.clone() for k, v in after_steps[0].items()}
    for weights in after_steps[1:]:
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * weights[k]
    live = dict(trainer.lightning_module.named_parameters())
    for k, v in expected.items():
        torch.testing.assert_close(ema.weights[k], v)
        assert not torch.allclose(ema.weights[k], live[k].detach()), k


def test_ema_state_runs_exactly_once_per_optimizer_step() -> None:
    pl.seed_everything(0)
    loader, _, _ = ema_example.make_data(n=64, batch_size=16)
    ema = ema_example.EMA()
    trainer = ema_example.build_trainer(ema, max_epochs=2, val_check_interval=0.5, limit_val_batches=1,
                                        num_sanity_val_steps=1)
    log: list[str] = []
    trainer.on(pl.OptimizerStepped)(lambda e: log.append(f"stepped {e.timestamp.global_step}"))
    trainer.on(pl.BatchEnded)(lambda e: log.append("batch_end"))

    @trainer.on(pl.ValidationStarted)
    def validation(event: pl.ValidationStarted) -> None:
        if not event.trainer.sanity_checking:
            log.append("validation")

    def counted(loop: FitLoop) -> None:
        log.append(f"ema {loop.trainer.global_step}")
        return ema(loop)

    trainer.machine.replace("ema", counted)
    trainer.fit(ValRegressor(), loader, loader)
    steps = [e for e in log if e.startswith("stepped")]
    emas = [e for e in log if e.startswith("ema")]
    assert len(steps) == trainer.global_step == 8 and ema.updates == 8
    assert [s.split()[1] for s in steps] == [e.split()[1] for e in emas]
    one_batch = ["stepped {n}", "batch_end", "ema {n}"]
    expected: list[str] = []
    for n in range(1, 9):
        expected += [s.format(n=n) for s in one_batch] + (["validation"] if n % 2 == 0 else [])
    assert log == expected  # ema after every step, before the validation that follows it


def test_two_states_after_optimizer_step_both_run() -> None:
    """ENGINE BUG (engine/machine.py Machine.run, `nxt not in trans[follower]`): a second insert after the same anchor
    makes every exit of the anchor an IllegalTransition."""
    ema = ema_example.EMA()
    trainer = ema_example.build_trainer(ema, max_epochs=1)
    seen: list[int] = []
    trainer.machine.insert("probe", lambda loop: seen.append(loop.trainer.global_step), after="optimizer_step")
    loader, _, _ = ema_example.make_data(n=32, batch_size=16)
    trainer.fit(ema_example.Regressor(), loader)
    assert ema.updates == 2 and seen == [1, 2]


def test_a_state_after_optimizer_step_and_one_before_validation_compose() -> None:
    """ENGINE BUG (engine/machine.py Machine.run): optimizer_step -> validation is refused once `ema` follows
    optimizer_step and a state is inserted before validation."""
    ema = ema_example.EMA()
    trainer = ema_example.build_trainer(ema, max_epochs=1, limit_val_batches=1, num_sanity_val_steps=1)
    entries: list[bool] = []
    trainer.machine.insert("pre_val", lambda loop: entries.append(loop.sanity_done), before="validation")
    loader, _, _ = ema_example.make_data(n=32, batch_size=16)
    trainer.fit(ValRegressor(), loader, loader)
    assert entries == [False, True] and ema.updates == 2


def test_ema_machine_mermaid_has_every_edge() -> None:
    trainer = ema_example.build_trainer(ema_example.EMA())
    m = trainer.machine
    assert m.transitions["optimizer_step"] == {"ema"}
    assert m.transitions["ema"] == {"batch", "validation", "epoch_end", "teardown"}
    assert_mermaid_has_every_edge(m)
    assert '"optimizer_step" -> "ema";' in m.to_dot()


# -- replace --------------------------------------------------------------------------------------------------------
def test_replacing_optimizer_step_runs_the_new_function() -> None:
    """A hand-written SGD step replaces the built-in one (the configured optimizer has lr=0 and never steps)."""
    pl.seed_everything(0)
    loader, _, _ = ema_example.make_data(n=32, batch_size=16)
    model = ema_example.Regressor(lr=0.0)
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    grads: list[dict[str, torch.Tensor]] = []

    def hand_sgd(loop: FitLoop) -> str:
        with torch.no_grad():
            grads.append({k: p.grad.clone() for k, p in loop.module.named_parameters()})
            for p in loop.module.parameters():
                p -= 0.5 * p.grad
        return loop.finish_batch()

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.machine.replace("optimizer_step", hand_sgd)
    stepped: list[int] = []
    trainer.on(pl.OptimizerStepped)(lambda e: stepped.append(1))
    trainer.fit(model, loader)
    assert len(grads) == 2 and stepped == [] and trainer.global_step == 0
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), start[k] - 0.5 * (grads[0][k] + grads[1][k]))
    assert ("optimizer_step -> batch | epoch_end | teardown | validation    "
            "[test_replacing_optimizer_step_runs_the_new_function.<locals>.hand_sgd]") in str(trainer.machine)


# -- illegal transitions --------------------------------------------------------------------------------------------
def test_an_illegal_transition_from_a_custom_state_names_both_states_and_the_legal_targets() -> None:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.machine.insert("rewind", lambda loop: "setup", after="optimizer_step")
    raised: list[BaseException] = []
    trainer.on(pl.ExceptionRaised)(lambda e: raised.append(e.exception))
    loader, _, _ = ema_example.make_data(n=32, batch_size=16)
    with pytest.raises(IllegalTransition) as info:
        trainer.fit(ema_example.Regressor(), loader)
    err = info.value
    assert (err.src, err.dst) == ("rewind", "setup")
    assert err.legal == frozenset({"batch", "validation", "epoch_end", "teardown"})
    assert str(err).startswith("machine 'fit': illegal transition 'rewind' -> 'setup'; legal targets from 'rewind' "
                               "are: batch, epoch_end, teardown, validation.")
    assert raised == [err] and trainer.state.status == "interrupted"


def test_an_illegal_transition_in_the_gan_machine() -> None:
    trainer = gan_example.build_trainer(max_epochs=1)
    trainer.machine.replace("d_step", lambda loop: "batch")
    with pytest.raises(IllegalTransition, match="machine 'gan': illegal transition 'd_step' -> 'batch'; legal "
                                                r"targets from 'd_step' are: g_step\. .*allow\('d_step', 'batch'\)"):
        trainer.fit(gan_example.GAN(), gan_example.make_data(n=32))


# -- GAN ------------------------------------------------------------------------------------------------------------
class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.outputs: list[dict] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.calls.append("fit_start")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(f"batch_start {batch_idx}")

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        which = "d" if optimizer is trainer.optimizers[0] else "g"
        self.calls.append(f"before_step {which}")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(f"batch_end {batch_idx}")
        self.outputs.append(outputs)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.calls.append("epoch_end")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.calls.append("fit_end")


def test_callbacks_handlers_and_self_log_work_in_the_gan_machine() -> None:
    recorder = Recorder()
    trainer = gan_example.build_trainer(max_epochs=1, limit_train_batches=2, callbacks=[recorder])
    stepped: list[int] = []
    trainer.on(pl.OptimizerStepped)(lambda e: stepped.append(e.timestamp.global_step))
    epochs: list[int] = []

    class EpochWatcher:
        def on_epoch_ended(self, event: pl.EpochEnded) -> None:
            epochs.append(event.timestamp.epoch)

    trainer.add_handler(EpochWatcher())
    trainer.fit(gan_example.GAN(), gan_example.make_data(n=128))
    one = ["batch_start {i}", "before_step d", "before_step g", "batch_end {i}"]
    assert recorder.calls == (["fit_start"] + [s.format(i=i) for i in range(2) for s in one]
                              + ["epoch_end", "fit_end"])
    assert stepped == [1, 2, 3, 4] and epochs == [0]
    assert [sorted(o) for o in recorder.outputs] == [["d_loss", "g_loss"]] * 2
    assert {"d_loss", "g_loss"} <= set(trainer.callback_metrics)
    assert set(trainer.progress_bar_metrics) >= {"d_loss", "g_loss"}


def test_trainer_flags_are_honoured_by_the_gan_machine() -> None:
    trainer = gan_example.build_trainer(max_epochs=3, limit_train_batches=2)
    batches: list[tuple[int, int]] = []
    trainer.on(pl.BatchStarted)(lambda e: batches.append((e.timestamp.epoch, e.batch_idx)))
    trainer.fit(gan_example.GAN(), gan_example.make_data(n=256, batch_size=32))  # 8 batches available
    assert batches == [(e, i) for e in range(3) for i in range(2)]
    assert trainer.current_epoch == 3 and trainer.global_step == 12  # two optimizer steps per batch


def test_validation_state_is_reused_by_the_gan_machine() -> None:
    class ScoredGAN(gan_example.GAN):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            (real,) = batch
            self.log("real_score", torch.sigmoid(self.discriminator(real)).mean())

    trainer = gan_example.build_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                                        num_sanity_val_steps=1)
    runs: list[tuple[bool, int]] = []
    trainer.on(pl.ValidationStarted)(lambda e: runs.append((e.trainer.sanity_checking, e.timestamp.global_step)))
    loader = gan_example.make_data(n=64)
    trainer.fit(ScoredGAN(), loader, loader)
    assert runs == [(True, 0), (False, 4), (False, 8)]
    assert "real_score" in trainer.callback_metrics


def test_gan_machine_mermaid_has_every_edge() -> None:
    m = gan_example.build_gan_machine()
    assert list(m.functions) == ["setup", "epoch_start", "batch", "d_step", "g_step", "validation", "epoch_end",
                                 "teardown"]
    assert m.functions["setup"] is fit.setup and m.functions["teardown"] is fit.teardown
    assert_mermaid_has_every_edge(m)


def test_self_log_works_in_a_custom_state_without_private_attributes() -> None:
    """A module method called from a custom state can `self.log` (training_step's context) using only the public
    FitLoop API."""
    def public_batch(loop: FitLoop) -> str:
        if not loop.begin_batch():
            return "epoch_end"
        loop.outputs = {}
        return "d_step"

    trainer = gan_example.build_trainer(max_epochs=1, limit_train_batches=1)
    trainer.machine.replace("batch", public_batch)
    trainer.fit(gan_example.GAN(), gan_example.make_data(n=32))
    assert {"d_loss", "g_loss"} <= set(trainer.callback_metrics)


def test_wrappers_apply_to_manual_backward_and_step() -> None:
    """ENGINE BUG: under manual optimization (the GAN machine) `wrap_backward` / `wrap_optimizer_step` are never
    entered: Trainer._manual_backward and Trainer._manual_step ignore bus.wrappers (the provider is honoured)."""
    log: list[str] = []

    class Wrap:
        @contextmanager
        def _around(self, phase: str) -> Iterator[None]:
            log.append(f"enter {phase}")
            yield
            log.append(f"exit {phase}")

        def wrap_backward(self) -> Any:
            return self._around("backward")

        def wrap_optimizer_step(self) -> Any:
            return self._around("optimizer_step")

    trainer = gan_example.build_trainer(max_epochs=1, limit_train_batches=1)
    trainer.add_handler(Wrap())
    trainer.fit(gan_example.GAN(), gan_example.make_data(n=32))
    assert log == ["enter backward", "exit backward", "enter optimizer_step", "exit optimizer_step"] * 2


def test_the_gan_module_also_trains_on_the_stock_fit_machine() -> None:
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(gan_example.GAN(), gan_example.make_data(n=128))
    assert trainer.global_step == 4 and {"d_loss", "g_loss"} <= set(trainer.callback_metrics)


def test_a_machine_from_scratch_must_be_valid() -> None:
    m = gan_example.build_gan_machine()
    m.add_state("orphan", lambda loop: DONE, to={DONE})
    with pytest.raises(ValueError, match=r"machine 'gan': unreachable state\(s\) \['orphan'\]"):
        m.validate()


def test_the_gan_steps_its_two_schedulers_on_both_machines() -> None:
    for trainer in (gan_example.build_trainer(max_epochs=6, limit_train_batches=1),
                    pl.Trainer(max_epochs=6, limit_train_batches=1, accelerator="cpu", logger=False,
                               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)):
        model = gan_example.GAN(lr=0.02)
        trainer.fit(model, gan_example.make_data(n=32))
        assert [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs] == [6, 6]
        assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == [0.01, 0.01]  # halved once, at epoch 5
        assert trainer.global_step == 12  # two optimizer steps per batch (Lightning counts optimizer steps)


# -- the GAN three ways: manual steps in states, two optimizer_step states, the stock fit machine ---------------
def _hand_written_gan(epochs: int, batches: int) -> dict[str, torch.Tensor]:
    """The same updates as a raw PyTorch loop: D (loss, zero_grad, backward, step), then G, per batch; both
    StepLR schedulers stepped at each epoch end."""
    torch.manual_seed(0)
    model = gan_example.GAN()
    (opt_d, opt_g), scheds = model.configure_optimizers()
    for _ in range(epochs):
        for i, (real,) in enumerate(gan_example.make_data(n=96)):
            if i == batches:
                break
            for opt, loss_fn in ((opt_d, model.discriminator_loss), (opt_g, model.generator_loss)):
                loss = _unlogged(loss_fn, real)
                opt.zero_grad()
                loss.backward()
                opt.step()
        for s in scheds:
            s.step()
    return model.state_dict()


def _unlogged(loss_fn: Any, real: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # the module is not attached: its self.log calls warn and do nothing
        warnings.simplefilter("ignore")
        return loss_fn(real)


@pytest.mark.parametrize("machine", ["gan", "gan_steps", "fit"])
def test_the_gan_gives_the_hand_written_loops_weights_each_way(machine: str) -> None:
    torch.manual_seed(0)
    model = gan_example.GAN()
    trainer = gan_example.build_trainer(machine, max_epochs=3, limit_train_batches=2)
    befores: list[str] = []
    trainer.on(pl.BeforeOptimizerStep)(
        lambda e: befores.append("d" if e.optimizer is e.trainer.optimizers[0] else "g"))
    backwards: list[int] = []
    trainer.on(pl.BeforeBackward)(lambda e: backwards.append(e.timestamp.global_step))
    trainer.fit(model, gan_example.make_data(n=96))
    expected = _hand_written_gan(3, 2)
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v), (machine, k)
    assert trainer.global_step == 12 and trainer.batches_stepped == 6 and befores == ["d", "g"] * 6
    assert backwards == list(range(12))  # every backward went through the engine's backward phase
    assert {"d_loss", "g_loss"} <= set(trainer.callback_metrics)


def test_the_two_optimizer_step_states_are_in_the_machine() -> None:
    m = gan_example.build_gan_step_machine()
    assert "d_optimizer_step --> g_optimizer_step" in m.to_mermaid()
    assert_mermaid_has_every_edge(m)
