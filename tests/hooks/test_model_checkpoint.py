"""ModelCheckpoint / OnExceptionCheckpoint against Lightning 2.6 (reference §5.1), with real tiny fits.

The expected file names, scores and bookkeeping were checked against Lightning 2.6.6 running the same fits (same
batch counts, same scripted validation values). Each test runs in its own empty cwd (tests/conftest.py).
"""

from __future__ import annotations

import os
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import engine as pl
from engine.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from engine.errors import MisconfigurationException
from engine.loggers import CSVLogger, TensorBoardLogger

QUIET = {"logger": False, "enable_progress_bar": False}


def ckpts(root: str | os.PathLike = ".") -> list[str]:
    """Every *.ckpt under `root`, relative, sorted ('name -> target' for symlinks)."""
    root = Path(root)
    out = []
    for path in root.rglob("*.ckpt"):
        rel = path.relative_to(root).as_posix()
        out.append(f"{rel} -> {os.readlink(path)}" if path.is_symlink() else rel)
    return sorted(out)


def names(paths: Any) -> Any:
    """Base names of a path, a list of paths or the keys of best_k_models (with their float scores)."""
    if isinstance(paths, dict):
        return {os.path.basename(k): round(float(v), 4) for k, v in paths.items()}
    if isinstance(paths, (list, tuple)):
        return [os.path.basename(p) for p in paths]
    return os.path.basename(paths)


def load(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture()
def scripted(kit):
    """`scripted(values, key='val_loss')`: a model whose n-th validation run (sanity check excluded) logs values[n]."""

    def make(values: list[float], key: str = "val_loss") -> Any:
        class Scripted(kit.Model):
            def __init__(self) -> None:
                super().__init__()
                self.runs = 0

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                self.log(key, torch.tensor(float(values[min(self.runs, len(values) - 1)])))

            def on_validation_epoch_end(self) -> None:
                if not self.trainer.sanity_checking:
                    self.runs += 1

        return Scripted()

    return make


def fit(kit, model=None, callbacks=None, train=8, val=4, **flags):
    """A fit over `train` samples (batches of 2) validated on `val` samples (None: no validation)."""
    flags = {**QUIET, "max_epochs": 2, **flags}
    trainer = kit.trainer(callbacks=callbacks, **flags)
    trainer.fit(model if model is not None else kit.Model(), kit.loader(train),
                kit.loader(val) if val else None)
    return trainer


# -- where the files go ----------------------------------------------------------------------------------------------
def test_default_checkpoint_under_default_root_dir_keeps_only_the_latest(kit):
    trainer = fit(kit)
    cb = trainer.checkpoint_callback
    assert isinstance(cb, ModelCheckpoint) and trainer.callbacks[-1] is cb
    assert ckpts() == ["checkpoints/epoch=1-step=8.ckpt"]  # epoch=0-step=4 was replaced
    root = Path(trainer.default_root_dir)
    assert cb.dirpath == str(root / "checkpoints")
    assert cb.best_model_path == str(root / "checkpoints/epoch=1-step=8.ckpt")
    assert cb.best_model_score is None and cb.best_k_models == {} and cb.kth_best_model_path == ""
    assert cb.last_model_path == "" and cb.current_score is None

    trainer = fit(kit, default_root_dir="elsewhere", max_epochs=1)
    assert ckpts("elsewhere") == ["checkpoints/epoch=0-step=4.ckpt"]


@pytest.mark.parametrize("logger_cls", [CSVLogger, TensorBoardLogger])
def test_checkpoints_go_under_the_loggers_version_dir(kit, logger_cls):
    for version in (0, 1):
        trainer = fit(kit, max_epochs=1, logger=logger_cls(save_dir="logs"))
        assert trainer.checkpoint_callback.dirpath == os.path.join("logs", "lightning_logs", f"version_{version}",
                                                                   "checkpoints")
    assert ckpts("logs") == ["lightning_logs/version_0/checkpoints/epoch=0-step=4.ckpt",
                             "lightning_logs/version_1/checkpoints/epoch=0-step=4.ckpt"]
    fit(kit, max_epochs=1, logger=logger_cls(save_dir="logs", name="exp", version="run-a"))
    assert ckpts("logs/exp") == ["run-a/checkpoints/epoch=0-step=4.ckpt"]


def test_no_checkpoint_callback_when_checkpointing_is_disabled(kit):
    trainer = fit(kit, enable_checkpointing=False)
    assert trainer.checkpoint_callback is None and ckpts() == []
    with pytest.raises(MisconfigurationException, match="enable_checkpointing=False"):
        kit.trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint()], **QUIET)


