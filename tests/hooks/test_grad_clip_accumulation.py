"""Gradient clipping (hooks/grad_clip.py) and accumulation (policy.step_due, hooks/accumulation.py): the engine's
final weights equal (torch.equal) a hand-written loop doing the same operations in the same order, same seed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.errors import MisconfigurationException
from hooks.accumulation import GradientAccumulationScheduler

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
             num_sanity_val_steps=0)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y) * 50  # large gradients, so clipping bites

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}


def batches(n: int = 10) -> list:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n * 4, 4, generator=g), torch.randn(n * 4, 1, generator=g)
    return list(DataLoader(TensorDataset(x, y), batch_size=4))


class Once:
    """The batches as one loader (a plain list would be several dataloaders)."""

    def __init__(self, data: list) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Any:
        return iter(self.data)


def hand_loop(epochs: int, clip: tuple[float, str] | None = None, accumulate: Any = 1) -> dict:
    model = Net()
    opt = model.configure_optimizers()
    optimizer, sched = opt["optimizer"], opt["lr_scheduler"]
    data = batches()
    for epoch in range(epochs):
        n = accumulate(epoch) if callable(accumulate) else accumulate
        for i, batch in enumerate(data):
            loss = model.loss(batch) / n if n > 1 else model.loss(batch)
            if i % n == 0:
                optimizer.zero_grad()
            loss.backward()
            if (i + 1) % n == 0 or i == len(data) - 1:
                if clip is not None:
                    value, algo = clip
                    params = [p for p in model.parameters() if p.grad is not None]
                    if algo == "norm":
                        torch.nn.utils.clip_grad_norm_(params, value)
                    else:
                        torch.nn.utils.clip_grad_value_(params, value)
                optimizer.step()
        sched.step()  # interval 'epoch': after the last batch's step
    return model.state_dict()


def engine_run(epochs: int, **flags: Any) -> tuple[dict, pl.Trainer]:
    model = Net()
    trainer = pl.Trainer(max_epochs=epochs, **QUIET, **flags)
    trainer.fit(model, Once(batches()))
    return model.state_dict(), trainer


def same(a: dict, b: dict) -> None:
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("algo", ["norm", "value"])
def test_clipping_matches_a_hand_loop(algo: str) -> None:
    got, trainer = engine_run(2, gradient_clip_val=0.3, gradient_clip_algorithm=algo)
    same(hand_loop(2, clip=(0.3, algo)), got)
    unclipped, _ = engine_run(2)
    assert not all(torch.equal(unclipped[k], got[k]) for k in got)  # clipping did something


def test_the_total_norm_before_clipping_is_on_the_phase_context() -> None:
    norms: list[float] = []
    trainer = pl.Trainer(max_epochs=1, gradient_clip_val=0.3, **QUIET)
    trainer.on(pl.OptimizerStepped)(lambda e: norms.append(float(e.trainer.context.pipeline.context.grad_norm)))
    trainer.fit(Net(), Once(batches(3)))
    assert len(norms) == 3 and all(n > 0.3 for n in norms)


def test_a_module_value_different_from_the_trainers_is_an_error() -> None:
    class Own(Net):
        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                        gradient_clip_algorithm: Any = None) -> None:
            self.clip_gradients(optimizer, gradient_clip_val=0.1)

    with pytest.raises(MisconfigurationException, match=r"conflicts with Trainer\(gradient_clip_val=0.3\)"):
        pl.Trainer(max_epochs=1, gradient_clip_val=0.3, **QUIET).fit(Own(), Once(batches(2)))


def test_an_overridden_configure_gradient_clipping_clips_without_the_flag() -> None:
    class Own(Net):
        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                        gradient_clip_algorithm: Any = None) -> None:
            self.clip_gradients(optimizer, gradient_clip_val=0.3, gradient_clip_algorithm="value")

    model = Own()
    pl.Trainer(max_epochs=2, **QUIET).fit(model, Once(batches()))
    same(hand_loop(2, clip=(0.3, "value")), model.state_dict())


@pytest.mark.parametrize("n", [2, 4])  # 10 batches: 4 leaves a last partial window of 2
def test_accumulation_matches_a_hand_loop(n: int) -> None:
    got, trainer = engine_run(2, accumulate_grad_batches=n)
    same(hand_loop(2, accumulate=n), got)
    steps = -(-10 // n)
    assert trainer.global_step == 2 * steps and trainer.batches_stepped == 2 * steps


def test_accumulation_with_clipping() -> None:
    got, _ = engine_run(2, accumulate_grad_batches=4, gradient_clip_val=0.3)
    same(hand_loop(2, clip=(0.3, "norm"), accumulate=4), got)


def test_the_outputs_loss_is_normalised_by_the_window() -> None:
    seen: list[tuple[int, float]] = []

    class Logs(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss(batch)
            self.log("raw", loss)
            return loss

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append((batch_idx, outputs["loss"].item() * 4 / trainer.callback_metrics["raw"].item()))

    pl.Trainer(max_epochs=1, accumulate_grad_batches=4, callbacks=[Watch()], **QUIET).fit(Logs(), Once(batches()))
    assert [round(r, 4) for _, r in seen] == [1.0] * 10


def test_the_accumulation_scheduler_changes_the_window_by_epoch() -> None:
    schedule = {0: 1, 1: 2, 2: 4}
    got, trainer = engine_run(3, callbacks=[GradientAccumulationScheduler(schedule)])
    same(hand_loop(3, accumulate=lambda e: {0: 1, 1: 2, 2: 4}[e]), got)
    assert trainer.global_step == 10 + 5 + 3 and trainer.accumulate_grad_batches == 4


def test_accumulation_is_refused_under_manual_optimization() -> None:
    class Manual(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.loss(batch))
            opt.step()

    with pytest.raises(MisconfigurationException, match="not supported for manual optimization"):
        pl.Trainer(max_epochs=1, accumulate_grad_batches=2, **QUIET).fit(Manual(), Once(batches(2)))


def test_scheduler_arguments_are_checked() -> None:
    with pytest.raises(MisconfigurationException, match="Accumulation factor should be an int greater than 0"):
        GradientAccumulationScheduler({0: 0})
    with pytest.raises(MisconfigurationException, match="Epoch should be an int greater than or equal to 0"):
        GradientAccumulationScheduler({-1: 2})


def test_validation_inside_an_accumulation_window_keeps_its_gradients() -> None:
    class WithVal(Net):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.loss(batch))

    model = WithVal()
    trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=4, val_check_interval=3, **QUIET)
    trainer.fit(model, Once(batches()), Once(batches(2)))
    same(hand_loop(2, accumulate=4), model.state_dict())


def test_the_per_batch_counts_beside_global_step() -> None:
    """Lightning #17958: global_step counts optimizer steps; batches_stepped and batches_seen count batches."""
    _, trainer = engine_run(1, accumulate_grad_batches=4)
    assert (trainer.global_step, trainer.batches_stepped, trainer.timestamp.batches_seen) == (3, 3, 10)
