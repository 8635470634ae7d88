"""`LightningDataModule` (data hooks in one reusable object) and `move_data_to_device` (the default batch transfer).

Surface and defaults follow Lightning 2.x `core/datamodule.py` and `core/hooks.py::DataHooks`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from engine.errors import MisconfigurationException
from engine.hparams import HyperparametersMixin

__all__ = ["LightningDataModule", "move_data_to_device"]

_BLOCKING_DEVICE_TYPES = ("cpu", "mps")  # non_blocking copies to these are unsafe or useless


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Return `batch` with every tensor (or object with a `.to(device)` method) moved to `device`.

    Recurses into dicts/mappings, lists, tuples, namedtuples and dataclass instances, rebuilding each container
    (inputs are not mutated); other objects pass through. Tensor copies are non-blocking except to CPU/MPS.
    """
    device = torch.device(device) if isinstance(device, (str, int)) else device
    non_blocking = isinstance(device, torch.device) and device.type not in _BLOCKING_DEVICE_TYPES
    return _move(batch, device, non_blocking)


def _move(data: Any, device: Any, non_blocking: bool) -> Any:
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking) if non_blocking else data.to(device)
    if isinstance(data, (str, bytes)) or data is None:
        return data
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        moved = copy.copy(data)
        for field in dataclasses.fields(data):
            if field.init:
                # object.__setattr__ also works for frozen dataclasses
                object.__setattr__(moved, field.name, _move(getattr(data, field.name), device, non_blocking))
        return moved
    if isinstance(data, Mapping):
        items = [(k, _move(v, device, non_blocking)) for k, v in data.items()]
        if isinstance(data, defaultdict):
            return type(data)(data.default_factory, items)
        if type(data) in (dict, OrderedDict):
            return type(data)(items)
        try:
            return type(data)(OrderedDict(items))
        except TypeError:
            return dict(items)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_move(v, device, non_blocking) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_move(v, device, non_blocking) for v in data)
    if isinstance(data, Sequence):
        try:
            return type(data)([_move(v, device, non_blocking) for v in data])
        except TypeError:
            return data
    to = getattr(data, "to", None)
    if callable(to) and not isinstance(data, type):
        moved = to(device)
        return data if moved is None else moved  # a `.to` that works in place and forgets to return self
    return data


