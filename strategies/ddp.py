"""DDP on torch.distributed: one process per device (per CPU "device" on the CPU), gloo on CPU, nccl on CUDA.

The strategy owns the process layout (ranks from `strategies.environment`, processes from `strategies.launchers`),
the process group, the DistributedDataParallel wrap of the module for fit, the DistributedSampler of every map-style
dataloader, the collectives (reduce, all_gather, broadcast, barrier) and where checkpoints are written (rank 0).
What touches the loop (no_sync, agreeing on stop decisions) is the sync handler's (`strategies.sync`).
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler, SequentialSampler

from engine.datamodule import move_data_to_device
from engine.errors import MisconfigurationException
from strategies.environment import ClusterEnvironment, detect_environment
from strategies.launchers import (WORKER_FLAG, SpawnLauncher, SubprocessLauncher, limit_threads, start_preload,
                                  worker_guard)

__all__ = ["DDPStrategy", "DistributedSamplerWrapper", "UnrepeatedDistributedSampler", "StepForward",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = timedelta(minutes=30)  # torch's default process group timeout
_STEP_OF = {"train": "training_step", "sanity_check": "validation_step", "validate": "validation_step",
            "test": "test_step", "predict": "predict_step"}
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM", "avg": "SUM", "prod": "PRODUCT"}


class StepForward(nn.Module):
    """What DDP wraps: its forward runs the LightningModule's step of the running stage (training_step in the
    train stage, validation_step in validation, ...), so DDP's gradient hooks see the step's graph."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        stage = self.module.trainer.state.stage
        return getattr(self.module, _STEP_OF.get(stage, "training_step"))(*args, **kwargs)


class _Indices:
    """The indices a sampler gives in one epoch, as a sized 'dataset' a DistributedSampler can split."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.indices: list[int] = []

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class DistributedSamplerWrapper(DistributedSampler):
    """A custom sampler under DDP: each epoch draws the sampler's indices and gives this rank its share (padded to
    equal lengths, as DistributedSampler does); `set_epoch` reaches the inner sampler too."""

    def __init__(self, sampler: Sampler, **kwargs: Any) -> None:
        self.inner = sampler
        super().__init__(_Indices(sampler), **kwargs)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        drawn = list(self.inner)
        return (drawn[i] for i in super().__iter__())

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)


class UnrepeatedDistributedSampler(Sampler[int]):
    """Predict under DDP: rank r gets indices r, r+W, r+2W, ... of the inner sampler, never padded, so every sample
    is predicted exactly once (ranks may get one sample fewer)."""

    def __init__(self, sampler: Sampler, num_replicas: int, rank: int) -> None:
        self.inner, self.num_replicas, self.rank = sampler, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.rank::self.num_replicas])

    def __len__(self) -> int:
        n = len(self.inner)  # type: ignore[arg-type]
        return (n - self.rank + self.num_replicas - 1) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)


def _with_sampler(loader: DataLoader, sampler: Sampler) -> DataLoader:
    """The same DataLoader with another sampler (every other argument kept)."""
    kwargs: dict[str, Any] = dict(dataset=loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                                  num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                  pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
                                  worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                                  persistent_workers=loader.persistent_workers)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(**kwargs)


def _count_devices(devices: Any, accelerator: str) -> int:
    """How many processes per node `devices` asks for ('auto' on CPU: 1; -1: every CUDA device)."""
    if isinstance(devices, list):
        return len(devices)
    text = str(devices).strip()
    if text == "auto":
        return torch.cuda.device_count() if accelerator == "cuda" else 1
    if text == "-1":
        if accelerator != "cuda":
            raise MisconfigurationException(
                "Trainer(devices=-1) on the CPU: 'all devices' means all GPUs; pass a number of processes, e.g. "
                "devices=2")
        return torch.cuda.device_count()
    if "," in text:
        return len([p for p in text.split(",") if p.strip()])
    return int(text)


def _device_indices(devices: Any, count: int) -> list[int]:
    if isinstance(devices, list):
        return [int(i) for i in devices]
    text = str(devices).strip()
    if "," in text:
        return [int(p) for p in text.split(",") if p.strip()]
    return list(range(count))


def _destroy_process_group() -> None:
    """At exit: leave the process group (interpreter shutdown with a live one aborts the process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        # every rank leaves together: a rank tearing its gloo pairs down while a peer still uses them can abort
        # that peer (seen as an occasional SIGABRT at exit under torchrun); failures exit via os._exit, not here
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=30))
            else:
                dist.barrier()
        except Exception:  # noqa: BLE001 - a peer already gone: leave anyway
            pass
        dist.destroy_process_group()


