"""LightningDataModule surface, from_datasets, and move_data_to_device on real datasets/tensors."""

from __future__ import annotations

import warnings
from collections import OrderedDict, defaultdict, namedtuple
from dataclasses import dataclass, field

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, TensorDataset

from engine.datamodule import LightningDataModule, move_data_to_device
from engine.errors import MisconfigurationException
from engine.hparams import AttributeDict


@pytest.fixture(autouse=True)
def _no_unexpected_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def tensor_ds(n: int = 8) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


class Stream(IterableDataset):
    def __iter__(self):
        return iter(torch.arange(5))


# --- defaults --------------------------------------------------------------------------------------------------
def test_default_attributes_and_no_op_hooks() -> None:
    dm = LightningDataModule()
    assert dm.prepare_data_per_node is True
    assert dm.allow_zero_length_dataloader_with_multiple_devices is False
    assert dm.trainer is None and dm.name is None
    assert dm.prepare_data() is None and dm.setup("fit") is None and dm.teardown("fit") is None
    assert dm.state_dict() == {}
    assert dm.load_state_dict({"x": 1}) is None
    assert dm.on_exception(RuntimeError("boom")) is None
    assert dm.hparams == {} and dm._log_hyperparams is False
    assert dm.CHECKPOINT_HYPER_PARAMS_KEY == "datamodule_hyper_parameters"


@pytest.mark.parametrize("hook", ["train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"])
def test_missing_dataloader_raises(hook: str) -> None:
    expected = rf"`{hook}` must be implemented to be used with the Lightning Trainer"
    with pytest.raises(MisconfigurationException, match=expected):
        getattr(LightningDataModule(), hook)()


def test_batch_transfer_hooks_defaults() -> None:
    dm = LightningDataModule()
    batch = {"x": torch.ones(2), "names": ["a", "b"]}
    assert dm.on_before_batch_transfer(batch, 0) is batch
    assert dm.on_after_batch_transfer(batch, 0) is batch
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["x"].device.type == "meta" and moved["names"] == ["a", "b"]


def test_subclass_with_hparams_and_state() -> None:
    class MyData(LightningDataModule):
        def __init__(self, data_dir: str = "./data", batch_size: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.epochs_seen = 0
            self.stages: list[str] = []

        def setup(self, stage: str) -> None:
            self.stages.append(stage)
            self.train = tensor_ds()

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train, batch_size=self.hparams.batch_size)

        def state_dict(self) -> dict:
            return {"epochs_seen": self.epochs_seen}

        def load_state_dict(self, state_dict: dict) -> None:
            self.epochs_seen = state_dict["epochs_seen"]

    dm = MyData(batch_size=2)
    assert dm.hparams == {"data_dir": "./data", "batch_size": 2} and isinstance(dm.hparams, AttributeDict)
    dm.setup("fit")
    assert dm.stages == ["fit"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 1) and y.tolist() == [0, 1]
    dm.epochs_seen = 3
    other = MyData()
    other.load_state_dict(dm.state_dict())
    assert other.epochs_seen == 3


# --- from_datasets ---------------------------------------------------------------------------------------------
def test_from_datasets_single() -> None:
    train, val = tensor_ds(8), tensor_ds(4)
    dm = LightningDataModule.from_datasets(train, val, batch_size=4)
    tl, vl = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(tl, DataLoader) and tl.dataset is train and tl.batch_size == 4
    assert isinstance(tl.sampler, RandomSampler)  # training shuffles
    assert isinstance(vl.sampler, SequentialSampler) and vl.dataset is val
    assert tl.num_workers == 0
    assert len(list(vl)) == 1
    # unspecified splits keep the informative default
    with pytest.raises(MisconfigurationException, match="`test_dataloader` must be implemented"):
        dm.test_dataloader()
    assert dm.train_dataloader() is not tl  # a fresh loader per call, as in Lightning


def test_from_datasets_lists_and_dicts() -> None:
    a, b, c = tensor_ds(2), tensor_ds(3), tensor_ds(4)
    dm = LightningDataModule.from_datasets(
        train_dataset={"a": a, "b": b}, val_dataset=[a, b], test_dataset=(c,), predict_dataset=[c], batch_size=2
    )
    train = dm.train_dataloader()
    assert set(train) == {"a", "b"} and train["b"].dataset is b
    assert all(isinstance(dl.sampler, RandomSampler) for dl in train.values())
    val = dm.val_dataloader()
    assert isinstance(val, list) and [dl.dataset for dl in val] == [a, b]
    assert all(isinstance(dl.sampler, SequentialSampler) for dl in val)
    test = dm.test_dataloader()
    assert isinstance(test, tuple) and test[0].dataset is c
    assert dm.predict_dataloader()[0].batch_size == 2


