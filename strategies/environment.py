"""Where this process sits in a distributed job: rank and world detection from the environment.

Detection order (Lightning's): torchrun (TORCHELASTIC_RUN_ID), SLURM (SLURM_NTASKS, job name not 'bash'/'interactive'),
then the default `LightningEnvironment`, which launches the processes itself unless LOCAL_RANK is already set (a
preset launch, or a worker our own launcher started). A user's `ClusterEnvironment` subclass in `plugins=[...]` wins
over all of them. Nothing here touches the network: addresses are read, never contacted.
"""

from __future__ import annotations

import os
from typing import Any

from engine.errors import MisconfigurationException

__all__ = ["ClusterEnvironment", "LightningEnvironment", "TorchElasticEnvironment", "SLURMEnvironment",
           "detect_environment", "LOOPBACK"]

LOOPBACK = "127.0.0.1"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise MisconfigurationException(
            f"environment variable {name}={value!r}: expected an integer; unset it or set it to a number") from None


class ClusterEnvironment:
    """The ranks and rendezvous address of this process; subclass it and pass it in `Trainer(plugins=[...])` for a
    cluster statetrain does not detect.

    `creates_processes_externally`: True when something else started every process (the strategy then only joins
    the process group); False when the strategy's launcher must start the other local processes."""

    creates_processes_externally = True

    @staticmethod
    def detect() -> bool:
        """Whether the environment variables say this process runs under this kind of cluster."""
        return False

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", LOOPBACK)

    @property
    def main_port(self) -> int:
        return _env_int("MASTER_PORT", 0)

    def world_size(self) -> int:
        return _env_int("WORLD_SIZE", 1)

    def global_rank(self) -> int:
        return _env_int("RANK", 0)

    def local_rank(self) -> int:
        return _env_int("LOCAL_RANK", 0)

    def node_rank(self) -> int:
        return _env_int("NODE_RANK", _env_int("GROUP_RANK", 0))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise when the Trainer's devices/num_nodes contradict what the environment started."""
        world = self.world_size()
        if world != num_devices * num_nodes:
            raise MisconfigurationException(
                f"{type(self).__name__}: the environment runs {world} processes (WORLD_SIZE={world}) but "
                f"Trainer(devices={num_devices}, num_nodes={num_nodes}) asks for {num_devices * num_nodes}; make "
                "devices x num_nodes equal the number of processes launched")

    def set_ranks(self, global_rank: int, local_rank: int, world_size: int) -> None:
        """A spawning launcher tells the environment which worker this process is."""
        os.environ["RANK"], os.environ["LOCAL_RANK"] = str(global_rank), str(local_rank)
        os.environ["WORLD_SIZE"] = str(world_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(world_size={self.world_size()}, global_rank={self.global_rank()}, "
                f"local_rank={self.local_rank()}, node_rank={self.node_rank()})")


class LightningEnvironment(ClusterEnvironment):
    """The default: our launcher starts the local processes (the first process is local rank 0), unless LOCAL_RANK
    is already set, in which case every process was started by someone else (or is one of our workers)."""

    def __init__(self, num_devices: int = 1, num_nodes: int = 1) -> None:
        self.num_devices = num_devices
        self.num_nodes = num_nodes
        self.spawned_rank: tuple[int, int] | None = None  # (global, local) once a spawn worker set them

    @property
    def creates_processes_externally(self) -> bool:  # type: ignore[override]
        return "LOCAL_RANK" in os.environ

    def world_size(self) -> int:
        return self.num_devices * self.num_nodes

    def local_rank(self) -> int:
        if self.spawned_rank is not None:
            return self.spawned_rank[1]
        return _env_int("LOCAL_RANK", 0)

    def node_rank(self) -> int:
        return _env_int("NODE_RANK", _env_int("GROUP_RANK", 0))

    def global_rank(self) -> int:
        if self.spawned_rank is not None:
            return self.spawned_rank[0]
        if "RANK" in os.environ:
            return _env_int("RANK", 0)
        return self.node_rank() * self.num_devices + self.local_rank()

    def set_ranks(self, global_rank: int, local_rank: int, world_size: int) -> None:
        self.spawned_rank = (global_rank, local_rank)
        super().set_ranks(global_rank, local_rank, world_size)

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self.num_devices, self.num_nodes = num_devices, num_nodes
        local = _env_int("LOCAL_RANK", 0)
        if local >= num_devices:
            raise MisconfigurationException(
                f"LOCAL_RANK={local} but Trainer(devices={num_devices}) runs local ranks 0..{num_devices - 1}; "
                "set devices to the number of processes started on each node")
        if "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE", 1) != num_devices * num_nodes:
            super().validate_settings(num_devices, num_nodes)


