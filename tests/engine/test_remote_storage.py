"""fsspec URLs as loggers' save_dir, checkpoint dirpath, save_checkpoint and fit(ckpt_path=...): fsspec's in-memory
filesystem stands in for a remote store and a `file://` URL for a local one; every file is read back. Also: files the
framework writes get the mode a plain open() gives (0666 minus the umask), not a temporary file's 0600."""

from __future__ import annotations

import csv
import glob
import io
import os
import stat
import tempfile
import uuid
import warnings
from typing import Any

import fsspec
import pytest
import torch
import yaml

from engine.errors import CheckpointError
from engine.utilities import cloud_io
from hooks.checkpoint import ModelCheckpoint
from hooks.csv_logger import CSVLogger
from hooks.tensorboard import TensorBoardLogger

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}
MEM = fsspec.filesystem("memory")


@pytest.fixture()
def root():
    """A fresh memory:// directory, removed afterwards (the memory filesystem is process-wide)."""
    name = f"st-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    if MEM.exists(f"/{name}"):
        MEM.rm(f"/{name}", recursive=True)


def read_text(url: str) -> str:
    return cloud_io.read_bytes(url).decode("utf-8")


def read_rows(url: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_text(url))))


def fit(kit: Any, logger: Any = False, model: Any = None, ckpt_path: str | None = None, **flags: Any) -> Any:
    """Fit a TinyModel (4 train batches, 2 val batches per epoch); it logs val_loss only."""
    flags = {"max_epochs": 2, "log_every_n_steps": 1, **QUIET, **flags}
    trainer = kit.trainer(logger=logger, **flags)
    model = model if model is not None else kit.Model()
    trainer.fit(model, kit.loader(8), kit.loader(4, seed=1), ckpt_path=ckpt_path)
    return trainer


# -- CSVLogger ------------------------------------------------------------------------------------------------------
def test_csv_logger_writes_into_the_memory_filesystem(kit, root, tmp_path) -> None:
    lg = CSVLogger(root, name="exp")
    model = kit.Model()
    model.save_hyperparameters({"lr": 0.05})
    fit(kit, lg, model=model)
    assert lg.log_dir == f"{root}/exp/version_0" and lg.save_dir == root
    rows = read_rows(f"{lg.log_dir}/metrics.csv")
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "3"), ("1", "7")] and all(r["val_loss"] for r in rows)
    assert yaml.safe_load(read_text(f"{lg.log_dir}/hparams.yaml"))["lr"] == 0.05
    local = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert local == []  # nothing of ours is local (no default trace either: traces are local files only)
    assert CSVLogger(root, name="exp").version == 1  # the next version is read from the listing


def test_csv_logger_rewrites_whole_file_on_a_url_and_warns_on_a_reused_version(root) -> None:
    lg = CSVLogger(root, version=3, flush_logs_every_n_steps=1)
    lg.log_metrics({"a": 1.0}, 0)
    lg.log_metrics({"a": 2.0}, 1)
    lg.log_metrics({"a": 3.0, "b": 4.0}, 2)  # a new column: the header grows
    lg.finalize("success")
    assert read_rows(f"{lg.log_dir}/metrics.csv") == [
        {"a": "1.0", "b": "", "step": "0"}, {"a": "2.0", "b": "", "step": "1"}, {"a": "3.0", "b": "4.0", "step": "2"}]
    again = CSVLogger(root, version=3)
    with pytest.warns(UserWarning, match=r"Experiment logs directory memory://.*/version_3 exists and is not empty"):
        again.log_metrics({"c": 5.0}, 0)
    again.finalize("success")
    assert read_rows(f"{again.log_dir}/metrics.csv") == [{"c": "5.0", "step": "0"}]
    assert [p for p in MEM.ls(again.log_dir.replace("memory://", "/"), detail=False) if ".tmp" in p] == []


def test_csv_logger_file_url_is_a_local_path(kit, tmp_path) -> None:
    lg = CSVLogger(f"file://{tmp_path}/logs")
    fit(kit, lg)
    assert lg.log_dir == str(tmp_path / "logs" / "lightning_logs" / "version_0")
    with open(os.path.join(lg.log_dir, "metrics.csv"), newline="") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["3", "7"]


# -- TensorBoardLogger --------------------------------------------------------------------------------------------
def test_tensorboard_logger_uploads_event_files_to_the_url(kit, root, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    staged = set(glob.glob(os.path.join(tempfile.gettempdir(), "statetrain-tensorboard-*")))
    lg = TensorBoardLogger(root, name="tb", sub_dir="train")
    fit(kit, lg)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "statetrain-tensorboard-*"))) == staged  # cleaned up
    assert lg.log_dir == f"{root}/tb/version_0/train"
    names = cloud_io.listdir(lg.log_dir)
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    assert events and "hparams.yaml" in names
    local = tmp_path / "copy"
    local.mkdir()
    for name in events:
        (local / name).write_bytes(cloud_io.read_bytes(f"{lg.log_dir}/{name}"))
    ea = EventAccumulator(str(local), size_guidance={"scalars": 0})
    ea.Reload()
    assert len(ea.Scalars("val_loss")) == 2 and "epoch" in ea.Tags()["scalars"]


