"""DDPStrategy.process_dataloader: which sampler each kind of DataLoader gets (no process group needed)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset, WeightedRandomSampler

from strategies.ddp import DDPStrategy, DistributedSamplerWrapper, UnrepeatedDistributedSampler
from strategies.environment import ClusterEnvironment


class Rank1Of2(ClusterEnvironment):
    def world_size(self) -> int:
        return 2

    def global_rank(self) -> int:
        return 1


@pytest.fixture()
def strategy(monkeypatch: pytest.MonkeyPatch) -> DDPStrategy:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    yield DDPStrategy(accelerator="cpu", devices=2, cluster_environment=Rank1Of2())
    from engine.utilities.rank_zero import rank_zero_only

    rank_zero_only.rank = 0


DATA = TensorDataset(torch.arange(10.0))


def test_train_loader_gets_a_seeded_shuffling_distributed_sampler(strategy) -> None:
    loader = strategy.process_dataloader(DataLoader(DATA, batch_size=2, num_workers=0), "train")
    sampler = loader.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.seed) == (2, 1, True, 7)
    expected = DistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=7)
    expected.set_epoch(3)
    sampler.set_epoch(3)
    assert list(sampler) == list(expected)
    assert loader.batch_size == 2 and len(loader) == 3


def test_eval_loaders_keep_their_order(strategy) -> None:
    val = strategy.process_dataloader(DataLoader(DATA, batch_size=2), "validate").sampler
    assert isinstance(val, DistributedSampler) and not val.shuffle
    shuffled = strategy.process_dataloader(DataLoader(DATA, batch_size=2, shuffle=True), "test").sampler
    assert shuffled.shuffle


def test_predict_splits_without_repeating(strategy) -> None:
    loader = strategy.process_dataloader(DataLoader(DATA, batch_size=4), "predict")
    assert isinstance(loader.sampler, UnrepeatedDistributedSampler)
    assert [b[0].tolist() for b in loader] == [[1.0, 3.0, 5.0, 7.0], [9.0]]


def test_custom_sampler_is_wrapped(strategy) -> None:
    weighted = WeightedRandomSampler([1.0] * 10, num_samples=10, generator=torch.Generator().manual_seed(0))
    loader = strategy.process_dataloader(DataLoader(DATA, batch_size=2, sampler=weighted), "train")
    assert isinstance(loader.sampler, DistributedSamplerWrapper) and len(loader.sampler) == 5


def test_left_alone(strategy) -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(4))

    stream = DataLoader(Stream(), batch_size=2)
    assert strategy.process_dataloader(stream, "train") is stream
    mine = DataLoader(DATA, batch_size=2, sampler=DistributedSampler(DATA, num_replicas=2, rank=1))
    assert strategy.process_dataloader(mine, "train") is mine
    strategy.use_distributed_sampler = False
    plain = DataLoader(DATA, batch_size=2)
    assert strategy.process_dataloader(plain, "train") is plain
