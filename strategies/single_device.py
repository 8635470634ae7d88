"""One process, one device: the default strategy.

A strategy sits in the loop path (DESIGN §4.1, §7): the module the loops call is the one `setup_module` returns,
every dataloader passes through `process_dataloader`, batches move with `batch_to_device`, the result collections
reduce with `reduce`, and `launch` runs the whole stage (here: in this process).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from engine.datamodule import move_data_to_device

__all__ = ["SingleDeviceStrategy"]


class SingleDeviceStrategy:
    """Owns the root device; collectives are identities, every rank check is rank zero."""

    world_size = 1
    global_rank = 0
    local_rank = 0
    node_rank = 0
    is_global_zero = True

    def __init__(self, device: torch.device) -> None:
        self.root_device = device
        # what `tensor.get_device()` returns for a tensor already on the root device (-1 on the CPU); None: unknown
        self._where = -1 if device.type == "cpu" else (device.index if device.type == "cuda" else None)

    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one stage: `fn(*args)` here, in this process (a multi-process strategy starts its workers first)."""
        return fn(*args)

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move the module to the root device and return the module the loops call (here the same object)."""
        return module.to(self.root_device)

    def process_dataloader(self, loader: Any, stage: str) -> Any:
        """A dataloader on its way into a loop (a distributed strategy injects its sampler here)."""
        return loader

    def batch_to_device(self, batch: Any) -> Any:
        """Move a batch to the root device; the usual (x, y) batch already there costs no call."""
        where = self._where
        if where is not None and type(batch) in (tuple, list):
            for item in batch:
                if type(item) is not Tensor or item.get_device() != where:
                    break
            else:
                return batch
        return move_data_to_device(batch, self.root_device)

    def reduce(self, value: Any, reduce_op: str = "mean") -> Any:
        return value

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return data

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        return None

    def teardown(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save for one process on one device."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        return f"SingleDeviceStrategy(device={self.root_device})"