def test_tensorboard_explicit_nonempty_version_warns(tmp_path) -> None:
    first = TensorBoardLogger(tmp_path, version=2)
    first.log_metrics({"x": 1.0}, 0)
    first.finalize("success")
    with pytest.warns(UserWarning, match=r"Experiment logs directory .*version_2 exists and is not empty"):
        TensorBoardLogger(tmp_path, version=2).experiment
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TensorBoardLogger(tmp_path).experiment  # a fresh version_N: nothing to say
        TensorBoardLogger(tmp_path, version=7).experiment  # explicit but new


# -- checkpoints ------------------------------------------------------------------------------------------------------
def test_model_checkpoint_dirpath_url_keeps_top_k_and_last(kit, root) -> None:
    cb = ModelCheckpoint(dirpath=f"{root}/ckpt", monitor="val_loss", save_top_k=1, save_last="link")
    trainer = fit(kit, callbacks=[cb], max_epochs=3)
    assert cb.dirpath == f"{root}/ckpt"
    files = sorted(cloud_io.listdir(cb.dirpath))
    assert files == sorted({os.path.basename(cb.best_model_path), "last.ckpt"})  # the dropped ones are deleted
    ckpt = torch.load(io.BytesIO(cloud_io.read_bytes(cb.last_model_path)), weights_only=False)
    assert ckpt["global_step"] == trainer.global_step == 12
    cb.to_yaml()
    assert list(yaml.safe_load(read_text(f"{root}/ckpt/best_k_models.yaml"))) == [cb.best_model_path]


def test_default_root_dir_url_holds_logs_and_checkpoints(kit, root) -> None:
    fit(kit, CSVLogger(root), default_root_dir=root, max_epochs=1)
    assert "metrics.csv" in cloud_io.listdir(f"{root}/lightning_logs/version_0")
    assert cloud_io.listdir(f"{root}/lightning_logs/version_0/checkpoints") == ["epoch=0-step=4.ckpt"]


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_save_checkpoint_and_resume_from_a_url_match_a_local_resume(kit, root, tmp_path, scheme) -> None:
    torch.manual_seed(0)
    trainer = fit(kit, max_epochs=1, enable_checkpointing=False)
    url = f"{root}/saved/model.ckpt" if scheme == "memory" else f"file://{tmp_path}/saved/model.ckpt"
    trainer.save_checkpoint(url)
    data = cloud_io.read_bytes(url)
    local = tmp_path / "local.ckpt"
    local.write_bytes(data)

    def resume(path: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model = kit.Model()
        again = fit(kit, model=model, max_epochs=2, enable_checkpointing=False, ckpt_path=path)
        assert (again.current_epoch, again.global_step) == (2, 8) and again.ckpt_path == path
        return {k: v.clone() for k, v in model.state_dict().items()}

    from_url, from_file = resume(url), resume(str(local))
    assert from_url.keys() == from_file.keys()
    assert all(torch.equal(from_url[k], from_file[k]) for k in from_url)


def test_ckpt_path_last_finds_the_last_checkpoint_at_a_url(kit, root) -> None:
    from engine.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    first = fit(kit, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=f"{root}/ckpts", save_last=True)])
    assert cloud_io.isfile(f"{root}/ckpts/last.ckpt") and first.global_step == 4
    again = fit(kit, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=f"{root}/ckpts", save_last=True)],
                ckpt_path="last")
    assert again.ckpt_path == f"{root}/ckpts/last.ckpt" and (again.current_epoch, again.global_step) == (2, 8)


def test_missing_checkpoint_url_and_unknown_protocol_name_the_problem(root) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint memory://.*/nope.ckpt does not exist"):
        from engine import checkpoint

        checkpoint.load(f"{root}/nope.ckpt")
    with pytest.raises(ImportError, match=r"no working backend for the 'nosuchproto' protocol.*install"):
        CSVLogger("nosuchproto://bucket/logs").log_metrics({"a": 1.0}, 0)


# -- file modes -------------------------------------------------------------------------------------------------------
@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Any) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_have_normal_permissions(kit, tmp_path, umask_022) -> None:
    lg = CSVLogger(tmp_path / "logs")
    model = kit.Model()
    model.save_hyperparameters({"lr": 0.05})
    cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = fit(kit, lg, model=model, callbacks=[cb])
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    tb = TensorBoardLogger(tmp_path / "tb")
    tb.log_hyperparams({"a": 1})
    tb.finalize("success")
    files = [os.path.join(lg.log_dir, "metrics.csv"), os.path.join(lg.log_dir, "hparams.yaml"), cb.best_model_path,
             cb.last_model_path, tmp_path / "manual.ckpt", os.path.join(tb.log_dir, "hparams.yaml")]
    assert {str(f): oct(mode(f)) for f in files} == {str(f): "0o644" for f in files}


def test_file_mode_follows_the_umask(tmp_path) -> None:
    old = os.umask(0o077)
    try:
        cloud_io.atomic_write(str(tmp_path / "private.bin"), b"x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "private.bin") == 0o600
