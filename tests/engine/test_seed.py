"""seed_everything: same seed, same numbers everywhere; bad seeds fail clearly."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import engine as pl


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_seed_everything_reproduces_all_rngs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert pl.seed_everything(123) == 123
    a = _draw()
    pl.seed_everything(123)
    b = _draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert os.environ["PL_GLOBAL_SEED"] == "123" and os.environ["PL_SEED_WORKERS"] == "0"
    pl.seed_everything(5, workers=True)
    assert os.environ["PL_SEED_WORKERS"] == "1"


def test_seed_none_uses_env_then_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "77")
    assert pl.seed_everything() == 77
    monkeypatch.delenv("PL_GLOBAL_SEED")
    with pytest.warns(UserWarning, match="using seed 0"):
        assert pl.seed_everything(None) == 0


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_out_of_bounds_seed(seed: int) -> None:
    with pytest.raises(ValueError, match="out of bounds"):
        pl.seed_everything(seed)


def test_non_int_seed() -> None:
    with pytest.raises(TypeError, match="seed='abc'"):
        pl.seed_everything("abc")  # type: ignore[arg-type]


def test_worker_seeding_gives_distinct_reproducible_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import DataLoader, Dataset

    class Noise(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor([float(np.random.rand()), torch.rand(()).item()])

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list = []

        def predict_step(self, batch, batch_idx):
            self.seen.append(batch)
            return batch

    def run() -> torch.Tensor:
        pl.seed_everything(3, workers=True)
        model = Model()
        loader = DataLoader(Noise(), batch_size=1, num_workers=2)
        pl.Trainer(enable_model_summary=False).predict(model, loader)
        return torch.cat(model.seen)

    first, second = run(), run()
    assert torch.equal(first, second)
    assert len({tuple(row.tolist()) for row in first}) == 4  # no two samples share numpy/torch draws
