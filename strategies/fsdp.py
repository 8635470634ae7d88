"""FSDP on torch.distributed's FSDP2 (`fully_shard` over a device mesh): every parameter, gradient and optimizer
state is sharded across the ranks, gathered only for the forward and backward of the module that owns it.

The processes, the process group, the samplers and the collectives are DDP's (`strategies.ddp`); what differs is the
module (sharded instead of replicated), how accumulation skips the gradient sync (`set_requires_gradient_sync`), and
the checkpoint seams the engine calls (`model_state_dict`, `optimizer_state_dict`, their loads, `load_checkpoint`,
`save_checkpoint`):

- `state_dict_type='full'`: rank 0 gathers the whole module and optimizer states (on the CPU) and writes the usual
  single-file checkpoint, which loads with `torch.load(weights_only=True)`, in one process, or into a sharded run;
- `state_dict_type='sharded'`: every rank writes its shards with torch.distributed.checkpoint into a directory
  (`engine.sharded_checkpoint`); `python -m engine checkpoint consolidate DIR OUT` makes a single file of it.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from engine.errors import MisconfigurationException, user_stacklevel
from strategies.ddp import DEFAULT_TIMEOUT, DDPStrategy, StepForward
from strategies.environment import ClusterEnvironment

__all__ = ["FSDPStrategy"]

_SHARDING = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}  # -> reshard_after_forward
_MIXED = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
          "16-true": torch.float16}
_TRUE = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


def _policy(auto_wrap_policy: Any) -> Callable[[nn.Module], bool]:
    """Which submodules get their own FSDP unit: a set/list of module classes, or a callable `(module) -> bool`."""
    if auto_wrap_policy is None:
        return lambda m: False
    if isinstance(auto_wrap_policy, type) and issubclass(auto_wrap_policy, nn.Module):
        auto_wrap_policy = {auto_wrap_policy}
    if isinstance(auto_wrap_policy, (set, frozenset, list, tuple)):
        classes = tuple(auto_wrap_policy)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, nn.Module))]
        if bad:
            raise MisconfigurationException(
                f"FSDPStrategy(auto_wrap_policy=...): {bad!r} are not nn.Module classes; pass a set of module "
                "classes (e.g. {nn.TransformerEncoderLayer}) or a callable (module) -> bool")
        return lambda m: isinstance(m, classes)
    if callable(auto_wrap_policy):
        return auto_wrap_policy
    raise MisconfigurationException(
        f"FSDPStrategy(auto_wrap_policy={auto_wrap_policy!r}): expected None, a set of nn.Module classes or a "
        "callable (module) -> bool")


class FSDPStrategy(DDPStrategy):
    """Fully sharded data parallel (FSDP2) over `devices x num_nodes` processes, launched as strategy='ddp' is.

    `auto_wrap_policy`: module classes (or a predicate) that become their own FSDP unit, sharded apart from the rest
    (the LightningModule's remaining parameters form the root unit); `mixed_precision`: a
    `torch.distributed.fsdp.MixedPrecisionPolicy`, by default derived from the Trainer's precision ('bf16-mixed':
    bf16 parameters and gradient reduction, as Lightning's FSDP; '32-true': none); `cpu_offload`: keep the shards on
    the CPU between uses (CUDA only); `sharding_strategy`: 'FULL_SHARD' (free the gathered parameters after each
    forward) or 'SHARD_GRAD_OP' (keep them until the backward); `state_dict_type`: 'full' or 'sharded' checkpoints.
    Other keywords go to `fully_shard`."""

    def __init__(self, *, accelerator: str | None = None, devices: Any = None, num_nodes: int | None = None,
                 cluster_environment: ClusterEnvironment | None = None, auto_wrap_policy: Any = None,
                 mixed_precision: Any = None, cpu_offload: bool = False, sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: str = "full", timeout: timedelta | float = DEFAULT_TIMEOUT,
                 process_group_backend: str | None = None, **fsdp_kwargs: Any) -> None:
        if state_dict_type not in ("full", "sharded"):
            raise MisconfigurationException(
                f"FSDPStrategy(state_dict_type={state_dict_type!r}): expected 'full' (one file, rank 0 gathers) or "
                "'sharded' (a directory of shards written by every rank)")
        if str(sharding_strategy).upper() not in _SHARDING:
            raise MisconfigurationException(
                f"FSDPStrategy(sharding_strategy={sharding_strategy!r}): expected 'FULL_SHARD' or 'SHARD_GRAD_OP' "
                "(HYBRID_SHARD and NO_SHARD are not available in statetrain; NO_SHARD is strategy='ddp')")
        if "start_method" in fsdp_kwargs:
            raise MisconfigurationException(
                "FSDPStrategy(start_method=...): FSDP runs in processes started like strategy='ddp' (the script "
                "re-runs itself, or torchrun/SLURM start it); ddp_spawn is not offered for FSDP")
        self.wrap_policy = _policy(auto_wrap_policy)
        self.auto_wrap_policy = auto_wrap_policy
        self.mixed_precision = mixed_precision
        self.cpu_offload = bool(cpu_offload)
        self.sharding_strategy = str(sharding_strategy).upper()
        self.state_dict_type = state_dict_type
        self.fsdp_kwargs = fsdp_kwargs
        self.shards_parameters = True  # handlers that copy the module's weights (weight averaging) refuse to run
        self.root: nn.Module | None = None  # the sharded StepForward the loops call (kept across stages)
        self.mesh: Any = None
        super().__init__(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                         cluster_environment=cluster_environment, start_method="popen", timeout=timeout,
                         process_group_backend=process_group_backend)

    def configure(self, accelerator: str, devices: Any, num_nodes: int, plugins: Any) -> "FSDPStrategy":
        super().configure(accelerator, devices, num_nodes, plugins)
        if self.cpu_offload and self.accelerator != "cuda":
            raise MisconfigurationException(
                f"FSDP with cpu_offload=True (strategy='fsdp_cpu_offload') on accelerator={self.accelerator!r}: "
                "offloading moves the shards from the GPU to the CPU, and here they already live on the CPU; use "
                "strategy='fsdp' (or accelerator='cuda')")
        import torch.distributed.fsdp as fsdp

        if not hasattr(fsdp, "fully_shard"):  # pragma: no cover - every torch this project supports has FSDP2
            raise MisconfigurationException(
                f"strategy='fsdp' needs torch.distributed.fsdp.fully_shard (FSDP2), which torch {torch.__version__} "
                "lacks; upgrade torch or use strategy='ddp'")
        return self

    def check_precision(self, precision: str) -> None:
        """At Trainer construction: '16-mixed' on CUDA needs loss scaling that agrees across shards (an inf found
        on one rank must skip the step on all), which statetrain's GradScaler handler does not do under FSDP."""
        if precision in ("16-mixed", "16") and self.accelerator == "cuda":
            raise MisconfigurationException(
                "Trainer(strategy='fsdp', precision='16-mixed'): fp16 loss scaling across FSDP shards is not "
                "available in statetrain; use precision='bf16-mixed' (no loss scaling needed) or '32-true'")

    # -- the module -------------------------------------------------------------------------------------------------
    def _mp_policy(self, precision: str) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.mixed_precision is not None:
            return self.mixed_precision
        dtype = _MIXED.get(precision)
        if dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Shard the module (the policy's submodules bottom-up, then a root unit over what is left) on a 1-D device
        mesh of all ranks; the loops call the root, whose forward runs the stage's step. Sharded once per module:
        later stages (validate/test after fit) reuse it."""
        if self.root is not None and getattr(self.root, "module", None) is module:
            return self.root
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

        trainer = getattr(module, "trainer", None)
        precision = str(getattr(trainer, "precision", "32-true"))
        module = module.to(self.root_device)
        if precision in _TRUE:  # parameters of that dtype before sharding (the precision handler finds them so)
            module = module.to(_TRUE[precision])
        if self.sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if self.mesh is None:
            self.mesh = init_device_mesh(self.root_device.type, (self.world_size,))
        kwargs: dict[str, Any] = dict(mesh=self.mesh, reshard_after_forward=_SHARDING[self.sharding_strategy],
                                      mp_policy=self._mp_policy(precision),
                                      offload_policy=CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
                                      **self.fsdp_kwargs)
        for sub in reversed(list(module.modules())):  # children before their parents
            if sub is not module and not isinstance(sub, FSDPModule) and self.wrap_policy(sub):
                fully_shard(sub, **kwargs)
        root = StepForward(module)
        fully_shard(root, **kwargs)
        self.root = root
        return root

    @contextmanager
    def no_sync(self, model: Any) -> Iterator[None]:
        """A micro-batch that does not end the accumulation window: gradients stay unsharded and local, reduced
        once with the window's last micro-batch (the sync handler enters this)."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    # -- checkpoint seams (called on every rank: the gathers are collectives) ---------------------------------------
    def _options(self, full: bool) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True) if full else StateDictOptions()

    @staticmethod
    def _failing() -> BaseException | None:
        """The exception being handled, when only this rank may have it (not an agreed SIGTERM stop): a gather or a
        sharded write now would wait forever for ranks that are elsewhere."""
        from engine.loops.context import SignalStop

        exc = sys.exc_info()[1]
        return None if exc is None or isinstance(exc, SignalStop) else exc

    def model_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """'full': the whole module on rank 0 (CPU tensors; `{}` on the other ranks); 'sharded': this rank's shards."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        if self._failing() is not None:
            return {}  # not written (save_checkpoint says why); no collective
        return get_model_state_dict(module, options=self._options(self.state_dict_type == "full"))

    def _names(self, optimizer: Any) -> list[str]:
        module = self.root.module if self.root is not None else None
        names = {id(p): n for n, p in module.named_parameters()} if module is not None else {}
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def optimizer_state_dict(self, optimizer: Any) -> dict[str, Any]:
        """'full': the gathered states in torch's index layout on rank 0 (what one process would save); 'sharded':
        this rank's shards keyed by parameter names. An optimizer that has not stepped yet saves its param groups."""
        from engine.sharded_checkpoint import optimizer_state_to_ids
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer: the torch optimizer inside
        if self._failing() is not None:
            return {}
        if not optimizer.state or self.root is None:
            return optimizer.state_dict()  # nothing sharded yet (torch's getter would take a zero step to make it)
        full = self.state_dict_type == "full"
        state = get_optimizer_state_dict(self.root.module, optimizer, options=self._options(full))
        if full:
            return optimizer_state_to_ids(state) if self.is_global_zero else {}
        return state

    def load_model_state_dict(self, module: nn.Module, ckpt: dict[str, Any]) -> Any:
        """The checkpoint's weights into the sharded module: from a full state dict (every rank reads the file and
        keeps its shards) or from a sharded directory (each rank reads its shards)."""
        from engine.sharded_checkpoint import SHARDED_KEY
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             set_model_state_dict)

        if SHARDED_KEY in ckpt:
            import torch.distributed.checkpoint as dcp

            template = get_model_state_dict(module)
            dcp.load({"state_dict": template}, checkpoint_id=ckpt[SHARDED_KEY])
            return set_model_state_dict(module, template, options=StateDictOptions(strict=False))
        # set_model_state_dict turns the values it is given into shards: give it a copy of the dict
        return set_model_state_dict(module, dict(ckpt["state_dict"]),
                                    options=StateDictOptions(full_state_dict=True, strict=False))

    def load_optimizer_state_dict(self, optimizer: Any, state: dict[str, Any], ckpt: dict[str, Any],
                                  index: int) -> None:
        """Optimizer `index`'s state from the checkpoint: torch's layout (a full or single-process checkpoint) or
        this rank's shards from a sharded directory."""
        from engine.sharded_checkpoint import SHARDED_KEY, optimizer_state_to_names
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_optimizer_state_dict)

        optimizer = getattr(optimizer, "optimizer", optimizer)
        module = self.root.module if self.root is not None else None
        if set(state) == {"sharded"} and SHARDED_KEY in ckpt:
            import torch.distributed.checkpoint as dcp

            template = get_optimizer_state_dict(module, optimizer)  # allocates the state (a zero-lr step)
            dcp.load({state["sharded"]: template}, checkpoint_id=ckpt[SHARDED_KEY])
            set_optimizer_state_dict(module, optimizer, template)
        elif not state.get("state") or module is None:
            optimizer.load_state_dict(state)  # param groups only (saved before the first step)
        else:
            named = optimizer_state_to_names(state, self._names(optimizer))
            set_optimizer_state_dict(module, optimizer, named, options=StateDictOptions(full_state_dict=True))

    def load_checkpoint(self, path: Any, weights_only: bool = True) -> dict[str, Any]:
        """A sharded directory: its meta data only (the shards load into the sharded tensors later); a file: as
        `engine.checkpoint.load`."""
        from engine import checkpoint, sharded_checkpoint

        if sharded_checkpoint.is_sharded(path):
            return sharded_checkpoint.load_meta(path)
        return checkpoint.load(path, weights_only=weights_only)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any) -> Any:
        """'full': rank 0 writes the file; 'sharded': every rank writes its shards into the directory `path`.
        While this rank handles an exception of its own (e.g. OnExceptionCheckpoint), nothing is written: the
        other ranks cannot join the gather."""
        failing = self._failing()
        if failing is not None:
            warnings.warn(f"FSDP: checkpoint {path} not written: rank {self.global_rank} is handling "
                          f"{type(failing).__name__}, and gathering the shards needs every rank", UserWarning,
                          stacklevel=user_stacklevel())
            return Path(path)
        grads = checkpoint.get("engine", {}).pop("grads", None)
        if grads:
            warnings.warn("FSDP: a checkpoint written inside an accumulation window does not hold the gradients "
                          "summed so far (they are sharded); the window resumed from it steps with the gradients of "
                          "its remaining micro-batches only", UserWarning, stacklevel=user_stacklevel())
        if self.state_dict_type == "full":
            return super().save_checkpoint(checkpoint, path)
        from engine import sharded_checkpoint

        return sharded_checkpoint.save(checkpoint, path, self.is_global_zero, self.barrier)

    def __repr__(self) -> str:
        return (f"FSDPStrategy(accelerator={self.accelerator!r}, processes={self.num_processes}, "
                f"num_nodes={self.num_nodes}, sharding_strategy={self.sharding_strategy!r}, "
                f"state_dict_type={self.state_dict_type!r}, environment={type(self.cluster_environment).__name__})")