# -- top k -----------------------------------------------------------------------------------------------------------
def test_top_2_by_val_loss(kit, scripted):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    fit(kit, scripted([3, 1, 2, 0.5]), [cb], max_epochs=4)
    assert ckpts() == ["checkpoints/epoch=1-step=8.ckpt", "checkpoints/epoch=3-step=16.ckpt"]
    assert names(cb.best_k_models) == {"epoch=1-step=8.ckpt": 1.0, "epoch=3-step=16.ckpt": 0.5}
    assert names(cb.best_model_path) == "epoch=3-step=16.ckpt" and cb.best_model_score.item() == 0.5
    assert names(cb.kth_best_model_path) == "epoch=1-step=8.ckpt" and cb.kth_value.item() == 1.0
    assert cb.current_score.item() == 0.5 and cb.last_model_path == ""


def test_mode_max(kit, scripted):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2, mode="max")
    fit(kit, scripted([3, 1, 2, 0.5]), [cb], max_epochs=4)
    assert ckpts() == ["checkpoints/epoch=0-step=4.ckpt", "checkpoints/epoch=2-step=12.ckpt"]
    assert names(cb.best_model_path) == "epoch=0-step=4.ckpt" and cb.best_model_score.item() == 3.0
    assert names(cb.kth_best_model_path) == "epoch=2-step=12.ckpt" and cb.kth_value.item() == 2.0
    assert cb.current_score.item() == 2.0  # the last one that entered the top k


def test_save_top_k_minus_one_keeps_all(kit, scripted):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1)
    fit(kit, scripted([3, 1, 2]), [cb], max_epochs=3)
    assert ckpts() == ["checkpoints/epoch=0-step=4.ckpt", "checkpoints/epoch=1-step=8.ckpt",
                       "checkpoints/epoch=2-step=12.ckpt"]
    assert names(cb.best_k_models) == {"epoch=0-step=4.ckpt": 3.0, "epoch=1-step=8.ckpt": 1.0,
                                       "epoch=2-step=12.ckpt": 2.0}
    assert names(cb.best_model_path) == "epoch=1-step=8.ckpt"
    assert names(cb.kth_best_model_path) == "epoch=0-step=4.ckpt" and cb.kth_value.item() == 3.0


def test_save_top_k_zero_writes_nothing(kit):
    cb = ModelCheckpoint(save_top_k=0)
    fit(kit, callbacks=[cb])
    assert ckpts() == [] and cb.best_model_path == "" and cb.last_model_path == ""


# -- last.ckpt -------------------------------------------------------------------------------------------------------
def test_save_last_and_link(kit):
    cb = ModelCheckpoint(save_last=True)
    fit(kit, callbacks=[cb])
    assert ckpts() == ["checkpoints/epoch=1-step=8.ckpt", "checkpoints/last.ckpt"]
    assert names(cb.last_model_path) == "last.ckpt" and load(cb.last_model_path)["global_step"] == 8

    cb = ModelCheckpoint(dirpath="linked", save_last="link")
    fit(kit, callbacks=[cb])
    assert ckpts("linked") == ["epoch=1-step=8.ckpt", "last.ckpt -> epoch=1-step=8.ckpt"]
    assert os.path.islink(cb.last_model_path) and load(cb.last_model_path)["global_step"] == 8


def test_last_is_only_rewritten_when_a_checkpoint_is_saved(kit, scripted):
    """Lightning 2.6: at epoch level, last.ckpt follows a saved top-k checkpoint; worse epochs leave it alone."""
    cb = ModelCheckpoint(monitor="val_loss", save_last=True)
    fit(kit, scripted([1, 2, 3]), [cb], max_epochs=3)
    assert ckpts() == ["checkpoints/epoch=0-step=4.ckpt", "checkpoints/last.ckpt"]
    assert load(cb.last_model_path)["global_step"] == 4


