"""An exponential moving average of the weights, as one state inserted after `optimizer_step`.

The fit machine is data: `trainer.machine.insert("ema", fn, after="optimizer_step")` runs `fn` after every exit from
`optimizer_step`; `fn` returns None to carry on where `optimizer_step` was going (next batch, validation or epoch end).
Run it: `python examples/ema.py` (CPU, a couple of seconds).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.loops.fit import FitLoop

__all__ = ["EMA", "Regressor", "make_data", "build_trainer", "main"]


class EMA:
    """State function keeping `ema = decay * ema + (1 - decay) * weights` after every optimizer step.

    The first update copies the weights (as torch's AveragedModel does); `updates` counts the calls.
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.weights: dict[str, Tensor] = {}
        self.updates = 0

    @torch.no_grad()
    def __call__(self, loop: FitLoop) -> None:
        for name, p in loop.module.named_parameters():
            if name not in self.weights:
                self.weights[name] = p.detach().clone()
            else:
                self.weights[name].lerp_(p.detach(), 1.0 - self.decay)
        self.updates += 1
        return None  # continue to wherever optimizer_step was going

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into `module` (e.g. a copy of the model used for evaluation)."""
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.weights[name])


class Regressor(pl.LightningModule):
    """A linear regressor trained with plain SGD on noisy data, so the live weights jitter and the EMA smooths them."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_data(n: int = 256, batch_size: int = 16, seed: int = 0) -> tuple[DataLoader, Tensor, Tensor]:
    """Noisy linear data: a loader for training and the clean targets for scoring."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    clean = x @ w + 0.3
    noisy = clean + 0.5 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, noisy), batch_size=batch_size), x, clean


def build_trainer(ema: EMA, **flags) -> pl.Trainer:
    """A quiet CPU trainer whose fit machine has the `ema` state after `optimizer_step`."""
    defaults = dict(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(**{**defaults, **flags})
    trainer.machine.insert("ema", ema, after="optimizer_step")
    return trainer


def main() -> None:
    pl.seed_everything(0)
    loader, x, clean = make_data()
    ema = EMA(decay=0.9)
    trainer = build_trainer(ema)
    print(trainer.machine)
    print()
    print(trainer.machine.to_mermaid())
    print()

    model = Regressor()
    trainer.fit(model, loader)

    averaged = Regressor()
    ema.copy_to(averaged)
    with torch.no_grad():
        live_mse = nn.functional.mse_loss(model(x), clean).item()
        ema_mse = nn.functional.mse_loss(averaged(x), clean).item()
    print(f"optimizer steps: {trainer.global_step}, EMA updates: {ema.updates}")
    print(f"live weights: {model.net.weight.detach().flatten().tolist()}")
    print(f"EMA weights:  {ema.weights['net.weight'].flatten().tolist()}")
    print(f"MSE against the clean targets: live {live_mse:.4f}, EMA {ema_mse:.4f}")
    assert ema.updates == trainer.global_step


if __name__ == "__main__":
    main()