def test_from_datasets_iterable_dataset_is_not_shuffled() -> None:
    dm = LightningDataModule.from_datasets(train_dataset=Stream(), batch_size=2)
    loader = dm.train_dataloader()
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4]]


def test_from_datasets_forwards_init_arguments() -> None:
    class Sized(LightningDataModule):
        def __init__(self, batch_size: int, flag: bool = False) -> None:
            super().__init__()
            self.batch_size = batch_size
            self.flag = flag

    dm = Sized.from_datasets(tensor_ds(), batch_size=3, num_workers=0, flag=True)
    assert isinstance(dm, Sized) and dm.batch_size == 3 and dm.flag is True

    class TakesAll(LightningDataModule):
        def __init__(self, **kwargs: int) -> None:
            super().__init__()
            self.kwargs = kwargs

    assert TakesAll.from_datasets(batch_size=5).kwargs == {"batch_size": 5, "num_workers": 0}

    class TakesNone(LightningDataModule):
        def __init__(self) -> None:
            super().__init__()

    assert isinstance(TakesNone.from_datasets(tensor_ds(), batch_size=5), TakesNone)


# --- move_data_to_device ---------------------------------------------------------------------------------------
Pair = namedtuple("Pair", ["x", "y"])


@dataclass
class Batch:
    x: torch.Tensor
    meta: dict
    label: str = "a"
    cached: list = field(default_factory=list, init=False)


@dataclass(frozen=True)
class FrozenBatch:
    x: torch.Tensor


class Movable:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def to(self, device: torch.device) -> "Movable":
        return Movable(self.t.to(device))


class InPlaceMovable:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def to(self, device: torch.device) -> None:  # forgets to return self
        self.t = self.t.to(device)


def test_move_nested_collections_to_meta() -> None:
    t = torch.ones(2)
    batch = {
        "pair": Pair(t, [t, (t, "s")]),
        "ordered": OrderedDict(a=t),
        "default": defaultdict(list, {"k": t}),
        "n": 3,
        "none": None,
        "text": "hello",
    }
    out = move_data_to_device(batch, "meta")
    assert isinstance(out["pair"], Pair) and out["pair"].x.device.type == "meta"
    assert out["pair"].y[0].is_meta and out["pair"].y[1][0].is_meta and out["pair"].y[1][1] == "s"
    assert isinstance(out["pair"].y[1], tuple)
    assert type(out["ordered"]) is OrderedDict and out["ordered"]["a"].is_meta
    assert type(out["default"]) is defaultdict and out["default"].default_factory is list
    assert out["default"]["k"].is_meta
    assert out["n"] == 3 and out["none"] is None and out["text"] == "hello"
    assert batch["pair"].x.device.type == "cpu"  # input untouched


def test_move_dataclasses() -> None:
    b = Batch(torch.ones(1), {"m": torch.zeros(1)})
    b.cached.append(1)
    out = move_data_to_device(b, torch.device("meta"))
    assert isinstance(out, Batch) and out is not b
    assert out.x.is_meta and out.meta["m"].is_meta and out.label == "a" and out.cached == [1]
    assert b.x.device.type == "cpu"
    frozen = move_data_to_device(FrozenBatch(torch.ones(1)), "meta")
    assert isinstance(frozen, FrozenBatch) and frozen.x.is_meta


def test_move_objects_with_to() -> None:
    out = move_data_to_device([Movable(torch.ones(1)), InPlaceMovable(torch.ones(1))], "meta")
    assert out[0].t.is_meta
    assert isinstance(out[1], InPlaceMovable) and out[1].t.is_meta


def test_move_to_cpu_keeps_the_same_tensor_and_dtype() -> None:
    t = torch.ones(3, dtype=torch.float16)
    x, y = move_data_to_device((t, torch.arange(2)), "cpu")
    assert x is t and x.dtype == torch.float16 and y.dtype == torch.int64


def test_move_real_dataloader_batch() -> None:
    batch = next(iter(DataLoader(tensor_ds(4), batch_size=2)))
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, list) and all(t.is_meta for t in moved)
    assert moved[0].shape == (2, 1)
