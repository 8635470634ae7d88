"""Framework messages are standard-library `logging` records of the `engine` logger (caplog sees them) with
Lightning's informational text, and every framework warning points at the user's line, not at statetrain's or
pydantic's internals. `PossibleUserWarning` is importable from Lightning's path and used where Lightning uses it."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings

import pytest

import engine as pl
from engine import log as log_module
from engine.utilities.warnings import PossibleUserWarning, disable_possible_user_warnings

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch):
    for name in ("STATETRAIN_LOG_FORMAT", "STATETRAIN_LOG_LEVEL", "STATETRAIN_LOG_ALL_RANKS"):
        monkeypatch.delenv(name, raising=False)
    log_module.reset()
    yield
    logging.getLogger("engine").setLevel(logging.NOTSET)
    log_module.reset()


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("engine")]


# -- records -------------------------------------------------------------------------------------------------------
def test_seed_everything_says_seed_set_as_a_logging_record(caplog) -> None:
    with caplog.at_level(logging.INFO):
        pl.seed_everything(42)
    (record,) = [r for r in caplog.records if r.getMessage() == "Seed set to 42"]
    assert record.name == "engine" and record.levelno == logging.INFO
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pl.seed_everything(42, verbose=False)
    assert "Seed set to 42" not in messages(caplog)


def test_batch_limit_lines_have_lightnings_text(caplog) -> None:
    with caplog.at_level(logging.INFO):
        pl.Trainer(limit_train_batches=1, limit_val_batches=1.0, limit_test_batches=1, val_check_interval=1, **QUIET)
    assert messages(caplog)[:4] == [
        "`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used.",
        "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..",
        "`Trainer(limit_test_batches=1)` was configured so 1 batch will be used.",
        "`Trainer(val_check_interval=1)` was configured so validation will run after every batch.",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pl.Trainer(**QUIET)  # defaults (None) say nothing, as in Lightning
        pl.Trainer(limit_train_batches=2, **QUIET)
    assert not [m for m in messages(caplog) if "was configured so" in m]


def test_fast_dev_run_line(caplog) -> None:
    with caplog.at_level(logging.INFO):
        pl.Trainer(fast_dev_run=True, **QUIET)
    assert ("Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es). Logging and "
            "checkpointing is suppressed.") in messages(caplog)


def test_fit_stopped_reason_and_time_limit_lines(kit, caplog) -> None:
    with caplog.at_level(logging.INFO):
        trainer = kit.trainer(max_epochs=1, logger=False, **QUIET)
        trainer.fit(kit.Model(), kit.loader(4))
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in messages(caplog)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer = kit.trainer(max_time="00:00:00:00", logger=False, **QUIET)
        trainer.fit(kit.Model(), kit.loader(4))
    assert "Time limit reached. Elapsed time is 0:00:00. Signaling Trainer to stop." in messages(caplog)
    assert "`Trainer.fit` stopped: `trainer.should_stop` was set." in messages(caplog)


def test_records_carry_the_structured_keys(caplog) -> None:
    with caplog.at_level(logging.INFO):
        log_module.log.info("fit started", model="Tiny", epochs=2)
    (record,) = [r for r in caplog.records if r.name == "engine"]
    assert record.getMessage() == "fit started model=Tiny epochs=2"
    assert record.event_dict["model"] == "Tiny" and record.event_dict["epochs"] == 2
    assert record.pathname == __file__  # the record points at the code that logged it


def test_a_users_root_handler_prints_each_message_once(capsys) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        log_module.log.info("hello", a=1)
    finally:
        root.removeHandler(handler)
    assert buf.getvalue() == "hello a=1\n"
    assert capsys.readouterr().err == ""  # our console handler stood aside
    log_module.log.info("again")
    assert capsys.readouterr().err == "again\n"  # no user handler: ours prints


def test_a_users_level_on_the_engine_logger_is_kept(kit, caplog) -> None:
    logging.getLogger("engine").setLevel(logging.WARNING)
    with caplog.at_level(logging.INFO):
        pl.Trainer(limit_train_batches=1, **QUIET)  # configures the message log again
        pl.seed_everything(1)
    assert messages(caplog) == []


def test_a_plain_script_prints_lightnings_lines_without_any_logging_setup() -> None:
    code = ("import engine as pl; from engine.utilities import rank_zero_info; pl.seed_everything(42); "
            "rank_zero_info('from rank zero'); pl.Trainer(limit_train_batches=1, enable_progress_bar=False)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATETRAIN_LOG")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[:3] == [
        "Seed set to 42", "from rank zero",
        "`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used."]


# -- warnings point at the user's line --------------------------------------------------------------------------------
def _here() -> int:
    return sys._getframe(1).f_lineno


def test_log_every_n_steps_warning_points_at_the_fit_call(kit, tmp_path) -> None:
    trainer = kit.trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)
    model, loader = kit.Model(), kit.loader(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _here() + 1
        trainer.fit(model, loader)
    (w,) = [w for w in caught if "logging interval" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, line)
    assert w.category is PossibleUserWarning


def test_precision_16_warning_points_at_the_trainer_call() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _here() + 1
        pl.Trainer(precision=16, accelerator="cpu", **QUIET)
    (w,) = [w for w in caught if "legacy alias" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, line)


def test_max_epochs_default_warning_is_a_possible_user_warning_at_the_fit_call(kit) -> None:
    class StopAtOnce(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.should_stop = True

    trainer = kit.trainer(logger=False, callbacks=[StopAtOnce()], **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _here() + 1
        trainer.fit(kit.Model(), kit.loader(4))
    (w,) = [w for w in caught if "`max_epochs` was not set" in str(w.message)]
    assert (w.filename, w.lineno, w.category) == (__file__, line, PossibleUserWarning)


def test_warnings_from_inside_the_loop_point_at_the_fit_call(kit) -> None:
    class Stopper(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = True  # refused by min_epochs: warn_once inside the fit machine

    trainer = kit.trainer(max_epochs=2, min_epochs=2, logger=False, callbacks=[Stopper()], **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _here() + 1
        trainer.fit(kit.Model(), kit.loader(4))
    (w,) = [w for w in caught if "min_epochs" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, line)


def test_rank_zero_warn_from_a_framework_hook_points_at_the_user(kit, tmp_path) -> None:
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "old.txt").write_text("x")
    from hooks.checkpoint import ModelCheckpoint

    cb = ModelCheckpoint(dirpath=tmp_path / "ckpts")
    trainer = kit.trainer(max_epochs=1, logger=False, callbacks=[cb], enable_progress_bar=False,
                          enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _here() + 1
        trainer.fit(kit.Model(), kit.loader(4))
    (w,) = [w for w in caught if "exists and is not empty" in str(w.message)]
    assert (w.filename, w.lineno) == (__file__, line)


def test_possible_user_warning_paths_and_filter() -> None:
    from engine.errors import PossibleUserWarning as from_errors

    assert PossibleUserWarning is from_errors and issubclass(PossibleUserWarning, UserWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disable_possible_user_warnings()
        warnings.warn("maybe", PossibleUserWarning)
        warnings.warn("surely", UserWarning)
    assert [str(w.message) for w in caught] == ["surely"]


# -- removed 1.x flags: the advice fits the value ------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "fix"), [
    ({"gpus": 0}, r"gpus=0 meant the CPU: use Trainer\(accelerator='cpu'\)\.$"),
    ({"gpus": None}, r"gpus=None meant the CPU: use Trainer\(accelerator='cpu'\)\.$"),
    ({"gpus": "0"}, r"gpus='0' meant the CPU: use Trainer\(accelerator='cpu'\)\.$"),
    ({"gpus": []}, r"gpus=\[\] meant the CPU: use Trainer\(accelerator='cpu'\)\.$"),
    ({"gpus": 2}, r"use Trainer\(accelerator='gpu', devices=2\)\.$"),
    ({"gpus": "0,1"}, r"use Trainer\(accelerator='gpu', devices='0,1'\)\.$"),
    ({"tpu_cores": 0}, r"tpu_cores=0 meant no TPU: use Trainer\(accelerator='cpu'\)\.$"),
    ({"progress_bar_refresh_rate": 0}, r"turned the bar off: use enable_progress_bar=False\.$"),
    ({"weights_summary": None}, r"turned the summary off: use enable_model_summary=False\.$"),
    ({"track_grad_norm": -1}, r"track_grad_norm=-1 was off: drop the flag\.$"),
    ({"stochastic_weight_avg": False}, r"was off: drop the flag\.$"),
    ({"resume_from_checkpoint": None}, r"was off: drop the flag\.$"),
])
def test_removed_flag_advice_matches_what_the_value_meant(flags, fix) -> None:
    with pytest.raises(TypeError, match=r"is a Lightning 1\.x flag that was removed in Lightning 2\.0; (\w+=\S+ )?" + fix):
        pl.Trainer(**flags)
