"""Accelerator resolution: turn Trainer(accelerator=...) into a torch.device that exists on this machine."""

from __future__ import annotations

import torch

from engine.errors import MisconfigurationException

__all__ = ["resolve_device", "cuda_available", "mps_available"]

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