class DDPStrategy:
    """DistributedDataParallel over `devices x num_nodes` processes.

    `start_method`: 'popen' (strategy='ddp': the script re-runs itself for the other local ranks) or 'spawn'
    (strategy='ddp_spawn': torch.multiprocessing workers, results back to this process); `timeout`: the process
    group timeout (a blocked collective fails after it); `find_unused_parameters`, `static_graph` and any other
    keyword go to `torch.nn.parallel.DistributedDataParallel`."""

    def __init__(self, *, accelerator: str | None = None, devices: Any = None, num_nodes: int | None = None,
                 cluster_environment: ClusterEnvironment | None = None, start_method: str = "popen",
                 find_unused_parameters: bool = False, static_graph: bool = False,
                 timeout: timedelta | float = DEFAULT_TIMEOUT, process_group_backend: str | None = None,
                 **ddp_kwargs: Any) -> None:
        if start_method not in ("popen", "spawn"):
            raise MisconfigurationException(
                f"DDPStrategy(start_method={start_method!r}): expected 'popen' (strategy='ddp') or 'spawn' "
                "(strategy='ddp_spawn')")
        self.start_method = start_method
        self.find_unused_parameters = find_unused_parameters
        self.static_graph = static_graph
        self.ddp_kwargs = ddp_kwargs
        self.timeout = timeout if isinstance(timeout, timedelta) else timedelta(seconds=float(timeout))
        self.process_group_backend = process_group_backend
        self.accelerator = accelerator
        self.devices = devices
        self.num_nodes = num_nodes
        self.cluster_environment = cluster_environment
        self.num_processes = 1
        self.device_indices: list[int] = [0]
        self.root_device = torch.device("cpu")
        self.launcher: SubprocessLauncher | None = None
        self.use_distributed_sampler = True
        self.sync_batchnorm = False  # Trainer(sync_batchnorm=True): BatchNorm layers become SyncBatchNorm (CUDA)
        self.configured = False
        if accelerator is not None or devices is not None or num_nodes is not None:
            self.configure(accelerator or "auto", devices if devices is not None else "auto", num_nodes or 1, None)

    # -- construction -----------------------------------------------------------------------------------------------
    def configure(self, accelerator: str, devices: Any, num_nodes: int, plugins: Any) -> "DDPStrategy":
        """Resolve the accelerator, the processes per node and the cluster environment (at Trainer construction,
        before any process or network work)."""
        name = (self.accelerator or accelerator or "auto").lower()
        if name == "gpu":
            name = "cuda"
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "mps":
            raise MisconfigurationException(
                "Trainer(accelerator='mps') with a DDP strategy: MPS runs one process on one device; use "
                "strategy='auto' with accelerator='mps', or accelerator='cpu' with devices=N for N processes")
        if name == "cuda" and not torch.cuda.is_available():
            raise MisconfigurationException(
                "a DDP strategy with accelerator='cuda': no CUDA device is available (torch.cuda.is_available() is "
                "False); use accelerator='cpu' with devices=N for N processes on the CPU")
        if name not in ("cpu", "cuda"):
            raise MisconfigurationException(
                f"a DDP strategy with accelerator={accelerator!r}: expected 'cpu', 'cuda', 'gpu' or 'auto'")
        devices = self.devices if self.devices is not None else devices
        num_nodes = self.num_nodes if self.num_nodes is not None else num_nodes
        count = _count_devices(devices, name)
        if name == "cuda":
            have = torch.cuda.device_count()
            indices = _device_indices(devices, count)
            if count > have or any(i >= have for i in indices):
                raise MisconfigurationException(
                    f"Trainer(devices={devices!r}): this machine has {have} CUDA device(s) (indices 0..{have - 1}); "
                    f"ask for at most devices={have}")
            self.device_indices = indices
        else:
            self.device_indices = list(range(count))
        self.accelerator, self.devices, self.num_nodes, self.num_processes = name, devices, num_nodes, count
        self.process_group_backend = self.process_group_backend or ("nccl" if name == "cuda" else "gloo")
        import torch.distributed as dist

        if not dist.is_available() or (self.process_group_backend == "gloo" and not dist.is_gloo_available()):
            raise MisconfigurationException(
                f"a DDP strategy needs torch.distributed with the {self.process_group_backend} backend, which this "
                "torch build lacks; use strategy='auto' (one process)")
        env = self.cluster_environment
        if env is None:
            env = detect_environment(plugins, count, num_nodes)
        else:
            env.validate_settings(count, num_nodes)
        self.cluster_environment = env
        if self.start_method == "spawn" and env.creates_processes_externally and WORKER_FLAG not in os.environ:
            raise MisconfigurationException(
                f"strategy='ddp_spawn' but the processes were started externally ({type(env).__name__}); use "
                "strategy='ddp' under torchrun, SLURM or a preset LOCAL_RANK")
        self.root_device = (torch.device("cuda", self.device_indices[self.local_rank]) if name == "cuda"
                            else torch.device("cpu"))
        self.configured = True
        if WORKER_FLAG in os.environ or env.creates_processes_externally:
            start_preload()  # a worker: import what DDP() imports lazily while the script runs on to fit()
        from engine.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]
        return self

    # -- ranks --------------------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        env = self.cluster_environment
        return env.world_size() if env is not None else self.num_processes * (self.num_nodes or 1)

    @property
    def global_rank(self) -> int:
        env = self.cluster_environment
        return env.global_rank() if env is not None else 0

    @property
    def local_rank(self) -> int:
        env = self.cluster_environment
        return env.local_rank() if env is not None else 0

    @property
    def node_rank(self) -> int:
        env = self.cluster_environment
        return env.node_rank() if env is not None else 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -- launching and the process group ----------------------------------------------------------------------------
    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a stage in every process: start the processes (spawn or re-run the script) if nobody else did, join
        the process group, run `fn(*args)`; a rank's failure ends the whole job."""
        env = self.cluster_environment
        assert env is not None, "DDPStrategy.configure runs at Trainer construction"
        if self.start_method == "spawn" and WORKER_FLAG not in os.environ:
            return SpawnLauncher(self.num_processes, self.timeout.total_seconds()).launch(self, fn, *args)
        if not env.creates_processes_externally:  # strategy='ddp', this process is local rank 0 of our launch
            if self.launcher is None:
                self.launcher = SubprocessLauncher(self.num_processes, self.num_nodes or 1,
                                                   self.timeout.total_seconds())
                store = self.launcher.start(self.node_rank)
                self.setup_process_group(store)
            return self.launcher.run(fn, *args)
        self.setup_process_group()
        if WORKER_FLAG in os.environ:
            return worker_guard(self.global_rank, fn, *args)
        return fn(*args)

    def setup_process_group(self, store: Any = None) -> None:
        """Join the process group once per process (later stages reuse it), with one intra-op thread on the CPU."""
        import torch.distributed as dist

        if self.accelerator == "cpu":
            limit_threads()
        else:
            torch.cuda.set_device(self.root_device)
        if dist.is_initialized():
            return
        kwargs: dict[str, Any] = dict(backend=self.process_group_backend, rank=self.global_rank,
                                      world_size=self.world_size, timeout=self.timeout)
        if store is None and os.environ.get(WORKER_FLAG) == "1":  # one of our workers: join the launcher's store
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                                  is_master=False, timeout=self.timeout)
        if store is not None:
            kwargs["store"] = store
        else:
            env = self.cluster_environment
            assert env is not None
            os.environ.setdefault("MASTER_ADDR", env.main_address)
            if "MASTER_PORT" not in os.environ and env.main_port:
                os.environ["MASTER_PORT"] = str(env.main_port)
            kwargs["init_method"] = "env://"
        dist.init_process_group(**kwargs)
        atexit.register(_destroy_process_group)  # before interpreter shutdown, which aborts with a live group

    # -- spawn: the worker side and the results the parent gets -----------------------------------------------------
    def set_spawned_rank(self, local_rank: int) -> None:
        """In a ddp_spawn worker: this process is `local_rank`; join the group through the launcher's store."""
        import torch.distributed as dist

        env = self.cluster_environment
        assert env is not None
        rank = self.node_rank * self.num_processes + local_rank
        env.set_ranks(rank, local_rank, self.world_size)
        if self.accelerator == "cuda":
            self.root_device = torch.device("cuda", self.device_indices[local_rank])
        from engine.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = rank  # type: ignore[attr-defined]
        from engine.log import configure

        configure(rank=rank)  # the framework's messages: rank zero only in the workers too
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                              is_master=False, timeout=self.timeout)
        self.setup_process_group(store)

    def results_for_parent(self, out: Any, args: tuple) -> dict[str, Any]:
        """On spawn rank 0 after the stage: what the parent gets (tensors and Python data only)."""
        run, model = args[0], args[2]
        checkpoints = [{"best_model_path": cb.best_model_path, "best_model_score": cb.best_model_score,
                        "last_model_path": getattr(cb, "last_model_path", ""),
                        "best_k_models": dict(getattr(cb, "best_k_models", {}))}
                       for cb in run.checkpoint_handlers()]
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {"out": out, "weights": weights, "metrics": run.metrics.state_dict(),
                "progress": run.progress.state_dict(), "status": run.status.status, "checkpoints": checkpoints}

    def apply_results_from_worker(self, data: dict[str, Any], args: tuple) -> Any:
        """In the parent after ddp_spawn: rank 0's final weights into the model, its metrics, progress and best
        checkpoint paths into this process's run; returns the stage's return value."""
        run, model = args[0], args[2]
        model.load_state_dict(data["weights"])
        model.trainer = run.trainer
        run.module = model
        run.metrics.load_state_dict(data["metrics"])
        run.progress.load_state_dict(data["progress"])
        run.status.status = data["status"]
        for cb, state in zip(run.checkpoint_handlers(), data["checkpoints"]):
            cb.best_model_path = state["best_model_path"]
            cb.best_model_score = state["best_model_score"]
            cb.best_k_models = state["best_k_models"]
            if hasattr(cb, "last_model_path"):
                cb.last_model_path = state["last_model_path"]
        return data["out"]

    # -- the module and the data ------------------------------------------------------------------------------------
    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move the module to this rank's device; for fit, wrap it in DistributedDataParallel (the loops call the
        wrapper, whose forward runs the stage's step)."""
        module = module.to(self.root_device)
        if self.sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        trainer = getattr(module, "trainer", None)
        if self.world_size == 1 or trainer is None or trainer.state.fn != "fit":
            return module
        if not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return DistributedDataParallel(StepForward(module), device_ids=ids,
                                       find_unused_parameters=self.find_unused_parameters,
                                       static_graph=self.static_graph, **self.ddp_kwargs)

    def stage_handler(self, run: Any) -> Any:
        """The sync handler of a distributed fit (no_sync during accumulation, control agreed across ranks)."""
        if self.world_size == 1 or run.status.fn != "fit":
            return None
        from strategies.sync import DDPSync

        return DDPSync(run)

    def process_dataloader(self, loader: Any, stage: str) -> Any:
        """A DistributedSampler for a map-style DataLoader (seeded from seed_everything's seed; shuffled for
        training, as the loader was otherwise); a custom sampler is wrapped; predict splits without padding."""
        if self.world_size == 1 or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            return loader
        sampler = loader.sampler
        if loader.batch_size is None or isinstance(sampler, (DistributedSampler, UnrepeatedDistributedSampler)):
            return loader  # a custom batch_sampler, or already distributed: the user splits the data
        if not self.use_distributed_sampler:
            return loader
        kwargs = self.distributed_sampler_kwargs
        if stage == "predict":
            return _with_sampler(loader, UnrepeatedDistributedSampler(sampler, **kwargs))
        # training data is always shuffled (Lightning), except under overfit_batches ('overfit': kept in order)
        shuffle = stage in ("fit", "train") or (stage != "overfit" and isinstance(sampler, RandomSampler))
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if isinstance(sampler, (RandomSampler, SequentialSampler)):
            new: Sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed, **kwargs)
        else:
            new = DistributedSamplerWrapper(sampler, shuffle=False, seed=seed, **kwargs)
        return _with_sampler(loader, new)

    def batch_to_device(self, batch: Any) -> Any:
        if self.root_device.type == "cpu":
            return batch if type(batch) in (tuple, list) and all(
                type(t) is Tensor and not t.is_cuda for t in batch) else move_data_to_device(batch, self.root_device)
        return move_data_to_device(batch, self.root_device)

    # -- collectives ------------------------------------------------------------------------------------------------
    def reduce(self, value: Any, reduce_op: str = "mean") -> Any:
        """all_reduce across ranks: 'mean' (sum / world_size), 'sum', 'max', 'min'; a number becomes a tensor."""
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return value
        op_name = str(reduce_op).lower() if not hasattr(reduce_op, "name") else str(reduce_op.name).lower()
        if op_name not in _OPS:
            raise MisconfigurationException(
                f"strategy.reduce(reduce_op={reduce_op!r}): expected one of 'mean', 'sum', 'max', 'min'")
        tensor = value if isinstance(value, Tensor) else torch.tensor(value, device=self.root_device)
        if tensor.device != self.root_device and self.process_group_backend == "nccl":
            tensor = tensor.to(self.root_device)
        dtype = tensor.dtype
        if op_name in ("mean", "avg") and not tensor.is_floating_point():
            tensor = tensor.double()
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, _OPS[op_name]))
        if op_name in ("mean", "avg"):
            return tensor / self.world_size  # an integer tensor's mean is a float
        return tensor.to(dtype)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Every rank's tensor stacked on a new first dimension (of size world_size); dicts, lists and tuples of
        tensors are gathered leaf by leaf; `sync_grads` keeps the gather differentiable."""
        import torch.distributed as dist

        if isinstance(data, dict):
            return {k: self.all_gather(v, group, sync_grads) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self.all_gather(v, group, sync_grads) for v in data)
        if self.world_size == 1 or not dist.is_initialized():
            return data
        tensor = data if isinstance(data, Tensor) else torch.tensor(data, device=self.root_device)
        tensor = tensor.contiguous()
        if sync_grads:
            from torch.distributed.nn.functional import all_gather

            return torch.stack(all_gather(tensor, group=group or dist.group.WORLD))
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, tensor, group=group)
        return torch.stack(out)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """`obj` of rank `src` on every rank (any picklable object)."""
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self, name: str | None = None) -> None:
        import torch.distributed as dist

        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()

    # -- checkpoints and teardown -----------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any) -> Any:
        """Rank 0 writes (atomically); every rank returns the path."""
        from pathlib import Path

        from engine import checkpoint as ckpt_format

        if self.is_global_zero:
            return ckpt_format.save(checkpoint, path)
        return Path(path)

    def teardown(self) -> None:
        """Nothing to undo per stage: the process group lives as long as the process (fit then test reuse it)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        return (f"DDPStrategy(start_method={self.start_method!r}, accelerator={self.accelerator!r}, "
                f"processes={self.num_processes}, num_nodes={self.num_nodes}, "
                f"environment={type(self.cluster_environment).__name__})")