def test_save_last_without_top_k_writes_last_at_train_end(kit):
    cb = ModelCheckpoint(save_top_k=0, save_last=True)
    fit(kit, callbacks=[cb])
    assert ckpts() == ["checkpoints/last.ckpt"]
    ckpt = load(cb.last_model_path)
    assert ckpt["global_step"] == 8 and "optimizer_states" in ckpt

    # a trigger that never fires: last.ckpt is still written when the training ends (no boundary follows)
    cb = ModelCheckpoint(dirpath="never", every_n_train_steps=100, save_last=True)
    fit(kit, callbacks=[cb])
    assert ckpts("never") == ["last.ckpt"] and load(cb.last_model_path)["global_step"] == 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = kit.trainer(callbacks=[ModelCheckpoint(dirpath="again")], max_epochs=2, **QUIET)
        trainer.fit(kit.Model(), kit.loader(8), kit.loader(4), ckpt_path=cb.last_model_path)
    assert trainer.global_step == 8
    assert not [w for w in caught if "outside a batch or epoch boundary" in str(w.message)]  # it resumes exactly


# -- triggers --------------------------------------------------------------------------------------------------------
def test_every_n_train_steps(kit):
    cb = ModelCheckpoint(every_n_train_steps=2, save_top_k=-1)
    fit(kit, callbacks=[cb], train=10)
    assert ckpts() == [f"checkpoints/epoch={e}-step={s}.ckpt" for e, s in
                       [(0, 2), (0, 4), (1, 10), (1, 6), (1, 8)]]
    assert cb.state_key == ("ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 2, "
                            "'every_n_epochs': 0, 'train_time_interval': None}")


def test_every_n_epochs(kit):
    fit(kit, callbacks=[ModelCheckpoint(every_n_epochs=2, save_top_k=-1)], max_epochs=5)
    assert ckpts() == ["checkpoints/epoch=1-step=8.ckpt", "checkpoints/epoch=3-step=16.ckpt"]


def test_train_time_interval(kit):
    class Slow(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            time.sleep(0.002)
            return super().training_step(batch, batch_idx)

    fit(kit, Slow(), [ModelCheckpoint(dirpath="often", train_time_interval=timedelta(microseconds=1),
                                      save_top_k=-1)], max_epochs=1)
    assert ckpts("often") == [f"epoch=0-step={s}.ckpt" for s in (1, 2, 3, 4)]
    # a time trigger replaces the epoch trigger: nothing is due within an hour
    fit(kit, callbacks=[ModelCheckpoint(dirpath="never", train_time_interval=timedelta(hours=1))])
    assert ckpts("never") == []


def test_step_trigger_with_monitor_saves_after_the_validation_that_follows(kit, scripted):
    """every_n_train_steps + monitor: before the first validation, and on the last batch when the epoch's validation
    follows, the save waits for on_validation_end and takes its fresh value (Lightning 2.6)."""
    cb = ModelCheckpoint(every_n_train_steps=2, monitor="val_loss", save_top_k=-1)
    fit(kit, scripted([3, 2, 1, 0.5]), [cb], val_check_interval=0.5)
    assert names(cb.best_k_models) == {"epoch=0-step=2.ckpt": 3.0, "epoch=0-step=4.ckpt": 2.0,
                                       "epoch=1-step=6.ckpt": 2.0, "epoch=1-step=8.ckpt": 0.5}
    assert ckpts() == sorted(f"checkpoints/{n}" for n in names(cb.best_k_models))

    # validation at the epoch's end only (saving on train epoch end): steps before the first value are not saved
    cb = ModelCheckpoint(dirpath="late", every_n_train_steps=2, monitor="val_loss", save_top_k=-1)
    fit(kit, scripted([3, 2]), [cb], train=10)
    assert names(cb.best_k_models) == {"epoch=1-step=6.ckpt": 3.0, "epoch=1-step=8.ckpt": 3.0,
                                       "epoch=1-step=10.ckpt": 3.0}


def test_mid_epoch_validation_saves_in_on_validation_end(kit, scripted):
    seen: list[tuple[int, list[str]]] = []

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            seen.append((trainer.global_step, ckpts()))

    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1)
    fit(kit, scripted([3, 2, 1, 0.5]), [Look(), cb], val_check_interval=0.5)
    assert names(cb.best_k_models) == {"epoch=0-step=2.ckpt": 3.0, "epoch=0-step=4.ckpt": 2.0,
                                       "epoch=1-step=6.ckpt": 1.0, "epoch=1-step=8.ckpt": 0.5}
    assert ckpts() == sorted(f"checkpoints/{n}" for n in names(cb.best_k_models))
    # the step-2 file is on disk when batch 3 starts: written after the mid-epoch validation, not at the epoch's end
    assert seen[2] == (2, ["checkpoints/epoch=0-step=2.ckpt"])


