"""The checkpoint format and its I/O: Lightning's keys, atomic writes (a crash mid-write leaves the old file), safe
loading (no pickle unless asked for), clear errors, load_from_checkpoint, and Lightning 2.6.6 checkpoints (a fixture
written by real Lightning, tests/fixtures)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine import checkpoint
from engine.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


class Tiny(pl.LightningModule):
    """The model of tests/fixtures/make_lightning_checkpoint.py."""

    def __init__(self, in_dim: int = 4, hidden: int = 3, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)


def fitted(tmp_path: Path, epochs: int = 2) -> tuple[pl.Trainer, Tiny, Path]:
    pl.seed_everything(7)
    model = Tiny()
    t = pl.Trainer(max_epochs=epochs, default_root_dir=tmp_path, **QUIET)
    t.fit(model, loader(), loader())
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    return t, model, path


# -- the format ---------------------------------------------------------------------------------------------------
def test_keys_are_lightnings_plus_the_engines_and_load_without_pickle(tmp_path: Path) -> None:
    t, model, path = fitted(tmp_path)
    ckpt = torch.load(path, weights_only=True)  # plain data only: the default, safe load works
    assert {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
            "optimizer_states", "lr_schedulers", "hyper_parameters", "hparams_name", "engine"} <= set(ckpt)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 8)  # the last completed epoch, as Lightning writes it
    assert ckpt["hyper_parameters"] == {"in_dim": 4, "hidden": 3, "lr": 0.05} and ckpt["hparams_name"] == "kwargs"
    assert type(ckpt["hyper_parameters"]) is dict
    assert ckpt["engine"]["format"] == checkpoint.FORMAT_VERSION
    assert set(ckpt["engine"]["rng"]) >= {"torch", "python", "numpy"}
    assert ckpt["engine"]["run"]["progress"]["global_step"] == 8
    assert any(k.startswith("ModelCheckpoint{") for k in ckpt["callbacks"])
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)
    assert ckpt["optimizer_states"][0]["state"][0]["step"].item() == 8
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2


def test_weights_only_checkpoints_leave_out_the_training_state(tmp_path: Path) -> None:
    t, _, _ = fitted(tmp_path, epochs=1)
    t.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    ckpt = torch.load(tmp_path / "w.ckpt", weights_only=True)
    assert "optimizer_states" not in ckpt and "lr_schedulers" not in ckpt and "callbacks" not in ckpt
    assert "state_dict" in ckpt


def test_hooks_can_add_to_the_checkpoint_and_read_it_back(tmp_path: Path) -> None:
    seen: list[str] = []

    class Extra(pl.Callback):
        def on_save_checkpoint(self, trainer: Any, pl_module: Any, ckpt: dict) -> None:
            ckpt["extra"] = 41

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, ckpt: dict) -> None:
            seen.append(f"callback {ckpt['extra']} {ckpt['mine']}")

    class Mine(Tiny):
        def on_save_checkpoint(self, ckpt: dict) -> None:
            ckpt["mine"] = "m"

        def on_load_checkpoint(self, ckpt: dict) -> None:
            seen.append("module")

    pl.seed_everything(0)
    t = pl.Trainer(max_epochs=1, callbacks=[Extra()], **QUIET)
    t.fit(Mine(), loader())
    t.save_checkpoint(tmp_path / "x.ckpt")
    pl.Trainer(max_epochs=2, callbacks=[Extra()], **QUIET).fit(Mine(), loader(), ckpt_path=str(tmp_path / "x.ckpt"))
    assert seen == ["module", "callback 41 m"]  # Lightning's order: the module's hook, then the callbacks'


# -- atomic writes and faults ---------------------------------------------------------------------------------------
def test_a_failing_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c.ckpt"
    checkpoint.save({"v": torch.tensor(1)}, target)

    def half(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*c\.ckpt: No space left on device"):
        checkpoint.save({"v": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert checkpoint.load(target)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # the temporary file is gone


def test_a_read_only_directory_fails_loudly_naming_the_path(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")  # root ignores permissions: a file where a directory should be
        where = blocker / "sub" / "c.ckpt"
    else:  # pragma: no cover
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        where = ro / "c.ckpt"
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*c\.ckpt"):
        checkpoint.save({"v": 1}, where)


KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    from engine import checkpoint
    target, point = sys.argv[1], sys.argv[2]
    real_save, real_replace = torch.save, os.replace
    def dying_save(obj, f):
        if point == "mid-write":
            f.write(b"PK\\x03\\x04" + b"x" * 1000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f)
    def dying_replace(a, b):
        if point == "before-rename":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)
    checkpoint.torch.save = dying_save
    checkpoint.os.replace = dying_replace
    checkpoint.save({"v": torch.tensor(2)}, target)
""")


