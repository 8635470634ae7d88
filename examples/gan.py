"""A GAN loop as a machine built from scratch: each batch is a discriminator step, then a generator step.

The machine reuses the built-in state functions of `engine.loops.fit` for everything around the batch (setup,
epochs, validation, teardown), so Trainer flags (max_epochs, limit_train_batches, ...), callbacks, `@trainer.on`
handlers and `self.log` all keep working. Only three states are new:

    batch  -> d_step | epoch_end        fetch the next batch, BatchStarted
    d_step -> g_step                    discriminator update (real vs detached fake)
    g_step -> batch | validation | epoch_end    generator update, then BatchEnded and Lightning's val-check rule

The module uses manual optimization (`self.optimizers()`, `self.manual_backward`, two optimizers, two StepLR
schedulers it steps itself at each epoch end via `self.lr_schedulers()`), so each `opt.step()` fires
BeforeOptimizerStep / OptimizerStepped and counts one global step, as in Lightning.

The same GAN runs two other ways, with the same weights at the end (tests/engine/test_custom_loops.py):
- `build_trainer("fit")`: the stock fit machine, both updates in `training_step` (plain Lightning manual
  optimization);
- `build_trainer("gan_steps")`: a machine with two optimizer_step states, `d_optimizer_step -> g_optimizer_step`,
  in which the module only computes the two losses and the machine runs zero_grad, backward and the step of each
  optimizer through the engine's step pipeline (precision scaling, the backward and optimizer-step events).
Run it: `python examples/gan.py` (CPU, a couple of seconds).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.loops import fit
from engine.loops.fit import FitLoop
from engine.machine import DONE, Machine

__all__ = ["GAN", "gan_batch", "d_step", "g_step", "build_gan_machine", "step_batch", "d_optimizer_step",
           "g_optimizer_step", "build_gan_step_machine", "make_data", "build_trainer", "main"]

LATENT = 2


class GAN(pl.LightningModule):
    """Generator: noise -> 1-d samples; discriminator: sample -> real/fake logit. Target: N(3, 0.5)."""

    def __init__(self, lr: float = 0.02) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.lr = lr
        self.generator = nn.Sequential(nn.Linear(LATENT, 16), nn.ReLU(), nn.Linear(16, 1))
        self.discriminator = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def _noise(self, n: int) -> Tensor:
        return torch.randn(n, LATENT, device=self.device)

    def discriminator_loss(self, real: Tensor) -> Tensor:
        """The discriminator's loss: real -> 1, (detached) fake -> 0."""
        fake = self(self._noise(real.size(0))).detach()
        logits = self.discriminator(torch.cat([real, fake]))
        labels = torch.cat([torch.ones_like(real), torch.zeros_like(fake)])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        self.log("d_loss", loss, prog_bar=True)
        return loss

    def generator_loss(self, real: Tensor) -> Tensor:
        """The generator's loss: make the discriminator call fakes real."""
        fake = self(self._noise(real.size(0)))
        loss = nn.functional.binary_cross_entropy_with_logits(self.discriminator(fake), torch.ones_like(fake))
        self.log("g_loss", loss, prog_bar=True)
        return loss

    def discriminator_step(self, real: Tensor) -> Tensor:
        """One manual update of the discriminator."""
        opt_d = self.optimizers()[0]
        loss = self.discriminator_loss(real)
        opt_d.zero_grad()
        self.manual_backward(loss)
        opt_d.step()
        return loss.detach()

    def generator_step(self, real: Tensor) -> Tensor:
        """One manual update of the generator."""
        opt_g = self.optimizers()[1]
        loss = self.generator_loss(real)
        opt_g.zero_grad()
        self.manual_backward(loss)
        opt_g.step()
        return loss.detach()

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> dict[str, Tensor]:
        """With the stock fit machine a batch is both steps in one call; the GAN machine splits them into states."""
        (real,) = batch
        return {"d_loss": self.discriminator_step(real), "g_loss": self.generator_step(real)}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.999))
        sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=5, gamma=0.5)
        sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=5, gamma=0.5)
        return [opt_d, opt_g], [sched_d, sched_g]

    def on_train_epoch_end(self) -> None:
        """Manual optimization steps its schedulers itself (Lightning does not): one step per epoch each."""
        for scheduler in self.lr_schedulers():
            scheduler.step()


# -- the three new states ---------------------------------------------------------------------------------------
def gan_batch(loop: FitLoop) -> str:
    """Fetch the next batch and fire BatchStarted; an exhausted (or skipped) epoch goes to epoch_end."""
    if not loop.begin_batch():  # exhausted, or on_train_batch_start returned -1
        return "epoch_end"
    loop.outputs = {}
    return "d_step"


def d_step(loop: FitLoop) -> str:
    """The discriminator's update on this batch."""
    (real,) = loop.batch
    loop.outputs["d_loss"] = loop.call_step("discriminator_step", real)
    return "g_step"


def g_step(loop: FitLoop) -> str:
    """The generator's update, then the end of the batch (the built-in `finish_batch` decides what comes next)."""
    (real,) = loop.batch
    loop.outputs["g_loss"] = loop.call_step("generator_step", real)
    return loop.finish_batch()  # BatchEnded, step metrics, then validation / next batch / epoch end