# -- names -----------------------------------------------------------------------------------------------------------
def test_filename_templates(kit, scripted):
    cb = ModelCheckpoint(dirpath="a", monitor="val_loss", filename="{epoch}-{val_loss:.2f}", save_top_k=-1)
    fit(kit, scripted([0.123, 0.456]), [cb])
    assert ckpts("a") == ["epoch=0-val_loss=0.12.ckpt", "epoch=1-val_loss=0.46.ckpt"]

    cb = ModelCheckpoint(dirpath="b", monitor="val/loss", filename="e{epoch:02d}-l{val/loss:.1f}",
                         auto_insert_metric_name=False, save_top_k=-1)
    fit(kit, scripted([0.1, 0.2], key="val/loss"), [cb])
    assert ckpts("b") == ["e00-l0.1.ckpt", "e01-l0.2.ckpt"]

    cb = ModelCheckpoint(dirpath="c", monitor="val.loss", filename="{epoch}-{val.loss:.3f}", save_top_k=-1)
    fit(kit, scripted([0.1, 0.2], key="val.loss"), [cb])
    assert ckpts("c") == ["epoch=0-val.loss=0.100.ckpt", "epoch=1-val.loss=0.200.ckpt"]
    assert names(cb.best_model_path) == "epoch=0-val.loss=0.100.ckpt"


def test_format_checkpoint_name():
    fmt = lambda cb, metrics, **kw: os.path.basename(cb.format_checkpoint_name(metrics, **kw))  # noqa: E731
    assert fmt(ModelCheckpoint(filename="{epoch:03d}"), {"epoch": 5}) == "epoch=005.ckpt"
    assert fmt(ModelCheckpoint(filename="{missing:d}"), {}) == "missing=0.ckpt"
    assert fmt(ModelCheckpoint(), {"epoch": 1, "step": 9}, ver=2) == "epoch=1-step=9-v2.ckpt"
    assert fmt(ModelCheckpoint(), {"epoch": 1, "step": 9}, prefix="x") == "x-epoch=1-step=9.ckpt"
    cb = ModelCheckpoint(filename="epoch={epoch}-validation_loss={val_loss:.2f}", auto_insert_metric_name=False)
    assert fmt(cb, {"epoch": 2, "val_loss": 0.123456}) == "epoch=2-validation_loss=0.12.ckpt"
    assert ModelCheckpoint(filename="{step}").format_checkpoint_name({"step": 0}) == "step=0.ckpt"  # no dirpath yet


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_version_suffix_on_collision(kit):
    first = ModelCheckpoint(dirpath="ck", save_last=True)
    fit(kit, callbacks=[first], max_epochs=1)
    second = ModelCheckpoint(dirpath="ck", save_last=True)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        fit(kit, callbacks=[second], max_epochs=1)
    assert ckpts("ck") == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert names(second.best_model_path) == "epoch=0-step=4-v1.ckpt"
    assert names(second.last_model_path) == "last-v1.ckpt"
    assert names(first.best_model_path) == "epoch=0-step=4.ckpt"

    fit(kit, callbacks=[ModelCheckpoint(dirpath="ck", save_last=True, enable_version_counter=False)], max_epochs=1)
    assert len(ckpts("ck")) == 4  # overwritten in place


# -- contents and state ----------------------------------------------------------------------------------------------
def test_save_weights_only(kit):
    full, light = ModelCheckpoint(dirpath="full"), ModelCheckpoint(dirpath="light", save_weights_only=True)
    fit(kit, callbacks=[full, light], max_epochs=1)
    f, w = load(full.best_model_path), load(light.best_model_path)
    assert "optimizer_states" in f and "callbacks" in f
    assert "optimizer_states" not in w and "lr_schedulers" not in w and "callbacks" not in w
    assert w["state_dict"].keys() == f["state_dict"].keys() and w["global_step"] == 4