@pytest.mark.parametrize("point", ["mid-write", "before-rename"])
def test_a_kill_during_save_leaves_the_previous_checkpoint(tmp_path: Path, point: str) -> None:
    target = tmp_path / "c.ckpt"
    checkpoint.save({"v": torch.tensor(1)}, target)
    done = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(target), point], capture_output=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == -signal.SIGKILL
    assert checkpoint.load(target)["v"].item() == 1


# -- safe loading and errors ----------------------------------------------------------------------------------------
class Bomb:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_needs_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.ckpt"
    torch.save({"state_dict": {}, "x": Bomb()}, path)
    with pytest.raises(CheckpointError, match=r"bomb\.ckpt needs pickle to load: it contains the global posix\.system.*"
                                              r"pass weights_only=False"):
        checkpoint.load(path)


def test_missing_truncated_corrupt_and_future_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.ckpt does not exist"):
        checkpoint.load(tmp_path / "nope.ckpt")
    good = tmp_path / "good.ckpt"
    checkpoint.save({"state_dict": {"w": torch.ones(1000)}}, good)
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt is truncated or corrupt"):
        checkpoint.load(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt is (truncated or corrupt|corrupt)"):
        checkpoint.load(tmp_path / "junk.ckpt")
    checkpoint.save({"engine": {"format": checkpoint.FORMAT_VERSION + 1}}, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match=r"written by a newer statetrain"):
        checkpoint.load(tmp_path / "new.ckpt")
    checkpoint.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dict"):
        checkpoint.load(tmp_path / "list.ckpt")


def test_an_older_format_is_migrated(tmp_path: Path) -> None:
    checkpoint.save({"engine": {"format": 0}, "state_dict": {}}, tmp_path / "old.ckpt")
    assert checkpoint.load(tmp_path / "old.ckpt")["engine"]["resume"] == {"next": "epoch_start", "exact": False}


def test_rng_state_round_trips_as_plain_data() -> None:
    import random

    import numpy as np

    state = pickle.loads(pickle.dumps(checkpoint.rng_state()))
    a = (torch.rand(3), random.random(), np.random.rand())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# -- load_from_checkpoint -----------------------------------------------------------------------------------------
def test_load_from_checkpoint_builds_the_model_with_its_hyperparameters(tmp_path: Path) -> None:
    _, model, path = fitted(tmp_path)
    loaded = Tiny.load_from_checkpoint(path)
    assert loaded.hparams == {"in_dim": 4, "hidden": 3, "lr": 0.05}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert Tiny.load_from_checkpoint(path, lr=0.5).hparams.lr == 0.5


def test_a_checkpoint_of_another_model_lists_the_keys(tmp_path: Path) -> None:
    _, _, path = fitted(tmp_path, epochs=1)

    class Other(Tiny):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.head = nn.Linear(1, 1)

    with pytest.raises(CheckpointError, match=r"does not match Other: missing keys \['head.weight', 'head.bias'\], "
                                              r"unexpected keys \(none\)"):
        Other.load_from_checkpoint(path)
    assert isinstance(Other.load_from_checkpoint(path, strict=False), Other)


def test_non_plain_hyperparameters_are_left_out_with_a_warning(tmp_path: Path) -> None:
    class WithPath(Tiny):
        def __init__(self, where: Any = None, **kw: Any) -> None:
            super().__init__(**kw)
            self.save_hyperparameters()

    pl.seed_everything(0)
    t = pl.Trainer(max_epochs=1, **QUIET)
    t.fit(WithPath(where=object()), loader())
    with pytest.warns(UserWarning, match=r"hyperparameters where \(object\) are not plain data"):
        t.save_checkpoint(tmp_path / "h.ckpt")
    assert "where" not in torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]