def build_gan_machine() -> Machine:
    """setup -> epoch_start -> batch -> d_step -> g_step -> ... -> epoch_end -> teardown, with validation."""
    m = Machine("gan", initial="setup")
    m.add_state("setup", fit.setup, to={"epoch_start", "validation", "teardown"})
    m.add_state("epoch_start", fit.epoch_start, to={"batch", "epoch_end"})
    m.add_state("batch", gan_batch, to={"d_step", "epoch_end"})
    m.add_state("d_step", d_step, to={"g_step"})
    m.add_state("g_step", g_step, to={"batch", "validation", "epoch_end"})
    m.add_state("validation", fit.validation, to={"batch", "epoch_end", "epoch_start", "teardown"})
    m.add_state("epoch_end", fit.epoch_end, to={"epoch_start", "teardown"})
    m.add_state("teardown", fit.teardown, to={DONE})
    m.validate()
    return m


# -- the same GAN as a machine with two optimizer_step states ----------------------------------------------------
def _optimize(loop: FitLoop, loss_method: str, opt_idx: int) -> Tensor:
    """The engine's optimisation phases for one optimizer: the module's loss, zero_grad, backward (BeforeBackward,
    precision scaling, AfterBackward), step (BeforeOptimizerStep, OptimizerStepped, global_step += 1)."""
    (real,) = loop.batch
    loss = loop.call_step(loss_method, real)
    optimizer = loop.pipeline.optimizers[opt_idx]
    optimizer.zero_grad()
    loop.pipeline.manual_backward(loss)
    loop.pipeline.manual_step(optimizer, None)
    return loss.detach()


def step_batch(loop: FitLoop) -> str:
    """Fetch the next batch and fire BatchStarted; an exhausted (or skipped) epoch goes to epoch_end."""
    if not loop.begin_batch():
        return "epoch_end"
    loop.outputs = {}
    return "d_optimizer_step"


def d_optimizer_step(loop: FitLoop) -> str:
    """Discriminator loss, backward and step, driven by the machine (the module only computes the loss)."""
    loop.outputs["d_loss"] = _optimize(loop, "discriminator_loss", 0)
    return "g_optimizer_step"


def g_optimizer_step(loop: FitLoop) -> str:
    """Generator loss, backward and step; then the end of the batch."""
    loop.outputs["g_loss"] = _optimize(loop, "generator_loss", 1)
    return loop.finish_batch()


def build_gan_step_machine() -> Machine:
    """setup -> epoch_start -> batch -> d_optimizer_step -> g_optimizer_step -> ... -> epoch_end -> teardown.

    The module's `discriminator_step`/`generator_step` are not used: each optimizer has its own state, so a
    handler can be attached between them (insert a state) and the trace shows which optimizer stepped."""
    m = Machine("gan_steps", initial="setup")
    m.add_state("setup", fit.setup, to={"epoch_start", "validation", "teardown"})
    m.add_state("epoch_start", fit.epoch_start, to={"batch", "epoch_end"})
    m.add_state("batch", step_batch, to={"d_optimizer_step", "epoch_end"})
    m.add_state("d_optimizer_step", d_optimizer_step, to={"g_optimizer_step"})
    m.add_state("g_optimizer_step", g_optimizer_step, to={"batch", "validation", "epoch_end"})
    m.add_state("validation", fit.validation, to={"batch", "epoch_end", "epoch_start", "teardown"})
    m.add_state("epoch_end", fit.epoch_end, to={"epoch_start", "teardown"})
    m.add_state("teardown", fit.teardown, to={DONE})
    m.validate()
    return m


def make_data(n: int = 256, batch_size: int = 32, seed: int = 0) -> DataLoader:
    """Real samples from N(3, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(3.0 + 0.5 * torch.randn(n, 1, generator=g)), batch_size=batch_size)


def build_trainer(machine: str = "gan", **flags: Any) -> pl.Trainer:
    """A quiet CPU trainer running a GAN machine ('gan': manual steps in two states; 'gan_steps': two
    optimizer_step states; 'fit': the stock fit machine, both updates in training_step)."""
    defaults = dict(max_epochs=15, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(**{**defaults, **flags})
    if machine != "fit":
        trainer.machine = build_gan_machine() if machine == "gan" else build_gan_step_machine()
    return trainer


def main() -> None:
    pl.seed_everything(0)
    trainer = build_trainer()
    print(trainer.machine)
    print()
    print(trainer.machine.to_mermaid())
    print()

    steps: list[int] = []

    @trainer.on(pl.EpochEnded, every=5)
    def report(event: pl.EpochEnded) -> None:
        m = event.trainer.callback_metrics
        steps.append(event.timestamp.global_step)
        print(f"epoch {event.timestamp.epoch}: step {event.timestamp.global_step}, "
              f"d_loss {float(m['d_loss']):.3f}, g_loss {float(m['g_loss']):.3f}")

    model = GAN()
    with torch.no_grad():
        before = model(torch.randn(2000, LATENT)).mean().item()
    trainer.fit(model, make_data())
    with torch.no_grad():
        samples = model(torch.randn(2000, LATENT))
    print(f"generated mean: {before:.2f} before training -> {samples.mean().item():.2f} after "
          f"(target 3.00), std {samples.std().item():.2f} (target 0.50); {trainer.global_step} optimizer steps")


if __name__ == "__main__":
    main()