class TorchElasticEnvironment(ClusterEnvironment):
    """torchrun / torch.distributed.run: every process is started by the elastic agent, which sets the ranks and
    the rendezvous address (GROUP_RANK is the node)."""

    @staticmethod
    def detect() -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ

    def node_rank(self) -> int:
        return _env_int("GROUP_RANK", _env_int("NODE_RANK", 0))


class SLURMEnvironment(ClusterEnvironment):
    """A SLURM job step (srun): ranks from SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID, the main address from
    MASTER_ADDR or the first host of SLURM_NODELIST, the port from MASTER_PORT or derived from the job id."""

    @staticmethod
    def detect() -> bool:
        return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in os.environ:
            return os.environ["MASTER_ADDR"]
        return _first_host(os.environ.get("SLURM_NODELIST", LOOPBACK))

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return _env_int("MASTER_PORT", 0)
        return 10000 + _env_int("SLURM_JOB_ID", 0) % 10000  # every task of the job computes the same port

    def world_size(self) -> int:
        return _env_int("SLURM_NTASKS", 1)

    def global_rank(self) -> int:
        return _env_int("SLURM_PROCID", 0)

    def local_rank(self) -> int:
        return _env_int("SLURM_LOCALID", 0)

    def node_rank(self) -> int:
        return _env_int("SLURM_NODEID", 0)

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        if per_node is not None and per_node.split("(")[0].isdigit() and int(per_node.split("(")[0]) != num_devices:
            raise MisconfigurationException(
                f"SLURM_NTASKS_PER_NODE={per_node} but Trainer(devices={num_devices}); set "
                f"devices={per_node.split('(')[0]} or srun --ntasks-per-node={num_devices}")
        nnodes = os.environ.get("SLURM_NNODES")
        if nnodes is not None and nnodes.isdigit() and int(nnodes) != num_nodes:
            raise MisconfigurationException(
                f"SLURM_NNODES={nnodes} but Trainer(num_nodes={num_nodes}); set num_nodes={nnodes} or "
                f"request {num_nodes} nodes from SLURM")
        super().validate_settings(num_devices, num_nodes)

    def set_ranks(self, global_rank: int, local_rank: int, world_size: int) -> None:
        raise MisconfigurationException("strategy='ddp_spawn' under SLURM: SLURM starts the processes itself; "
                                        "use strategy='ddp' with srun")


def _first_host(nodelist: str) -> str:
    """'node[003-005,7],gpu1' -> 'node003' (SLURM's compressed host list, first entry only)."""
    first = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    if "[" not in first:
        return first.strip()
    prefix, rest = first.split("[", 1)
    start = rest.split("]")[0].split(",")[0].split("-")[0]
    return prefix + start


def detect_environment(plugins: Any, num_devices: int, num_nodes: int) -> ClusterEnvironment:
    """The cluster environment of this process: a ClusterEnvironment in `plugins` first, then torchrun, SLURM, and
    the default launch-it-ourselves environment; validated against the Trainer's devices and num_nodes."""
    given = [p for p in (plugins if isinstance(plugins, (list, tuple)) else [plugins])
             if isinstance(p, ClusterEnvironment)]
    if len(given) > 1:
        raise MisconfigurationException(
            f"Trainer(plugins=...): {len(given)} ClusterEnvironment plugins were given "
            f"({', '.join(type(p).__name__ for p in given)}); pass one")
    if given:
        env = given[0]
    elif TorchElasticEnvironment.detect():
        env = TorchElasticEnvironment()
    elif SLURMEnvironment.detect():
        env = SLURMEnvironment()
    else:
        env = LightningEnvironment(num_devices, num_nodes)
    env.validate_settings(num_devices, num_nodes)
    return env