def test_state_dict_round_trip_through_the_checkpoint(kit, scripted):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    assert cb.state_key == ("ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                            "'every_n_epochs': 1, 'train_time_interval': None}")
    fit(kit, scripted([3, 1, 2]), [cb], max_epochs=3)
    assert names(cb.best_model_path) == "epoch=1-step=8.ckpt"
    # each file holds the state right after its own save: epoch 1's knew epochs 0 and 1 ...
    early = load(cb.best_model_path)["callbacks"][cb.state_key]
    assert names(early["best_k_models"]) == {"epoch=0-step=4.ckpt": 3.0, "epoch=1-step=8.ckpt": 1.0}
    assert names(early["kth_best_model_path"]) == "epoch=0-step=4.ckpt"
    # ... and the file written last (epoch 2) holds the final state
    state = load(cb.kth_best_model_path)["callbacks"][cb.state_key]
    assert set(state) == {"monitor", "best_model_score", "best_model_path", "current_score", "dirpath",
                          "best_k_models", "kth_best_model_path", "kth_value", "last_model_path"}
    ours = cb.state_dict()
    assert state["best_model_path"] == ours["best_model_path"] and state["dirpath"] == cb.dirpath
    assert state["best_k_models"].keys() == ours["best_k_models"].keys()
    assert state["kth_best_model_path"] == ours["kth_best_model_path"] and state["monitor"] == "val_loss"
    assert state["best_model_score"].item() == 1.0 and state["kth_value"].item() == 2.0

    same = ModelCheckpoint(dirpath=cb.dirpath, monitor="val_loss", save_top_k=2)
    same.load_state_dict(state)
    assert same.best_k_models.keys() == cb.best_k_models.keys() and same.kth_value.item() == 2.0
    assert same.best_model_score.item() == 1.0 and same.best_model_path == cb.best_model_path
    assert same.current_score is None  # not restored, as in Lightning

    moved = ModelCheckpoint(dirpath="moved", monitor="val_loss", save_top_k=2)
    with pytest.warns(UserWarning, match="dirpath has changed"):
        moved.load_state_dict(state)
    assert moved.best_model_path == cb.best_model_path and moved.best_k_models == {}
    assert moved.best_model_score is None


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_restores_the_bookkeeping(kit, scripted):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    fit(kit, scripted([3, 1]), [cb], max_epochs=2)
    resumed = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    trainer = kit.trainer(callbacks=[resumed], max_epochs=3, **QUIET)
    trainer.fit(scripted([0.5]), kit.loader(8), kit.loader(4), ckpt_path=cb.last_model_path)
    assert names(resumed.best_k_models) == {"epoch=1-step=8.ckpt": 1.0, "epoch=2-step=12.ckpt": 0.5}
    assert ckpts() == ["checkpoints/epoch=1-step=8.ckpt", "checkpoints/epoch=2-step=12.ckpt",
                       "checkpoints/last.ckpt"]


# -- monitor errors and when nothing is written ------------------------------------------------------------------
def test_missing_monitor_key(kit):
    with pytest.raises(MisconfigurationException, match="could not find the monitored key"):
        fit(kit, callbacks=[ModelCheckpoint(monitor="nope")])
    assert ckpts() == []
    # no validation has run (there is none): a warning, no checkpoint, the fit completes
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        trainer = fit(kit, callbacks=[ModelCheckpoint(monitor="nope")], val=None)
    assert trainer.current_epoch == 2 and ckpts() == []
    # validation every 2nd epoch, saving at the train epoch's end: a warning at epoch 0, the error at epoch 1
    trainer = kit.trainer(callbacks=[ModelCheckpoint(monitor="nope", save_on_train_epoch_end=True)], max_epochs=3,
                          check_val_every_n_epoch=2, **QUIET)
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        with pytest.raises(MisconfigurationException, match="could not find the monitored key"):
            trainer.fit(kit.Model(), kit.loader(8), kit.loader(4))
    assert trainer.global_step == 8 and ckpts() == []


