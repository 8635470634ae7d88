"""Exact resume: a fit interrupted at any step and resumed from its last checkpoint ends with weights bit-identical
(torch.equal on every tensor) to the fit that was never interrupted, for a model with dropout, a shuffled DataLoader,
an LR scheduler and validation. The reference is computed in the same test on the same machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.callbacks import ModelCheckpoint
from engine.errors import CheckpointError

N, BATCH = 40, 4  # 10 batches per epoch
WORKERS = 0


class Net(pl.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)}


def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=WORKERS)
    return train, DataLoader(TensorDataset(x, y), batch_size=8)


class Crash(pl.Callback):
    """Stands in for a killed process: the fit dies when it reaches `at` optimizer steps."""

    def __init__(self, at: int, by: str = "global_step") -> None:
        self.at, self.by = at, by

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if getattr(trainer.timestamp, self.by) == self.at:
            raise RuntimeError("simulated crash")


def trainer(root: Path, *extra: Any, **flags: Any) -> pl.Trainer:
    flags = {"max_epochs": 3, "val_check_interval": 0.5, "num_sanity_val_steps": 2, **flags}
    return pl.Trainer(default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=0,
                                                 save_last=True), *extra], **flags)


def reference(root: Path, **flags: Any) -> dict[str, torch.Tensor]:
    pl.seed_everything(123)
    model = Net()
    trainer(root, **flags).fit(model, *data())
    return {k: v.clone() for k, v in model.state_dict().items()}


def interrupted_then_resumed(root: Path, at: int, by: str = "global_step",
                             **flags: Any) -> tuple[dict[str, torch.Tensor], pl.Trainer]:
    pl.seed_everything(123)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(root, Crash(at, by), **flags).fit(Net(), *data())
    pl.seed_everything(999)  # the resumed process starts from another RNG state and another init
    model = Net(seed=5)
    resumed = trainer(root, **flags)
    resumed.fit(model, *data(), ckpt_path=str(root / "ckpt" / "last.ckpt"))
    return model.state_dict(), resumed


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("at", [3, 5, 10, 11, 20])  # mid-epoch, right after a mid-epoch validation, epoch ends
def test_resume_is_bit_exact(tmp_path: Path, at: int) -> None:
    ref = reference(tmp_path / "ref")
    got, resumed = interrupted_then_resumed(tmp_path / "run", at)
    assert_same(ref, got)
    assert (resumed.current_epoch, resumed.global_step) == (3, 30)


@pytest.mark.slow
def test_resume_with_worker_processes_is_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "WORKERS", 2)
    assert_same(reference(tmp_path / "ref", max_epochs=2), interrupted_then_resumed(tmp_path / "run", 13,
                                                                                    max_epochs=2)[0])


@settings(max_examples=6, deadline=None)
@given(at=st.integers(min_value=1, max_value=29))
def test_resume_is_bit_exact_at_any_step(tmp_path_factory: pytest.TempPathFactory, at: int) -> None:
    root = tmp_path_factory.mktemp("any")
    assert_same(reference(root / "ref"), interrupted_then_resumed(root / "run", at)[0])


def test_resume_continues_counters_metrics_and_schedulers(tmp_path: Path) -> None:
    ref_model_root = tmp_path / "ref"
    pl.seed_everything(123)
    ref = trainer(ref_model_root)
    ref_model = Net()
    ref.fit(ref_model, *data())
    _, resumed = interrupted_then_resumed(tmp_path / "run", 13)
    assert resumed.batches_stepped == ref.batches_stepped
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == ref.lr_scheduler_configs[0].scheduler.last_epoch
    assert torch.equal(resumed.callback_metrics["train_loss_epoch"], ref.callback_metrics["train_loss_epoch"])
    assert torch.equal(resumed.callback_metrics["val_loss"], ref.callback_metrics["val_loss"])


def test_a_finished_fit_resumes_to_nothing_and_a_longer_one_continues(tmp_path: Path) -> None:
    ref = reference(tmp_path / "ref", max_epochs=4)
    pl.seed_everything(123)
    trainer(tmp_path / "run", max_epochs=3).fit(Net(), *data())
    model = Net(seed=3)
    longer = trainer(tmp_path / "run", max_epochs=4)
    longer.fit(model, *data(), ckpt_path=str(tmp_path / "run" / "ckpt" / "last.ckpt"))
    assert longer.global_step == 40
    assert_same(ref, model.state_dict())


def test_a_weights_only_checkpoint_cannot_resume(tmp_path: Path) -> None:
    pl.seed_everything(0)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(Net(), *data())
    t.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        trainer(tmp_path / "b", max_epochs=2).fit(Net(), *data(), ckpt_path=str(tmp_path / "w.ckpt"))


# -- a real kill ------------------------------------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch, engine as pl
    from test_resume import Net, data, trainer

    root, mode = Path(sys.argv[1]), sys.argv[2]
    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)
    if mode == "ref":
        pl.seed_everything(123); model = Net(); trainer(root).fit(model, *data())
    elif mode == "kill":
        pl.seed_everything(123); trainer(root, Kill()).fit(Net(), *data())
    else:
        model = Net(seed=4); trainer(root).fit(model, *data(), ckpt_path=str(root / "ckpt" / "last.ckpt"))
    if mode != "kill":
        torch.save(model.state_dict(), root / "final.pt")
""")


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                              timeout=120)

    assert run(str(tmp_path / "ref"), "ref", "0").returncode == 0
    killed = run(str(tmp_path / "run"), "kill", "17")
    assert killed.returncode == -signal.SIGKILL
    assert not list((tmp_path / "run" / "ckpt").glob(".*.tmp"))  # nothing half-written left behind
    resumed = run(str(tmp_path / "run"), "resume", "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming mid-epoch: epoch 1, after batch 7" in resumed.stderr + resumed.stdout
    assert_same(torch.load(tmp_path / "ref" / "final.pt"), torch.load(tmp_path / "run" / "final.pt"))


def test_resuming_past_max_epochs_is_refused(tmp_path: Path) -> None:
    pl.seed_everything(0)
    done = trainer(tmp_path, max_epochs=2)
    done.fit(Net(), *data())
    done.save_checkpoint(tmp_path / "end.ckpt")  # after the fit: 2 epochs completed
    with pytest.raises(pl.MisconfigurationException, match=r"current_epoch=2, but you have set Trainer\(max_epochs=1\)"):
        trainer(tmp_path / "b", max_epochs=1).fit(Net(), *data(), ckpt_path=str(tmp_path / "end.ckpt"))


@pytest.mark.parametrize("at", [5, 7, 11, 13])  # batches seen: inside a window, at its start, across an epoch
def test_resume_with_accumulation_is_bit_exact(tmp_path: Path, at: int) -> None:
    ref = reference(tmp_path / "ref", accumulate_grad_batches=3)
    got, resumed = interrupted_then_resumed(tmp_path / "run", at, "batches_seen", accumulate_grad_batches=3)
    assert_same(ref, got)
    assert resumed.global_step == 3 * 4  # 10 batches per epoch: windows of 3, 3, 3 and a last one of 1


class SaveEveryBatch(pl.Callback):
    """A checkpoint at every batch boundary, accumulating micro-batches included."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        path = Path(trainer.default_root_dir) / "ckpt" / "every.ckpt"
        trainer.context.at_boundary(lambda: trainer.save_checkpoint(path))


@pytest.mark.parametrize("at", [5, 6, 12, 13, 15, 16, 23])
def test_resume_inside_an_accumulation_window_restores_the_summed_gradients(tmp_path: Path, at: int) -> None:
    ref = reference(tmp_path / "ref", accumulate_grad_batches=3)
    pl.seed_everything(123)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(tmp_path / "run", SaveEveryBatch(), Crash(at, "batches_seen"), accumulate_grad_batches=3).fit(
            Net(), *data())
    model = Net(seed=5)
    trainer(tmp_path / "run", accumulate_grad_batches=3).fit(
        model, *data(), ckpt_path=str(tmp_path / "run" / "ckpt" / "every.ckpt"))
    assert_same(ref, model.state_dict())


class Stream(torch.utils.data.IterableDataset):
    """An iterable dataset: it cannot be skipped by index."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g)

    def __iter__(self) -> Any:
        return iter(zip(self.x, self.y))

    def __len__(self) -> int:
        return N


def test_an_iterable_dataset_resumes_by_skipping_batches_with_a_warning(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def stream_data() -> tuple[DataLoader, DataLoader]:
        return DataLoader(Stream(), batch_size=BATCH), DataLoader(Stream(), batch_size=8)

    monkeypatch.setattr(sys.modules[__name__], "data", stream_data)
    ref = reference(tmp_path / "ref", max_epochs=2)
    with pytest.warns(UserWarning, match="cannot skip by index .* its first 3 batches of the epoch are loaded"):
        got, _ = interrupted_then_resumed(tmp_path / "run", 13, max_epochs=2)
    assert_same(ref, got)
