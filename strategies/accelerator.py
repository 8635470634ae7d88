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


_DDP_NAMES = {"ddp": ("popen", False), "ddp_spawn": ("spawn", False),
              "ddp_find_unused_parameters_true": ("popen", True), "ddp_find_unused_parameters_false": ("popen", False),
              "ddp_spawn_find_unused_parameters_true": ("spawn", True),
              "ddp_spawn_find_unused_parameters_false": ("spawn", False)}


def _wants_processes(settings: Any) -> bool:
    """'auto' resolution: more than one device or more than one node means DDP (Lightning's `_choose_strategy`)."""
    from strategies.ddp import _count_devices

    devices = settings.devices
    if settings.num_nodes > 1:
        return True
    if devices == "auto" or devices == 1 or devices == "1":
        return False
    name = str(settings.accelerator).lower()
    kind = "cuda" if name in ("cuda", "gpu") or (name == "auto" and cuda_available()) else name
    if kind == "mps":
        return False
    return _count_devices(devices, kind) > 1


def select_strategy(settings: Any) -> Any:
    """The strategy for a run, from the Trainer's settings (Lightning's 'auto' resolution).

    An instance passed as `strategy=` is used as it is (a DDPStrategy learns devices/num_nodes/plugins from the
    Trainer); 'auto' picks DDP for more than one device or node, else a SingleDeviceStrategy on the resolved device;
    'ddp', 'ddp_spawn' and the find_unused_parameters variants build a DDPStrategy."""
    strategy = _select(settings)
    check = getattr(strategy, "check_precision", None)
    if check is not None:
        check(str(getattr(settings, "precision", "32-true")))
    if getattr(settings, "sync_batchnorm", False):
        device = getattr(strategy, "root_device", torch.device("cpu"))
        if device.type != "cuda":
            raise MisconfigurationException(
                f"Trainer(sync_batchnorm=True) on {device.type!r}: torch's SyncBatchNorm runs on CUDA devices only "
                "(its forward refuses CPU tensors); use accelerator='cuda', or sync_batchnorm=False on the CPU")
        if hasattr(strategy, "sync_batchnorm"):
            strategy.sync_batchnorm = True
    return strategy


def _select(settings: Any) -> Any:
    flag = getattr(settings, "strategy", "auto")
    if flag is not None and not isinstance(flag, str) and hasattr(flag, "setup_module"):
        configure = getattr(flag, "configure", None)
        if callable(configure) and not getattr(flag, "configured", True):
            configure(settings.accelerator, settings.devices, settings.num_nodes, getattr(settings, "plugins", None))
        if hasattr(flag, "use_distributed_sampler"):
            flag.use_distributed_sampler = settings.use_distributed_sampler
        return flag
    name = flag if isinstance(flag, str) else "auto"
    if name == "auto" and _wants_processes(settings):
        name = "ddp"
    if name in _DDP_NAMES:
        from strategies.ddp import DDPStrategy

        if str(settings.accelerator).lower() == "mps" or (str(settings.accelerator).lower() == "gpu"
                                                         and mps_available()):
            raise MisconfigurationException(
                f"Trainer(strategy={flag!r}, accelerator={settings.accelerator!r}): DDP does not run on MPS; use "
                "strategy='auto' for one MPS device, or accelerator='cpu' with devices=N for N processes")
        start, unused = _DDP_NAMES[name]
        strategy = DDPStrategy(start_method=start, find_unused_parameters=unused)
        strategy.configure(settings.accelerator, settings.devices, settings.num_nodes,
                           getattr(settings, "plugins", None))
        strategy.use_distributed_sampler = settings.use_distributed_sampler
        return strategy
    if name in ("fsdp", "fsdp_cpu_offload"):
        from strategies.fsdp import FSDPStrategy

        if str(settings.accelerator).lower() == "mps" or (str(settings.accelerator).lower() == "gpu"
                                                         and mps_available()):
            raise MisconfigurationException(
                f"Trainer(strategy={flag!r}, accelerator={settings.accelerator!r}): FSDP does not run on MPS; use "
                "accelerator='cuda', or accelerator='cpu' with devices=N for N processes")
        fsdp = FSDPStrategy(cpu_offload=name == "fsdp_cpu_offload")
        fsdp.configure(settings.accelerator, settings.devices, settings.num_nodes, getattr(settings, "plugins", None))
        fsdp.use_distributed_sampler = settings.use_distributed_sampler
        return fsdp
    from strategies.single_device import SingleDeviceStrategy

    return SingleDeviceStrategy(resolve_device(settings.accelerator, settings.devices))
