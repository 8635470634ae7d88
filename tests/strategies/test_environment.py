"""Rank detection, strategy resolution and the errors of impossible combinations (no process is started here)."""

from __future__ import annotations

import pickle

import pytest
import torch

import engine as pl
from engine.errors import MisconfigurationException
from strategies.ddp import DDPStrategy, DistributedSamplerWrapper, UnrepeatedDistributedSampler
from strategies.environment import (ClusterEnvironment, LightningEnvironment, SLURMEnvironment,
                                    TorchElasticEnvironment, detect_environment)
from strategies.launchers import _dumps
from strategies.single_device import SingleDeviceStrategy

_VARS = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
         "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_NODELIST", "SLURM_JOB_ID", "LOCAL_RANK", "RANK",
         "WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "STATETRAIN_WORKER")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    from engine.utilities.rank_zero import rank_zero_only

    rank_zero_only.rank = 0


def test_default_environment_launches_itself(clean_env) -> None:
    env = detect_environment(None, 2, 1)
    assert isinstance(env, LightningEnvironment) and not env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 0, 0, 0)


def test_preset_local_rank_means_external_launch(clean_env) -> None:
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("NODE_RANK", "1")
    env = detect_environment(None, 2, 2)
    assert env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    with pytest.raises(MisconfigurationException, match=r"LOCAL_RANK=1 but Trainer\(devices=1\)"):
        detect_environment(None, 1, 1)


def test_torchrun_wins_over_slurm(clean_env) -> None:
    clean_env.setenv("TORCHELASTIC_RUN_ID", "abc")
    clean_env.setenv("SLURM_NTASKS", "2")
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    clean_env.setenv("LOCAL_RANK", "0")
    clean_env.setenv("GROUP_RANK", "1")
    env = detect_environment(None, 1, 2)
    assert isinstance(env, TorchElasticEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 1, 0, 1)
    with pytest.raises(MisconfigurationException, match=r"WORLD_SIZE=2.*devices=2, num_nodes=2"):
        detect_environment(None, 2, 2)


def test_slurm_ranks_and_validation(clean_env) -> None:
    for k, v in dict(SLURM_NTASKS="4", SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_NODEID="1",
                     SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="2", SLURM_NODELIST="node[007-008]",
                     SLURM_JOB_ID="1234").items():
        clean_env.setenv(k, v)
    env = detect_environment(None, 2, 2)
    assert isinstance(env, SLURMEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert env.main_address == "node007" and env.main_port == 11234
    with pytest.raises(MisconfigurationException, match=r"SLURM_NTASKS_PER_NODE=2 but Trainer\(devices=4\)"):
        detect_environment(None, 4, 1)
    with pytest.raises(MisconfigurationException, match=r"SLURM_NNODES=2 but Trainer\(num_nodes=1\)"):
        detect_environment(None, 2, 1)
    clean_env.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation is not a job step
    assert isinstance(detect_environment(None, 2, 2), LightningEnvironment)


class FixedCluster(ClusterEnvironment):
    def world_size(self) -> int:
        return 2

    def global_rank(self) -> int:
        return 1


def test_a_cluster_environment_plugin_wins(clean_env) -> None:
    clean_env.setenv("TORCHELASTIC_RUN_ID", "abc")
    env = detect_environment([FixedCluster()], 2, 1)
    assert isinstance(env, FixedCluster)
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, plugins=[FixedCluster()], logger=False)
    assert (trainer.world_size, trainer.global_rank, trainer.is_global_zero) == (2, 1, False)
    with pytest.raises(MisconfigurationException, match="2 ClusterEnvironment plugins"):
        detect_environment([FixedCluster(), FixedCluster()], 2, 1)


def test_strategy_resolution(clean_env) -> None:
    auto = pl.Trainer(accelerator="cpu", devices=2, logger=False)
    assert isinstance(auto.strategy, DDPStrategy) and auto.strategy.start_method == "popen"
    assert (auto.world_size, auto.global_rank, auto.local_rank, auto.is_global_zero) == (2, 0, 0, True)
    assert isinstance(pl.Trainer(accelerator="cpu", logger=False).strategy, SingleDeviceStrategy)
    spawn = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=3, logger=False).strategy
    assert spawn.start_method == "spawn" and spawn.world_size == 3
    unused = pl.Trainer(strategy="ddp_find_unused_parameters_true", accelerator="cpu", devices=2, logger=False)
    assert unused.strategy.find_unused_parameters is True
    custom = DDPStrategy(static_graph=True, timeout=5)
    trainer = pl.Trainer(strategy=custom, accelerator="cpu", devices=2, logger=False)
    assert trainer.strategy is custom and custom.world_size == 2 and custom.timeout.total_seconds() == 5


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"strategy": "ddp", "accelerator": "mps"}, "DDP does not run on MPS"),
    ({"strategy": "ddp", "accelerator": "cuda", "devices": 2}, "no CUDA device is available"),
    ({"strategy": "ddp", "accelerator": "cpu", "devices": -1}, r"devices=-1\) on the CPU"),
    ({"strategy": "ddp", "accelerator": "cpu", "num_nodes": 2}, None),
])
def test_impossible_combinations_fail_at_construction(clean_env, kwargs, match) -> None:
    if match is None:  # num_nodes=2 without torchrun: refused when the launch would start, with the torchrun line
        trainer = pl.Trainer(logger=False, **kwargs)
        assert trainer.world_size == 2
        from strategies.launchers import SubprocessLauncher

        with pytest.raises(MisconfigurationException, match="start one process per node with torchrun"):
            SubprocessLauncher(1, 2, 5).start(0)
        return
    if torch.cuda.is_available() and "cuda" in str(kwargs.get("accelerator")):
        pytest.skip("a CUDA device exists here")
    with pytest.raises(MisconfigurationException, match=match):
        pl.Trainer(logger=False, **kwargs)


def test_zero_devices_is_refused(clean_env) -> None:
    with pytest.raises(Exception, match="zero devices is not valid"):
        pl.Trainer(devices=0)


def test_unrepeated_sampler_predicts_each_sample_once() -> None:
    base = torch.utils.data.SequentialSampler(range(7))
    parts = [list(UnrepeatedDistributedSampler(base, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(7))
    assert [len(UnrepeatedDistributedSampler(base, 2, r)) for r in range(2)] == [4, 3]


def test_custom_sampler_is_wrapped_and_split() -> None:
    class EvenFirst(torch.utils.data.Sampler):
        def __iter__(self):
            return iter([0, 2, 4, 6, 1, 3, 5, 7])

        def __len__(self) -> int:
            return 8

    parts = [list(DistributedSamplerWrapper(EvenFirst(), num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert parts == [[0, 4, 1, 5], [2, 6, 3, 7]]


def test_spawn_payload_pickles_closures() -> None:
    factor = 3

    def scale(x: int) -> int:
        return x * factor

    again = pickle.loads(_dumps(scale))
    assert again(2) == 6