def test_no_checkpoint_in_sanity_check_or_validate(kit):
    at_sanity_end: list[list[str]] = []

    class Look(pl.Callback):
        def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
            at_sanity_end.append(ckpts())

    cb = ModelCheckpoint(monitor="val_loss", save_on_train_epoch_end=False)
    fit(kit, callbacks=[Look(), cb], max_epochs=1, num_sanity_val_steps=2)
    assert at_sanity_end == [[]] and ckpts() == ["checkpoints/epoch=0-step=4.ckpt"]

    trainer = kit.trainer(default_root_dir="v", **QUIET)
    trainer.validate(kit.Model(), kit.loader(4))
    assert ckpts("v") == [] and trainer.checkpoint_callback.best_model_path == ""


@pytest.mark.parametrize("kwargs, match", [
    ({"save_top_k": -2}, "save_top_k"),
    ({"mode": "avg"}, "mode"),
    ({"save_top_k": 2}, "monitor=None"),
    ({"every_n_train_steps": 2, "every_n_epochs": 2}, "mutually exclusive"),
    ({"train_time_interval": timedelta(seconds=1), "every_n_epochs": 1}, "mutually exclusive"),
    ({"every_n_train_steps": -1}, "every_n_train_steps"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        ModelCheckpoint(**kwargs)


# -- loading 'best' / 'last' -----------------------------------------------------------------------------------------
def test_validate_loads_best_and_last(kit, scripted):
    best, every = ModelCheckpoint(monitor="val_loss"), ModelCheckpoint(dirpath="every", save_last=True)
    model = scripted([1, 3, 2])
    trainer = fit(kit, model, [best, every], max_epochs=3)
    assert trainer.checkpoint_callback is best and trainer.checkpoint_callbacks == [best, every]
    assert names(best.best_model_path) == "epoch=0-step=4.ckpt" and load(best.best_model_path)["global_step"] == 4
    assert load(every.last_model_path)["global_step"] == 12
    for which, path in (("best", best.best_model_path), ("last", every.last_model_path),
                        ("best", best.best_model_path)):
        trainer.validate(model, kit.loader(4), ckpt_path=which, verbose=False)
        assert trainer.ckpt_path == path
        expected = load(path)["state_dict"]
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


# -- exceptions ------------------------------------------------------------------------------------------------------
def test_save_on_exception(kit):
    class Boom(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 5:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    cb = ModelCheckpoint(save_on_exception=True, save_last=True)
    with pytest.raises(RuntimeError, match="boom"):
        fit(kit, Boom(), [cb])
    assert ckpts() == ["checkpoints/epoch=0-step=4.ckpt", "checkpoints/epoch=1-step=5.ckpt",
                       "checkpoints/last.ckpt"]
    assert names(cb.best_model_path) == "epoch=0-step=4.ckpt" and load(cb.last_model_path)["global_step"] == 5


def test_a_decided_checkpoint_is_written_even_if_the_run_fails_before_the_boundary(kit):
    class FailsInValidation(kit.Model):
        def on_validation_end(self) -> None:  # after the callbacks' on_validation_end
            if self.global_step == 4:
                raise RuntimeError("val boom")

    cb = ModelCheckpoint()
    with pytest.raises(RuntimeError, match="val boom"):
        fit(kit, FailsInValidation(), [cb], val_check_interval=0.5)
    assert ckpts() == ["checkpoints/epoch=0-step=4.ckpt"] and os.path.isfile(cb.best_model_path)


def test_on_exception_checkpoint(kit):
    class Boom(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    cb = OnExceptionCheckpoint("exc")
    with pytest.raises(RuntimeError, match="boom"):
        fit(kit, Boom(), [cb], enable_checkpointing=False)
    assert ckpts("exc") == ["on_exception.ckpt"] and load(cb.ckpt_path)["global_step"] == 3
    # a run that ends normally removes it
    trainer = kit.trainer(callbacks=[cb], enable_checkpointing=False, **QUIET)
    trainer.validate(kit.Model(), kit.loader(4), verbose=False)
    assert ckpts("exc") == []
    with pytest.raises(ValueError, match="filename"):
        OnExceptionCheckpoint("exc", filename="")
