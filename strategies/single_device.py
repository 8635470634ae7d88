"""One process, one device: the default strategy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move the module to the root device (a no-op when it is already there)."""
        return module.to(self.root_device)

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

    def __repr__(self) -> str:
        return f"SingleDeviceStrategy(device={self.root_device})"
