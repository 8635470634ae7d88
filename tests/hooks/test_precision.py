"""Precision (hooks/precision.py): 64-true and bf16-mixed for real on the CPU, bit-identical to hand-written loops
doing the same casts / autocast; '16-mixed' on a CPU becomes 'bf16-mixed' with Lightning's warning; the GradScaler
path (scale, unscale before clipping, a step skipped on inf gradients) tested on the CPU scaler, and on CUDA
when there is one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from hooks.precision import ScaledMixedPrecision

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
             num_sanity_val_steps=0, max_epochs=2)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
        self.outputs: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        self.outputs.append(out.detach())
        return nn.functional.mse_loss(out.float(), y.float())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x).float(), y.float()))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)), batch_size=8)


def hand(dtype: torch.dtype | None = None, autocast: torch.dtype | None = None) -> dict:
    model = Net()
    if dtype is not None:
        model.to(dtype)
    opt = model.configure_optimizers()
    for _ in range(2):
        for x, y in loader():
            if dtype is not None:
                x, y = x.to(dtype), y.to(dtype)
            if autocast is not None:
                with torch.autocast("cpu", dtype=autocast):
                    loss = model.training_step((x, y), 0)
            else:
                loss = model.training_step((x, y), 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.state_dict()


def same(a: dict, b: dict) -> None:
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_64_true_trains_in_float64_like_a_hand_loop() -> None:
    model = Net()
    trainer = pl.Trainer(precision="64-true", **QUIET)
    trainer.fit(model, loader(), loader())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(o.dtype == torch.float64 for o in model.outputs)
    same(hand(dtype=torch.float64), model.state_dict())
    assert trainer.precision == "64-true"


def test_bf16_mixed_is_a_hand_autocast_loop_and_stays_close_to_fp32() -> None:
    model = Net()
    pl.Trainer(precision="bf16-mixed", **QUIET).fit(model, loader(), loader())
    assert all(o.dtype == torch.bfloat16 for o in model.outputs)  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    same(hand(autocast=torch.bfloat16), model.state_dict())
    fp32 = hand()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, fp32[k], atol=2e-2, rtol=5e-2)


def test_evaluation_runs_under_the_same_autocast() -> None:
    seen: list[torch.dtype] = []

    class Eval(Net):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            seen.append(self.net(batch[0]).dtype)

    model = Eval()
    trainer = pl.Trainer(precision="bf16-mixed", **QUIET)
    trainer.validate(model, loader(), verbose=False)
    assert seen and set(seen) == {torch.bfloat16}


def test_16_mixed_on_a_cpu_becomes_bf16_mixed_with_lightnings_warning() -> None:
    with pytest.warns(UserWarning, match=r"AMP with fp16 is not supported on CPU. Using `precision='bf16-mixed'`"):
        trainer = pl.Trainer(precision="16-mixed", accelerator="cpu", **QUIET)
    assert trainer.precision == "bf16-mixed"


def test_the_scaler_path_scales_unscales_and_skips_a_step_on_inf_gradients() -> None:
    layer = nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    handler = ScaledMixedPrecision("16-mixed", torch.device("cpu"), scaler=torch.amp.GradScaler("cpu",
                                                                                                  init_scale=8.0))
    before = [p.detach().clone() for p in layer.parameters()]
    order: list[str] = []

    def closure(loss: torch.Tensor) -> Any:
        def run() -> torch.Tensor:
            opt.zero_grad()
            handler.provide_backward(loss)
            order.append(f"scaled grad {layer.bias.grad.item():g}")
            handler.provide_unscale(opt)
            order.append(f"unscaled grad {layer.bias.grad.item():g}")
            return loss
        return run

    x = torch.ones(1, 2)
    handler.provide_optimizer_step(opt, closure(layer(x).sum()))
    assert order == ["scaled grad 8", "unscaled grad 1"]
    assert not all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))  # a finite step updates
    stepped = [p.detach().clone() for p in layer.parameters()]
    handler.provide_optimizer_step(opt, closure(layer(x).sum() * float("inf")))
    assert all(torch.equal(a, b) for a, b in zip(stepped, layer.parameters()))  # inf: the update is skipped
    assert handler.scaler.get_scale() < 8.0  # and the scale backs off
    state = handler.state_dict()
    fresh = ScaledMixedPrecision("16-mixed", torch.device("cpu"), scaler=torch.amp.GradScaler("cpu"))
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == handler.scaler.get_scale()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed with a GradScaler needs CUDA")
def test_16_mixed_on_cuda_trains_and_saves_the_scaler(tmp_path: Any) -> None:  # pragma: no cover
    model = Net()
    trainer = pl.Trainer(precision="16-mixed", accelerator="cuda", devices=1, **QUIET)
    trainer.fit(model, loader(), loader())
    assert trainer.precision == "16-mixed" and all(o.dtype == torch.float16 for o in model.outputs)
    trainer.save_checkpoint(tmp_path / "amp.ckpt")
    ckpt = torch.load(tmp_path / "amp.ckpt", weights_only=True)
    assert "scale" in ckpt["engine"]["precision"]["scaler"] and "ScaledMixedPrecision" in ckpt
