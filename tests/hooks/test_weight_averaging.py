"""EMA weight averaging: equal (torch.equal) to a hand-written loop with torch's AveragedModel; the averaged weights
are used for validation and copied into the module at the end; checkpoints hold them Lightning's way and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from hooks.weight_averaging import EMAWeightAveraging

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)
        self.val_weights: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.val_weights.append(self.net.weight.detach().clone())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    return DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), batch_size=4)


def hand(epochs: int, every: int = 1, start: int | None = None) -> tuple[dict, dict, list]:
    model = Net()
    ema = AveragedModel(model, avg_fn=get_ema_avg_fn(decay=0.9), use_buffers=True)
    opt = model.configure_optimizers()
    step, at_val = 0, []
    for _ in range(epochs):
        for x, y in loader():
            loss = model.training_step((x, y), 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (start is None or step >= start) and step % every == 0:
                ema.update_parameters(model)
            step += 1
        at_val.append(ema.module.net.weight.detach().clone())
    return model.state_dict(), ema.module.state_dict(), at_val


def test_ema_matches_averaged_model_by_hand_and_is_used_for_validation(tmp_path: Path) -> None:
    model = Net()
    t = pl.Trainer(max_epochs=3, callbacks=[EMAWeightAveraging(decay=0.9, update_every_n_steps=2,
                                                              update_starting_at_step=3)],
                   default_root_dir=tmp_path, **QUIET)
    t.fit(model, loader(), loader())
    trained, averaged, at_val = hand(3, every=2, start=3)
    for k, v in averaged.items():  # the module ends with the averaged weights (Lightning's on_train_end)
        assert torch.equal(model.state_dict()[k], v), k
    assert all(torch.equal(a, b) for a, b in zip(model.val_weights, at_val))


def test_checkpoints_hold_the_averaged_weights_and_the_trained_ones(tmp_path: Path) -> None:
    model = Net()
    t = pl.Trainer(max_epochs=2, callbacks=[EMAWeightAveraging(decay=0.9)], default_root_dir=tmp_path, **QUIET)
    t.fit(model, loader(), loader())
    ckpt = torch.load(t.checkpoint_callback.best_model_path, weights_only=True)
    trained, averaged, _ = hand(2)
    for k in averaged:
        assert torch.equal(ckpt["state_dict"][k], averaged[k]), k
        assert torch.equal(ckpt["current_model_state"][k], trained[k]), k
    assert "n_averaged" in ckpt["averaging_state"]
    resumed = Net()
    t2 = pl.Trainer(max_epochs=3, callbacks=[EMAWeightAveraging(decay=0.9)], default_root_dir=tmp_path / "b", **QUIET)
    t2.fit(resumed, loader(), loader(), ckpt_path=t.checkpoint_callback.best_model_path)
    _, averaged3, _ = hand(3)
    for k in averaged3:
        assert torch.equal(resumed.state_dict()[k], averaged3[k]), k