class LightningDataModule(HyperparametersMixin):
    """Groups a project's data hooks (prepare, setup, the four dataloaders, batch transfer) in one object.

    Example:
        >>> class MNISTData(LightningDataModule):
        ...     def setup(self, stage):
        ...         self.train = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        ...     def train_dataloader(self):
        ...         return DataLoader(self.train, batch_size=16)
    """

    name: str | None = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        # True: prepare_data runs on local rank 0 of every node; False: only on global rank 0
        self.prepare_data_per_node: bool = True
        self.allow_zero_length_dataloader_with_multiple_devices: bool = False
        self.trainer: Any = None

    # --- data preparation -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download / write data once per node (or once in total); do not set state here, use `setup`."""

    def setup(self, stage: str) -> None:
        """Build datasets on every process; `stage` is 'fit', 'validate', 'test' or 'predict'."""

    def teardown(self, stage: str) -> None:
        """Release what `setup` built; `stage` as in `setup`."""

    # --- dataloaders ------------------------------------------------------------------------------------------
    def train_dataloader(self) -> Any:
        """Return the training dataloader (or a collection of them)."""
        raise MisconfigurationException("`train_dataloader` must be implemented to be used with the Lightning Trainer")

    def val_dataloader(self) -> Any:
        """Return the validation dataloader(s)."""
        raise MisconfigurationException("`val_dataloader` must be implemented to be used with the Lightning Trainer")

    def test_dataloader(self) -> Any:
        """Return the test dataloader(s)."""
        raise MisconfigurationException("`test_dataloader` must be implemented to be used with the Lightning Trainer")

    def predict_dataloader(self) -> Any:
        """Return the prediction dataloader(s)."""
        raise MisconfigurationException(
            "`predict_dataloader` must be implemented to be used with the Lightning Trainer"
        )

    # --- batch transfer ---------------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move `batch` to `device`; override for custom batch types."""
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Alter the batch before it is moved to the device (runs on the host)."""
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Alter the batch after it is moved to the device (e.g. GPU augmentations)."""
        return batch

    # --- state ------------------------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             weights_only: bool | None = None, **kwargs: Any) -> Any:
        """A new datamodule built from the checkpoint's datamodule hyperparameters (`kwargs` override them), with
        its saved `state_dict()` restored."""
        if hparams_file is not None:
            raise NotImplementedError("load_from_checkpoint(hparams_file=...): not supported; pass the "
                                      "hyperparameters as keyword arguments instead")
        from engine.checkpoint import load_datamodule

        return load_datamodule(cls, checkpoint_path, map_location=map_location,
                               weights_only=True if weights_only is None else weights_only, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints under the class's `__qualname__` (only when non-empty)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def on_exception(self, exception: BaseException) -> None:
        """Called when a trainer run is interrupted by an exception."""

    def __str__(self) -> str:
        """One line per dataloader hook, as Lightning prints it: `{Train dataloader: size=64}` (the dataset's length,
        `NA` when it has none, `None` when the hook gives no dataloader; several loaders are numbered)."""
        lines = []
        for title, hook in (("Train dataloader", "train_dataloader"), ("Validation dataloader", "val_dataloader"),
                            ("Test dataloader", "test_dataloader"), ("Predict dataloader", "predict_dataloader")):
            try:
                described = _describe_loaders(getattr(self, hook)())
            except Exception:  # the hook is not implemented, or fails before setup(): nothing to describe
                described = "None"
            lines.append(f"{{{title}: {described}}}")
        return os.linesep.join(lines)

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset | Sequence[Dataset] | Mapping[str, Dataset] | None = None,
        val_dataset: Dataset | Sequence[Dataset] | Mapping[str, Dataset] | None = None,
        test_dataset: Dataset | Sequence[Dataset] | Mapping[str, Dataset] | None = None,
        predict_dataset: Dataset | Sequence[Dataset] | Mapping[str, Dataset] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> LightningDataModule:
        """Build a datamodule whose dataloaders wrap the given datasets (one, a list, or a dict of them).

        Only training loaders shuffle, and never for an `IterableDataset`. `batch_size` / `num_workers` are also
        passed to `cls.__init__` when it accepts them (or `**kwargs`); `datamodule_kwargs` always are.
        """

        def loaders(datasets: Any, shuffle: bool) -> Any:
            return _map_datasets(datasets, lambda ds: _make_loader(ds, batch_size, num_workers, shuffle))

        params = inspect.signature(cls.__init__).parameters
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        special = {"batch_size": batch_size, "num_workers": num_workers}
        if not takes_var_kw:
            special = {k: v for k, v in special.items() if k in params}
        datamodule = cls(**datamodule_kwargs, **special)

        if train_dataset is not None:
            datamodule.train_dataloader = lambda: loaders(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            datamodule.val_dataloader = lambda: loaders(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            datamodule.test_dataloader = lambda: loaders(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            datamodule.predict_dataloader = lambda: loaders(predict_dataset, False)  # type: ignore[method-assign]
        return datamodule


def _make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool) -> DataLoader:
    shuffle = shuffle and not isinstance(dataset, IterableDataset)
    # Lightning always pins; pinning without CUDA only earns a warning from torch
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def _map_datasets(data: Any, fn: Callable[[Dataset], DataLoader]) -> Any:
    """Apply `fn` to every Dataset in a (nested) list/tuple/dict, keeping the structure."""
    if isinstance(data, Dataset):
        return fn(data)
    if isinstance(data, Mapping):
        return {k: _map_datasets(v, fn) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_map_datasets(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_map_datasets(v, fn) for v in data)
    return data


def _describe_loaders(loaders: Any) -> str:
    """`size=N` for one DataLoader, `1. size=N ; 2. size=M` for a collection of them (`None` for a non-loader)."""
    def size(loader: Any) -> str:
        if not isinstance(loader, DataLoader):
            return "None"
        dataset = loader.dataset
        return f"size={len(dataset) if isinstance(dataset, Sized) else 'NA'}"

    if isinstance(loaders, DataLoader):
        return size(loaders)
    items = list(loaders.values()) if isinstance(loaders, Mapping) else loaders
    if not isinstance(items, (list, tuple)):
        return "None"
    return " ; ".join(f"{i}. {size(dl)}" if isinstance(dl, DataLoader) else "None"
                      for i, dl in enumerate(items, start=1))
