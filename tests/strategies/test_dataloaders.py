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
    loader = strategy.process_dataloader(DataLoader(DATA, batch_size=2, num_workers=0), "fit")  # the fit loop's name
    sampler = loader.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.seed) == (2, 1, True, 7)
    expected = DistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True, seed=7)
    expected.set_epoch(3)
    sampler.set_epoch(3)
    assert list(sampler) == list(expected)
    assert loader.batch_size == 2 and len(loader) == 3


def test_overfit_training_data_stays_in_order_and_the_fit_loop_asks_for_fit(strategy) -> None:
    from torch.utils.data import RandomSampler

    overfit = strategy.process_dataloader(DataLoader(DATA, batch_size=2), "overfit").sampler
    assert isinstance(overfit, DistributedSampler) and not overfit.shuffle
    assert not isinstance(strategy.process_dataloader(DataLoader(DATA, batch_size=2, shuffle=True), "overfit").sampler,
                          RandomSampler)
    import engine as pl
    from strategies.single_device import SingleDeviceStrategy

    class Recording(SingleDeviceStrategy):
        stages: list[str] = []

        def process_dataloader(self, loader, stage):
            self.stages.append(stage)
            return loader

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0][:, None]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for flags, want in (({}, "fit"), ({"overfit_batches": 2}, "overfit")):
        rec = Recording(torch.device("cpu"))
        pl.Trainer(max_epochs=1, strategy=rec, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False, **flags).fit(Model(), DataLoader(DATA, batch_size=2))
        assert rec.stages[:1] == [want]
        Recording.stages = []


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