def test_datamodule_state_and_hyperparameters_round_trip(tmp_path: Path) -> None:
    class DM(pl.LightningDataModule):
        def __init__(self, batch_size: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.counter = 0

        def train_dataloader(self) -> DataLoader:
            return loader()

        def state_dict(self) -> dict:
            return {"counter": 7}

        def load_state_dict(self, state: dict) -> None:
            self.counter = state["counter"]

    pl.seed_everything(0)
    t = pl.Trainer(max_epochs=1, **QUIET)
    t.fit(Tiny(), datamodule=DM(batch_size=8))
    t.save_checkpoint(tmp_path / "dm.ckpt")
    dm = DM.load_from_checkpoint(tmp_path / "dm.ckpt")
    assert dm.hparams.batch_size == 8 and dm.counter == 7


# -- Lightning checkpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lightning-2.6.6-tiny.ckpt", "lightning-2.6.6-tiny-last.ckpt"])
def test_a_lightning_checkpoint_loads_and_resumes(tmp_path: Path, name: str) -> None:
    path = FIXTURES / name
    raw = torch.load(path, weights_only=True)
    model = Tiny.load_from_checkpoint(path)
    for k, v in raw["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v)
    resumed = Tiny()
    t = pl.Trainer(max_epochs=3, **QUIET)
    t.fit(resumed, loader(), loader(), ckpt_path=str(path))
    # Lightning resumes both files to the same point: epoch 2 of 3 remains (reference §6, tests/fixtures/README)
    assert (t.current_epoch, t.global_step) == (3, 12)
    assert t.optimizers[0].state_dict()["state"][0]["step"].item() == 12
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert t.optimizers[0].param_groups[0]["lr"] == 0.05 * 0.5 ** 3


def test_statetrain_checkpoints_load_in_lightning(tmp_path: Path) -> None:
    lightning = pytest.importorskip("lightning.pytorch")
    _, model, path = fitted(tmp_path, epochs=1)

    class LTiny(lightning.LightningModule):
        def __init__(self, in_dim: int = 4, hidden: int = 3, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    loaded = LTiny.load_from_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_a_fit_whose_checkpoints_cannot_be_written_fails_loudly(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up at the second epoch's checkpoint: the fit raises naming the file, the first epoch's file
    is intact and loads (checkpointing is not optional like logging)."""
    from engine.callbacks import ModelCheckpoint

    real = checkpoint.torch.save
    calls = {"n": 0}

    def filling(obj: Any, f: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", filling)
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_top_k=-1)
    with pytest.raises(CheckpointError, match=r"epoch=1-step=8\.ckpt: No space left on device"):
        pl.Trainer(max_epochs=3, callbacks=[ckpt], **QUIET).fit(Tiny(), loader())
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["epoch=0-step=4.ckpt"]
    assert checkpoint.load(tmp_path / "c" / "epoch=0-step=4.ckpt")["global_step"] == 4


def test_a_checkpoint_written_by_lightning_now_loads_here(tmp_path: Path) -> None:
    """With real Lightning installed (the `bench` extra): written there, loaded and resumed here."""
    lightning = pytest.importorskip("lightning.pytorch")

    class LTiny(lightning.LightningModule):
        def __init__(self, in_dim: int = 4, hidden: int = 3, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}

    lt = lightning.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                           enable_checkpointing=False, accelerator="cpu", default_root_dir=tmp_path)
    lmodel = LTiny(hidden=5)
    lt.fit(lmodel, loader())
    lt.save_checkpoint(tmp_path / "l.ckpt")
    model = Tiny.load_from_checkpoint(tmp_path / "l.ckpt")
    assert model.hparams.hidden == 5
    for k, v in lmodel.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    t = pl.Trainer(max_epochs=2, **QUIET)
    t.fit(Tiny(hidden=5), loader(), ckpt_path=str(tmp_path / "l.ckpt"))
    assert (t.current_epoch, t.global_step) == (2, 8)
