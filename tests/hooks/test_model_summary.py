"""ModelSummary: Lightning's table and totals, depth rules, and its one message through engine.log."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine import log as log_module
from engine.log import capture_logs
from hooks.model_summary import ModelSummary, human_count, summarize


class Net(pl.LightningModule):
    """enc: Linear(4, 8) + BatchNorm1d(8) + Sequential(Linear(8, 2), ReLU); head: frozen Linear(2, 1); drop: eval;
    a loose Parameter(3) and a buffer of 100 (buffers are not parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Sequential(nn.Linear(8, 2), nn.ReLU()))
        self.head = nn.Linear(2, 1)
        self.head.requires_grad_(False)
        self.drop = nn.Dropout().eval()
        self.scale = nn.Parameter(torch.ones(3))
        self.register_buffer("running", torch.zeros(100))

    def forward(self, x):
        return self.head(self.enc(x)) * self.scale.sum()

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# enc = 40 + 16 + 18 = 74; head = 3 (frozen); scale = 3
TRAINABLE, FROZEN = 74 + 3, 3


@pytest.fixture(autouse=True)
def _default_messages(monkeypatch):
    monkeypatch.delenv("STATETRAIN_LOG_FORMAT", raising=False)
    monkeypatch.delenv("STATETRAIN_LOG_LEVEL", raising=False)
    log_module.reset()
    yield
    log_module.reset()


def rows(summary) -> list[tuple[str, ...]]:
    return [r[1:] for r in summary.rows]


def test_counts_with_frozen_layers_and_buffers() -> None:
    s = summarize(Net())
    assert (s.trainable, s.non_trainable, s.total) == (TRAINABLE, FROZEN, TRAINABLE + FROZEN)
    assert s.size_mb == pytest.approx((TRAINABLE + FROZEN) * 4 / 1e6)
    assert (s.train_modules, s.eval_modules) == (7, 1)  # the 8 submodules (not the root); drop is in eval mode


def test_depth_one_lists_children_and_other_params() -> None:
    assert rows(summarize(Net(), 1)) == [
        ("enc", "Sequential", "74  ", "train"), ("head", "Linear", "3  ", "train"),
        ("drop", "Dropout", "0  ", "eval"), ("other params", "n/a", "3  ", "n/a")]


def test_depth_two_and_all() -> None:
    assert [r[0] for r in rows(summarize(Net(), 2))] == ["enc", "enc.0", "enc.1", "enc.2", "head", "drop"]
    assert [r[0] for r in rows(summarize(Net(), -1))] == [
        "enc", "enc.0", "enc.1", "enc.2", "enc.2.0", "enc.2.1", "head", "drop"]
    assert rows(summarize(Net(), -1))[4] == ("enc.2.0", "Linear", "18  ", "train")


def test_depth_zero_has_only_totals() -> None:
    s = summarize(Net(), 0)
    assert [r[1] for r in s.rows] == ["other params"]  # Lightning: every parameter is "other" at depth 0
    assert s.total == TRAINABLE + FROZEN


def test_table_text_matches_lightning_layout() -> None:
    text = summarize(Net(), 1).table()
    assert text.splitlines() == [
        "  | Name         | Type       | Params | Mode ",
        "----------------------------------------------------",
        "0 | enc          | Sequential | 74     | train",
        "1 | head         | Linear     | 3      | train",
        "2 | drop         | Dropout    | 0      | eval ",
        "  | other params | n/a        | 3      | n/a  ",
        "----------------------------------------------------",
        "77        Trainable params",
        "3         Non-trainable params",
        "80        Total params",
        "0.000     Total estimated model params size (MB)",
        "7         Modules in train mode",
        "1         Modules in eval mode",
    ]


@pytest.mark.parametrize(("n", "text"), [(0, "0  "), (123, "123  "), (1234, "1.2 K"), (132_000, "132 K"),
                                         (2_000_000, "2.0 M"), (3e9, "3.0 B"), (4e14, "400 T"), (5e15, "5,000 T")])
def test_human_count(n, text) -> None:
    assert human_count(n) == text


def test_precision_sets_the_size_estimate() -> None:
    model = nn.Linear(1000, 1000)  # 1,001,000 parameters
    assert summarize(model, precision="32-true").size_mb == pytest.approx(4.004)
    assert summarize(model, precision="bf16-true").size_mb == pytest.approx(2.002)
    assert summarize(model, precision="64-true").size_mb == pytest.approx(8.008)
    assert summarize(model, precision="16-mixed").size_mb == pytest.approx(4.004)  # fp32 weights under AMP


@pytest.mark.parametrize("bad", [-2, 1.5, "1", True])
def test_bad_max_depth(bad) -> None:
    with pytest.raises(ValueError, match=r"ModelSummary\(max_depth=.*\): expected -1"):
        ModelSummary(max_depth=bad)


def _fit(callbacks, **flags) -> None:
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, callbacks=callbacks, enable_model_summary=True, enable_progress_bar=False,
                         logger=False, **flags)
    trainer.fit(Net(), data)


def test_fit_writes_one_message_with_the_table_and_counts() -> None:
    with capture_logs() as logs:
        _fit([ModelSummary(max_depth=2)])
    (event,) = [r for r in logs if r["event"] == "Model summary"]
    assert (event["trainable"], event["non_trainable"], event["total"]) == (TRAINABLE, FROZEN, TRAINABLE + FROZEN)
    assert event["size_mb"] == pytest.approx(80 * 4 / 1e6)
    assert (event["train_modules"], event["eval_modules"]) == (7, 1)
    assert "1 | enc.0 | Linear      | 40     | train" in event["table"]


def test_console_output_still_reads_as_a_table(capsys) -> None:
    _fit([ModelSummary()])
    err = capsys.readouterr().err
    assert "Model summary trainable=77 non_trainable=3 total=80" in err
    assert "0 | enc          | Sequential | 74     | train" in err
    assert "77        Trainable params\n3         Non-trainable params\n80        Total params\n" in err


def test_json_mode_is_one_parsable_event() -> None:
    buf = io.StringIO()
    log_module.configure(log_format="json", stream=buf)
    _fit([ModelSummary()])
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    (event,) = [r for r in records if r["event"] == "Model summary"]
    assert event["level"] == "info" and event["total"] == 80 and event["non_trainable"] == 3
    assert event["table"].splitlines()[0].startswith("  | Name")
    assert event["table"].splitlines()[-1] == "1         Modules in eval mode"


def test_max_depth_zero_and_other_ranks_write_nothing(monkeypatch) -> None:
    with capture_logs() as logs:
        _fit([ModelSummary(max_depth=0)])
    assert [r for r in logs if r["event"] == "Model summary"] == []
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    with capture_logs() as logs:
        _fit([ModelSummary()])
    assert [r for r in logs if r["event"] == "Model summary"] == []
