"""TensorBoardLogger, read back by TensorBoard's own reader (EventAccumulator), its HPARAMS plugin protos and a
real `tensorboard` server over HTTP; plus version directories and write failures (never raised into training)."""

from __future__ import annotations

import errno
import gc
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

import engine as pl
from hooks.logger import NoOpExperiment
from hooks.tensorboard import TensorBoardLogger

LOSSES = {0: 1.5, 3: 0.75, 49: 0.123456789, 99: -2.0}


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def load_yaml(log_dir: str) -> object:
    with open(os.path.join(log_dir, "hparams.yaml")) as fh:
        return yaml.safe_load(fh)


def f32(v: float) -> float:
    return float(np.float32(v))


def log_losses(lg: TensorBoardLogger) -> None:
    for step, loss in LOSSES.items():
        lg.log_metrics({"loss": loss, "acc": step / 100}, step)


# -- scalars ----------------------------------------------------------------------------------------------------------
def test_scalars_round_trip_every_tag_step_and_value(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    log_losses(lg)
    lg.log_metrics({"t": torch.tensor(0.5), "np": np.float64(3.25)}, 7)
    lg.finalize("success")
    assert lg.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert read_scalars(lg.log_dir) == {
        "loss": [(s, f32(v)) for s, v in LOSSES.items()],
        "acc": [(s, f32(s / 100)) for s in LOSSES],
        "t": [(7, 0.5)],
        "np": [(7, 3.25)],
    }


def test_prefix_joins_with_a_dash(tmp_path):
    lg = TensorBoardLogger(tmp_path, prefix="train")
    lg.log_metrics({"loss": 1.0}, 2)
    lg.finalize("success")
    assert read_scalars(lg.log_dir) == {"train-loss": [(2, 1.0)]}


def test_dict_value_goes_to_add_scalars_runs(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    lg.log_metrics({"cmp": {"a": 1.0, "b": 2.0}}, 5)
    lg.log_metrics({"cmp": {"a": 3.0, "b": 4.0}}, 6)
    lg.finalize("success")
    assert read_scalars(os.path.join(lg.log_dir, "cmp", "a")) == {"cmp": [(5, 1.0), (6, 3.0)]}
    assert read_scalars(os.path.join(lg.log_dir, "cmp", "b")) == {"cmp": [(5, 2.0), (6, 4.0)]}


def test_unsupported_value_raises_value_error(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match=r"metric 'name' has value 'abc' of type str; expected a number"):
        lg.log_metrics({"name": "abc"}, 0)
    lg.finalize("success")


def test_writes_after_finalize_go_to_a_new_event_file_in_the_same_run(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    lg.log_metrics({"loss": 1.0}, 0)
    lg.finalize("success")
    lg.log_metrics({"loss": 2.0}, 1)  # e.g. trainer.test() after fit() with the same logger
    lg.finalize("success")
    assert read_scalars(lg.log_dir) == {"loss": [(0, 1.0), (1, 2.0)]}
    assert sorted(os.listdir(tmp_path / "lightning_logs")) == ["version_0"]


# -- hyperparameters ----------------------------------------------------------------------------------------------
def hparams_plugin(log_dir: str) -> tuple[dict, list[str], list[str]]:
    """(session hparams as python values, experiment hparam names, experiment metric tags)."""
    ea = EventAccumulator(log_dir)
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    ssi = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in ssi.hparams.items()}
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return values, sorted(h.name for h in exp.hparam_infos), sorted(m.name.tag for m in exp.metric_infos)


def test_hparams_plugin_data_flattened_and_sanitized_in_the_run_dir(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    params = {"lr": 0.1, "bs": 32, "amp": True, "opt": {"name": "adam", "betas": (0.9, 0.99)}, "layer": nn.ReLU}
    lg.log_hyperparams(params)
    lg.log_metrics({"loss": 0.5}, 1)
    lg.finalize("success")
    values, names, metrics = hparams_plugin(lg.log_dir)
    assert values == {"lr": 0.1, "bs": 32.0, "amp": True, "opt/name": "adam", "opt/betas": "(0.9, 0.99)",
                      "layer": "<class 'torch.nn.modules.activation.ReLU'>"}
    assert names == sorted(values) and metrics == ["hp_metric"]
    assert read_scalars(lg.log_dir) == {"hp_metric": [(0, -1.0)], "loss": [(1, 0.5)]}
    # Everything lands in the run directory itself: no timestamped sub-run as SummaryWriter.add_hparams makes.
    assert sorted(p for p in os.listdir(lg.log_dir) if not p.startswith("events.out")) == ["hparams.yaml"]
    assert load_yaml(lg.log_dir) == {
        "lr": 0.1, "bs": 32, "amp": True, "opt": {"name": "adam", "betas": [0.9, 0.99]},
        "layer": "<class 'torch.nn.modules.activation.ReLU'>"}


def test_hparams_with_metrics_and_without_default_hp_metric(tmp_path):
    lg = TensorBoardLogger(tmp_path, default_hp_metric=False, prefix="p")
    lg.log_hyperparams({"lr": 0.1})  # no metric and no default: only hparams.yaml
    lg.save()
    assert read_scalars(lg.log_dir) == {}
    assert load_yaml(lg.log_dir) == {"lr": 0.1}
    lg.log_hyperparams({"wd": 0.01}, {"val_acc": 0.875}, step=4)
    lg.finalize("success")
    values, _, metrics = hparams_plugin(lg.log_dir)
    assert values == {"wd": 0.01} and metrics == ["p-val_acc"]
    assert read_scalars(lg.log_dir) == {"p-val_acc": [(4, 0.875)]}
    assert load_yaml(lg.log_dir) == {"lr": 0.1, "wd": 0.01}


def test_save_writes_an_empty_hparams_yaml_like_lightning(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    lg.save()
    assert load_yaml(lg.log_dir) == {}
    lg.finalize("success")


# -- directories ------------------------------------------------------------------------------------------------------
def test_versions_names_and_sub_dir(tmp_path):
    for n in range(3):
        (tmp_path / "lightning_logs" / f"version_{n}").mkdir(parents=True)
    lg = TensorBoardLogger(tmp_path)
    assert lg.version == 3 and (tmp_path / "lightning_logs" / "version_3").is_dir()
    assert lg.name == "lightning_logs" and lg.save_dir == str(tmp_path)
    assert lg.root_dir == str(tmp_path / "lightning_logs")
    assert TensorBoardLogger(tmp_path, version="exp-a").log_dir == str(tmp_path / "lightning_logs" / "exp-a")
    assert TensorBoardLogger(tmp_path, version=7).log_dir == str(tmp_path / "lightning_logs" / "version_7")
    assert TensorBoardLogger(tmp_path, name="", version=1).log_dir == str(tmp_path / "version_1")
    sub = TensorBoardLogger(tmp_path, name="m", sub_dir="train")
    assert sub.log_dir == str(tmp_path / "m" / "version_0" / "train")
    sub.log_metrics({"x": 1.0}, 0)
    sub.finalize("success")
    assert read_scalars(sub.log_dir) == {"x": [(0, 1.0)]}
    with pytest.raises(TypeError, match=r"TensorBoardLogger\(version=1.5\): expected None"):
        TensorBoardLogger(tmp_path, version=1.5)  # type: ignore[arg-type]


def test_pickles_without_the_writer(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    lg.log_metrics({"x": 1.0}, 0)
    clone = pickle.loads(pickle.dumps(lg))
    assert clone._experiment is None and clone.log_dir == lg.log_dir
    lg.finalize("success")


# -- graph --------------------------------------------------------------------------------------------------------
class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.example_input_array = torch.zeros(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(x))


def test_log_graph_uses_example_input_array(tmp_path):
    lg = TensorBoardLogger(tmp_path, log_graph=True)
    lg.log_graph(Net())
    lg.finalize("success")
    ea = EventAccumulator(lg.log_dir)
    ea.Reload()
    graph = ea.Graph()
    assert any("Linear" in node.name or "linear" in node.op for node in graph.node)


def test_log_graph_off_or_without_input(tmp_path):
    lg = TensorBoardLogger(tmp_path)  # log_graph=False: nothing, no writer opened
    lg.log_graph(Net())
    assert lg._experiment is None
    on = TensorBoardLogger(tmp_path, log_graph=True)
    net = Net()
    net.example_input_array = None
    with pytest.warns(UserWarning, match="set `model.example_input_array` or pass `input_array`"):
        on.log_graph(net)
    with pytest.warns(UserWarning, match="input_array has type list, expected a Tensor or a tuple"):
        on.log_graph(net, [1, 2])


# -- failures ---------------------------------------------------------------------------------------------------------
def exercise(lg: TensorBoardLogger) -> None:
    """Everything the Trainer calls during a run."""
    lg.log_hyperparams({"lr": 0.1})
    for step in range(30):
        lg.log_metrics({"loss": 1.0}, step)
        lg.save()
    lg.finalize("success")


def test_save_dir_is_a_file_reports_once_and_never_raises(tmp_path, errors):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    lg = TensorBoardLogger(blocker)
    exercise(lg)
    assert isinstance(lg.error, OSError)
    assert len(errors.messages) == 1 and "TensorBoardLogger" in errors.messages[0]
    assert str(blocker / "lightning_logs") in errors.messages[0]
    assert lg.version == 0 and isinstance(lg.experiment, NoOpExperiment)
    lg.experiment.add_image("img", None)  # user code through `experiment` does not crash either


def test_log_dir_is_a_file_reports_once(tmp_path, errors):
    (tmp_path / "lightning_logs").mkdir()
    (tmp_path / "lightning_logs" / "fixed").write_text("x")
    lg = TensorBoardLogger(tmp_path, version="fixed", strict=True)
    exercise(lg)
    assert isinstance(lg.error, OSError) and lg.strict is True
    assert len(errors.messages) == 1 and "strict=True" in errors.messages[0]


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_when_opening_the_writer(tmp_path, errors, monkeypatch):
    from tensorboardX import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    lg = TensorBoardLogger(tmp_path)
    exercise(lg)
    assert lg.error.errno == errno.ENOSPC and len(errors.messages) == 1
    gc.collect()  # tensorboardX leaks the event file it opened when its first write fails: close it here


def test_disk_full_in_the_writer_thread_neither_hangs_nor_raises(tmp_path, errors, monkeypatch):
    from tensorboardX import record_writer

    lg = TensorBoardLogger(tmp_path, max_queue=2)
    lg.log_metrics({"loss": 1.0}, 0)
    lg.save()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    # A dead writer thread would leave the queue full and block add_scalar forever: run it on a watchdog thread.
    done = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            for step in range(1, 200):
                lg.log_metrics({"loss": float(step)}, step)
            lg.finalize("success")
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(20), "logging blocked after the writer thread hit ENOSPC"
    assert failures == []
    assert lg.error.errno == errno.ENOSPC
    assert len(errors.messages) == 1 and "No space left" in errors.messages[0]
    lg.log_metrics({"loss": 0.0}, 500)  # later writes are skipped quietly
    assert len(errors.messages) == 1


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path, errors):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        lg = TensorBoardLogger(ro)
        exercise(lg)
        assert isinstance(lg.error, PermissionError) and len(errors.messages) == 1
    finally:
        ro.chmod(0o755)


# -- the real TensorBoard server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=5) as resp:
        return json.load(resp)


@pytest.mark.slow
def test_real_tensorboard_server_serves_the_scalars_and_hparams(tmp_path):
    lg = TensorBoardLogger(tmp_path)
    lg.log_hyperparams({"lr": 0.1, "opt": {"name": "adam"}})
    log_losses(lg)
    lg.finalize("success")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", lg.root_dir, "--host", "127.0.0.1", "--port",
         str(port), "--load_fast=false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tags: dict = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "loss" not in tags.get("version_0", {}):
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")  # type: ignore[assignment]
            except OSError:
                pass
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with code {server.returncode}")
            time.sleep(0.2)
        assert set(tags.get("version_0", {})) == {"loss", "acc", "hp_metric"}, tags
        for tag, expected in (("loss", LOSSES), ("acc", {s: s / 100 for s in LOSSES})):
            rows = get_json(f"{base}/data/plugin/scalars/scalars?run=version_0&tag={tag}")
            assert [(step, value) for _wall, step, value in rows] == [(s, f32(v)) for s, v in expected.items()]
        groups = get_json(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"], "colParams": [],
            "startIndex": 0, "sliceSize": 10})
        (group,) = groups["sessionGroups"]  # type: ignore[index]
        assert group["name"] == "version_0" and group["hparams"] == {"lr": 0.1, "opt/name": "adam"}
        assert [(m["name"]["tag"], m["value"]) for m in group["metricValues"]] == [("hp_metric", -1.0)]
    finally:
        server.kill()
        server.wait(timeout=10)


# -- with the Trainer -------------------------------------------------------------------------------------------------
class Reg(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_trainer_run_writes_tensorboard_scalars_hparams_and_graph(tmp_path, kit):
    data = torch.utils.data.DataLoader(kit.dataset(8), batch_size=2)
    trainer = kit.trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False,
                          logger=TensorBoardLogger(tmp_path, log_graph=True))
    trainer.fit(Reg(), data)
    log_dir = str(tmp_path / "lightning_logs" / "version_0")
    assert trainer.log_dir == log_dir
    scalars = read_scalars(log_dir)
    assert [s for s, _ in scalars["train_loss"]] == [1, 3, 5, 7]
    assert scalars["epoch"] == [(1, 0.0), (3, 0.0), (5, 1.0), (7, 1.0)]
    assert scalars["hp_metric"] == [(0, -1.0)]
    values, _, _ = hparams_plugin(log_dir)
    assert values["lr"] == 0.1 and values["trainer/max_epochs"] == 2.0
    ea = EventAccumulator(log_dir)
    ea.Reload()
    assert len(ea.Graph().node) > 0
