"""Accelerator and strategy resolution: Trainer(accelerator=..., devices=..., strategy=...) into a torch.device
that exists on this machine and the strategy that runs on it."""

from __future__ import annotations

from typing import Any

import torch

from engine.errors import MisconfigurationException

__all__ = ["resolve_device", "select_strategy", "cuda_available", "mps_available"]

_KNOWN = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(accelerator: object, devices: object = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu (Lightning's order without TPUs); 'gpu' -> mps if available, else cuda."""
    if not isinstance(accelerator, str):
        raise NotImplementedError(
            f"Trainer(accelerator={accelerator!r}): Accelerator objects are not supported yet; "
            f"pass one of {', '.join(_KNOWN)}")
    name = accelerator.lower()
    index = 0
    if isinstance(devices, (list, tuple)) and devices:
        index = int(devices[0])
    elif isinstance(devices, str) and devices.strip().rstrip(",").isdigit() and "," in devices:
        index = int(devices.strip().rstrip(","))
    if name == "auto":
        if cuda_available():
            return torch.device("cuda", index)
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "gpu":
        if mps_available():
            return torch.device("mps")
        name = "cuda"
    if name == "cuda":
        if not cuda_available():
            raise MisconfigurationException(
                f"Trainer(accelerator={accelerator!r}): no CUDA device is available on this machine "
                "(torch.cuda.is_available() is False); use accelerator='cpu' or 'auto'")
        return torch.device("cuda", index)
    if name == "mps":
        if not mps_available():
            raise MisconfigurationException(
                f"Trainer(accelerator={accelerator!r}): MPS is not available on this machine; use 'cpu' or 'auto'")
        return torch.device("mps")
    if name == "tpu":
        raise MisconfigurationException("Trainer(accelerator='tpu'): TPUs are not supported by statetrain")
    raise MisconfigurationException(
        f"Trainer(accelerator={accelerator!r}): unknown accelerator; expected one of {', '.join(_KNOWN)}")


def select_strategy(settings: Any) -> Any:
    """The strategy for a run, from the Trainer's settings (Lightning's 'auto' resolution on one process).

    An instance passed as `strategy=` is used as it is; 'auto' and 'single_device' give a SingleDeviceStrategy on the
    resolved device. Multi-process strategies come with the strategies issue and are refused by the config today."""
    flag = getattr(settings, "strategy", "auto")
    if flag is not None and not isinstance(flag, str) and hasattr(flag, "setup_module"):
        return flag
    from strategies.single_device import SingleDeviceStrategy

    return SingleDeviceStrategy(resolve_device(settings.accelerator, settings.devices))
