"""FSDP and sync_batchnorm flags, resolved at Trainer construction (no process started), and the sharded checkpoint
format in one process (torch.distributed.checkpoint needs no process group to write or read a directory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine import sharded_checkpoint
from engine.errors import CheckpointError, MisconfigurationException
from strategies.fsdp import FSDPStrategy
from strategies.single_device import SingleDeviceStrategy

ROOT = Path(__file__).resolve().parents[2]


def test_strategy_fsdp_builds_an_fsdp_strategy_without_starting_processes():
    trainer = pl.Trainer(strategy="fsdp", accelerator="cpu", devices=2, logger=False)
    assert isinstance(trainer.strategy, FSDPStrategy)
    assert (trainer.world_size, trainer.strategy.state_dict_type) == (2, "full")
    assert trainer.strategy.root is None  # nothing sharded (nor launched) before fit
    assert (trainer.num_devices, trainer.device_ids) == (2, [0, 1])  # Lightning's count of this node's processes


def test_num_devices_counts_the_processes_of_a_node():
    assert pl.Trainer(strategy="ddp", accelerator="cpu", devices=3, logger=False).num_devices == 3
    assert pl.Trainer(accelerator="cpu", logger=False).device_ids == [0]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(strategy="fsdp_cpu_offload", accelerator="cpu", devices=2), r"cpu_offload=True.*already live on the CPU"),
    (dict(strategy="fsdp", accelerator="cpu", devices=2, sync_batchnorm=True), r"sync_batchnorm=True.*CUDA"),
    (dict(strategy="ddp", accelerator="cpu", devices=2, sync_batchnorm=True), r"sync_batchnorm=True.*CUDA"),
    (dict(accelerator="cpu", sync_batchnorm=True), r"SyncBatchNorm runs on CUDA devices only"),
    (dict(strategy="fsdp", accelerator="cpu", devices=0), r"devices"),
])  # fmt: skip
def test_impossible_fsdp_and_sync_batchnorm_combinations_fail_at_construction(kwargs, match):
    with pytest.raises((MisconfigurationException, ValueError), match=match):
        pl.Trainer(logger=False, **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(state_dict_type="local"), r"state_dict_type='local'.*'full'.*'sharded'"),
    (dict(sharding_strategy="HYBRID_SHARD"), r"sharding_strategy='HYBRID_SHARD'.*FULL_SHARD"),
    (dict(auto_wrap_policy={int}), r"not nn.Module classes"),
    (dict(auto_wrap_policy=3), r"expected None, a set of nn.Module classes or a callable"),
    (dict(start_method="spawn"), r"ddp_spawn is not offered for FSDP"),
])  # fmt: skip
def test_bad_fsdp_arguments_name_the_argument(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        FSDPStrategy(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm and CPU offload need CUDA")
def test_sync_batchnorm_converts_batch_norm_layers_on_cuda():  # pragma: no cover - no GPU here
    trainer = pl.Trainer(accelerator="cuda", devices=1, strategy="ddp", sync_batchnorm=True, logger=False)
    out = trainer.strategy.setup_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert isinstance(out[1], nn.SyncBatchNorm) and out[1].weight.is_cuda


# -- the sharded format, in one process ---------------------------------------------------------------------------
def _checkpoint(value: float) -> dict:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    named = sharded_checkpoint.optimizer_state_to_names(opt.state_dict(), ["weight", "bias"])
    return {"epoch": 0, "global_step": 1, "state_dict": model.state_dict(), "optimizer_states": [named],
            "lr_schedulers": [], "engine": {"note": "meta"}}, opt


def test_sharded_directory_round_trip_and_replacement(tmp_path):
    path = tmp_path / "a.ckpt"
    first, _ = _checkpoint(1.0)
    sharded_checkpoint.save(first, path, True, lambda: None)
    second, opt = _checkpoint(2.0)
    sharded_checkpoint.save(second, path, True, lambda: None)  # replaces the first directory as a whole
    assert sharded_checkpoint.is_sharded(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # nothing partial or old left
    one = sharded_checkpoint.consolidate(path)
    assert list(one)[:3] == ["epoch", "global_step", "state_dict"]
    assert torch.equal(one["state_dict"]["weight"], second["state_dict"]["weight"])
    assert not torch.equal(one["state_dict"]["weight"], first["state_dict"]["weight"])
    want = opt.state_dict()
    assert one["optimizer_states"][0]["param_groups"] == want["param_groups"]
    assert torch.equal(one["optimizer_states"][0]["state"][0]["exp_avg"], want["state"][0]["exp_avg"])
    meta = sharded_checkpoint.load_meta(path)
    assert meta["engine"]["note"] == "meta" and meta[sharded_checkpoint.SHARDED_KEY] == str(path)


def test_a_failed_sharded_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "a.ckpt"
    first, _ = _checkpoint(1.0)
    sharded_checkpoint.save(first, path, True, lambda: None)
    weight = first["state_dict"]["weight"].clone()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dcp, "save", broken)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint"):
        sharded_checkpoint.save(_checkpoint(2.0)[0], path, True, lambda: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]
    assert torch.equal(sharded_checkpoint.consolidate(path)["state_dict"]["weight"], weight)


def test_optimizer_layouts_convert_both_ways():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}],
                          lr=0.1, momentum=0.9)
    model(torch.ones(4, 2)).sum().backward()
    opt.step()
    state = opt.state_dict()
    names = ["0.weight", "0.bias", "1.weight", "1.bias"]
    named = sharded_checkpoint.optimizer_state_to_names(state, names)
    assert named["param_groups"][1]["params"] == ["1.weight", "1.bias"]
    back = sharded_checkpoint.optimizer_state_to_ids(named)
    assert back["param_groups"] == state["param_groups"]
    assert all(torch.equal(back["state"][i]["momentum_buffer"], state["state"][i]["momentum_buffer"]) for i in range(4))
    with pytest.raises(CheckpointError, match="has 4 parameters, the optimizer 3"):
        sharded_checkpoint.optimizer_state_to_names(state, names[:3])


def test_consolidate_cli_refuses_a_directory_that_is_not_a_sharded_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "engine", "checkpoint", "consolidate", str(tmp_path),
                           str(tmp_path / "out.ckpt")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is not a sharded checkpoint (expected a directory with .metadata and meta.pt)" in proc.stderr


class DirectoryStrategy(SingleDeviceStrategy):
    """One process that writes its checkpoints as sharded directories (as FSDP's 'sharded' does)."""

    def save_checkpoint(self, checkpoint, path):
        return sharded_checkpoint.save(checkpoint, path, True, lambda: None)


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", -float(self.current_epoch))  # improves every epoch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_model_checkpoint_keeps_top_k_directories_and_resumes_from_last(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    ckpt = pl.ModelCheckpoint(dirpath=tmp_path / "c", monitor="val", save_top_k=1, save_last=True)
    trainer = pl.Trainer(max_epochs=3, strategy=DirectoryStrategy(torch.device("cpu")), callbacks=[ckpt],
                         logger=False, enable_progress_bar=False, enable_model_summary=False, trace=None)
    trainer.fit(Tiny(), data, data)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["epoch=2-step=6.ckpt", "last.ckpt"]  # the earlier best directories were deleted
    assert all((tmp_path / "c" / n).is_dir() for n in names)
    again = pl.Trainer(max_epochs=4, strategy=DirectoryStrategy(torch.device("cpu")),
                       callbacks=[pl.ModelCheckpoint(dirpath=tmp_path / "c", monitor="val", save_last=True)],
                       logger=False, enable_progress_bar=False, enable_model_summary=False, trace=None)
    again.fit(Tiny(), data, data, ckpt_path="last")
    assert again.ckpt_path.endswith("last.ckpt")
    assert (again.current_epoch, again.global_step) == (4, 8)


def test_fp16_loss_scaling_under_fsdp_on_cuda_is_refused_before_any_work():
    strategy = FSDPStrategy()
    strategy.accelerator = "cuda"  # as configure() would set it on a GPU machine
    with pytest.raises(MisconfigurationException, match=r"precision='16-mixed'.*use precision='bf16-mixed'"):
        strategy.check_precision("16-mixed")
    strategy.check_precision("bf16-mixed")


@pytest.mark.parametrize("name", ["EMAWeightAveraging", "StochasticWeightAveraging"])
def test_weight_averaging_refuses_sharded_parameters(name):
    from types import SimpleNamespace

    import engine.callbacks as callbacks

    cb = getattr(callbacks, name)(swa_lrs=0.1) if name.startswith("Stochastic") else getattr(callbacks, name)()
    trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(MisconfigurationException, match=rf"{name} with strategy=FSDPStrategy: averaging sharded"):
        cb.setup(trainer, Tiny(), "fit")
