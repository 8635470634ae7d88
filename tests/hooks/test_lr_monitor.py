"""LearningRateMonitor: Lightning's keys, steps and values on real fits (expected values checked against Lightning
2.6.6 with the same configurations: 12 samples, batch size 4 -> 3 batches per epoch, 2 epochs, log_every_n_steps=2).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from engine.errors import MisconfigurationException
from hooks.logger import Logger
from hooks.lr_monitor import LearningRateMonitor


class RecordingLogger(Logger):
    """Keeps every log_metrics call as (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "rec"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def lr_rows(self, *prefixes: str) -> list[tuple[int, dict[str, float]]]:
        prefixes = prefixes or ("lr-",)
        return [(s, {k: round(v, 6) for k, v in m.items()}) for s, m in self.rows
                if any(k.startswith(prefixes) for k in m)]


class Net(pl.LightningModule):
    def __init__(self, optimizers: Any, manual: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(4, 1)
        self.b = nn.Linear(4, 1)
        self._opt = optimizers
        self.automatic_optimization = not manual

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = nn.functional.mse_loss(self.a(batch[0]) + self.b(batch[0]), batch[1])
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()[0]
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self) -> Any:
        return self._opt(self)


def fit(optimizers: Any, monitor: LearningRateMonitor, manual: bool = False) -> RecordingLogger:
    torch.manual_seed(0)
    logger = RecordingLogger()
    loader = DataLoader(TensorDataset(torch.randn(12, 4), torch.randn(12, 1)), batch_size=4)
    trainer = pl.Trainer(max_epochs=2, logger=logger, callbacks=[monitor], log_every_n_steps=2,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Net(optimizers, manual), loader)
    return logger


def test_step_scheduler_logged_at_its_interval_on_log_batches() -> None:
    def opt(m: Net) -> Any:
        o = torch.optim.SGD(m.parameters(), lr=0.1)
        return [o], [{"scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.5), "interval": "step"}]

    mon = LearningRateMonitor()
    rows = fit(opt, mon).lr_rows()
    # on_train_batch_start of batches 1, 3, 5 ((b + 1) % 2 == 0), before that batch's step: lr = 0.1 * 0.5 ** b
    assert rows == [(1, {"lr-SGD": 0.05}), (3, {"lr-SGD": 0.0125}), (5, {"lr-SGD": 0.003125})]
    assert mon.lrs == {"lr-SGD": [0.05, 0.0125, 0.003125]}


def test_epoch_scheduler_with_param_groups_logged_at_epoch_start() -> None:
    def opt(m: Net) -> Any:
        o = torch.optim.SGD([{"params": m.a.parameters()}, {"params": m.b.parameters(), "lr": 0.01}], lr=0.1)
        return [o], [torch.optim.lr_scheduler.StepLR(o, 1, 0.5)]

    rows = fit(opt, LearningRateMonitor()).lr_rows()
    assert rows == [(0, {"lr-SGD/pg1": 0.1, "lr-SGD/pg2": 0.01}), (3, {"lr-SGD/pg1": 0.05, "lr-SGD/pg2": 0.005})]


def test_logging_interval_step_forces_every_scheduler_to_log_batches() -> None:
    def opt(m: Net) -> Any:
        o = torch.optim.SGD([{"params": m.a.parameters()}, {"params": m.b.parameters(), "lr": 0.01}], lr=0.1)
        return [o], [torch.optim.lr_scheduler.StepLR(o, 1, 0.5)]

    rows = fit(opt, LearningRateMonitor(logging_interval="step")).lr_rows()
    assert rows == [(1, {"lr-SGD/pg1": 0.1, "lr-SGD/pg2": 0.01}), (3, {"lr-SGD/pg1": 0.05, "lr-SGD/pg2": 0.005}),
                    (5, {"lr-SGD/pg1": 0.05, "lr-SGD/pg2": 0.005})]


def test_logging_interval_epoch_logs_step_schedulers_only_at_epoch_start() -> None:
    def opt(m: Net) -> Any:
        o = torch.optim.SGD(m.parameters(), lr=0.1)
        return [o], [{"scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.5), "interval": "step"}]

    rows = fit(opt, LearningRateMonitor(logging_interval="epoch")).lr_rows()
    assert rows == [(0, {"lr-SGD": 0.1}), (3, {"lr-SGD": 0.0125})]


def test_two_optimizers_of_one_class_without_scheduler_manual_optimization() -> None:
    def opt(m: Net) -> Any:
        return [torch.optim.SGD(m.a.parameters(), lr=0.1), torch.optim.SGD(m.b.parameters(), lr=0.2)]

    rows = fit(opt, LearningRateMonitor(), manual=True).lr_rows()
    both = {"lr-SGD": 0.1, "lr-SGD-1": 0.2}
    # optimizers without a scheduler log at every epoch start and every logging batch start (Lightning 2.x)
    assert rows == [(0, both), (1, both), (3, both), (3, both), (5, both)]


def test_scheduler_name_momentum_and_weight_decay() -> None:
    def opt(m: Net) -> Any:
        o = torch.optim.Adam(m.parameters(), lr=0.1, weight_decay=0.01)
        return [o], [{"scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.5), "name": "my_lr"}]

    mon = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    logger = fit(opt, mon)
    assert logger.lr_rows("my_lr") == [
        (0, {"my_lr": 0.1, "my_lr-momentum": 0.9, "my_lr-weight_decay": 0.01}),
        (3, {"my_lr": 0.05, "my_lr-momentum": 0.9, "my_lr-weight_decay": 0.01}),
    ]
    assert mon.last_momentum_values == {"my_lr-momentum": 0.9}


def test_named_param_groups_and_key_prefix() -> None:
    def opt(m: Net) -> Any:
        return torch.optim.SGD([{"params": m.a.parameters(), "name": "enc"},
                                {"params": m.b.parameters(), "name": "dec", "lr": 0.3}], lr=0.1)

    rows = fit(opt, LearningRateMonitor(logging_interval="epoch", log_key_prefix="optim/")).lr_rows("optim/")
    values = {"optim/lr-SGD/enc": 0.1, "optim/lr-SGD/dec": 0.3}
    assert rows == [(0, values), (3, values)]


def test_duplicate_param_group_names_raise() -> None:
    def opt(m: Net) -> Any:
        return torch.optim.SGD([{"params": m.a.parameters(), "name": "x"},
                                {"params": m.b.parameters(), "name": "x"}], lr=0.1)

    with pytest.raises(MisconfigurationException, match="identical `name` values"):
        fit(opt, LearningRateMonitor())


def test_log_momentum_warns_when_an_optimizer_has_none() -> None:
    def opt(m: Net) -> Any:
        return torch.optim.Adagrad(m.parameters(), lr=0.1)

    with pytest.warns(RuntimeWarning, match="log_momentum=True, but some optimizers do not have momentum"):
        logger = fit(opt, LearningRateMonitor(logging_interval="epoch", log_momentum=True))
    assert logger.lr_rows()[0] == (0, {"lr-Adagrad": 0.1, "lr-Adagrad-momentum": 0})


def test_lr_values_reach_callback_metrics() -> None:
    def opt(m: Net) -> Any:
        return torch.optim.SGD(m.parameters(), lr=0.1)

    mon = LearningRateMonitor(logging_interval="epoch")
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=1, logger=RecordingLogger(), callbacks=[mon], enable_progress_bar=False,
                         enable_model_summary=False)
    loader = DataLoader(TensorDataset(torch.randn(4, 4), torch.randn(4, 1)), batch_size=2)
    trainer.fit(Net(opt), loader)
    assert trainer.callback_metrics["lr-SGD"].item() == pytest.approx(0.1)


def test_no_logger_raises_lightnings_error() -> None:
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[LearningRateMonitor()], enable_progress_bar=False,
                         enable_model_summary=False)
    loader = DataLoader(TensorDataset(torch.randn(4, 4), torch.randn(4, 1)), batch_size=2)
    with pytest.raises(MisconfigurationException,
                       match="Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger"):
        trainer.fit(Net(lambda m: torch.optim.SGD(m.parameters(), lr=0.1)), loader)


def test_bad_logging_interval() -> None:
    with pytest.raises(MisconfigurationException, match=r"logging_interval='steps'.*`step` or `epoch` or `None`"):
        LearningRateMonitor(logging_interval="steps")
