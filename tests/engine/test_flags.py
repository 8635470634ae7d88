"""Every implemented Trainer flag, end to end on a tiny real model: hook calls, batches and steps are counted and
compared with what Lightning 2.6.6 does for the same script (the expected numbers were recorded from it).

Default data: 10 training batches (20 samples, batch 2) and 5 validation batches (9 samples, the last one short).
"""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

import engine as pl
from engine.errors import MisconfigurationException

TRAIN, VAL = 20, 9  # samples -> 10 train batches, 5 val batches


def fit(kit, model=None, train=TRAIN, val=VAL, recorder=None, **flags):
    """Fit `model` (default TinyModel) with a Recorder; returns (trainer, model, recorder)."""
    model = model if model is not None else kit.Model()
    rec = recorder if recorder is not None else kit.Recorder()
    trainer = kit.trainer(callbacks=[rec], **flags)
    trainer.fit(model, kit.loader(train), kit.loader(val, seed=1) if val else None)
    return trainer, model, rec


# --- epochs and steps ------------------------------------------------------------------------------------------
def test_max_epochs(kit) -> None:
    trainer, _, rec = fit(kit, max_epochs=3)
    assert rec.count("epoch_start") == 3 and rec.count("batch") == 30
    assert rec.epoch_ends() == [(0, 10), (1, 20), (2, 30)]
    assert rec.val_runs() == [(0, 10, 5), (1, 20, 5), (2, 30, 5)]
    assert rec.val_runs(sanity=True) == [(0, 0, 2)]
    assert (trainer.current_epoch, trainer.global_step) == (3, 30)


def test_min_epochs_keeps_training_after_early_stop_at_epoch_end(kit) -> None:
    trainer, _, rec = fit(kit, recorder=kit.Recorder(stop_at_epoch_end=0), max_epochs=5, min_epochs=3)
    assert rec.epoch_ends() == [(0, 10), (1, 20), (2, 30)]
    assert (trainer.current_epoch, trainer.global_step) == (3, 30)


def test_min_epochs_keeps_training_after_early_stop_mid_epoch(kit) -> None:
    trainer, _, rec = fit(kit, recorder=kit.Recorder(stop_at=(0, 2)), max_epochs=5, min_epochs=2)
    assert rec.epoch_ends() == [(0, 10), (1, 20)]
    assert rec.val_runs() == [(0, 10, 5), (1, 20, 5)]
    assert (trainer.current_epoch, trainer.global_step) == (2, 20)


def test_should_stop_mid_epoch_ends_the_epoch_after_validating(kit) -> None:
    trainer, _, rec = fit(kit, recorder=kit.Recorder(stop_at=(1, 2)), max_epochs=5)
    # Lightning: the epoch ends right after that batch; validation still runs once, then on_train_epoch_end
    assert rec.epoch_ends() == [(0, 10), (1, 13)]
    assert rec.val_runs() == [(0, 10, 5), (1, 13, 5)]
    assert (trainer.current_epoch, trainer.global_step) == (2, 13)
    assert trainer.should_stop is True


def test_max_steps_stops_mid_epoch_and_still_ends_the_epoch(kit) -> None:
    trainer, model, rec = fit(kit, train=10, max_steps=7)  # 5 batches per epoch
    assert rec.count("batch") == 7 and len(model.seen) == 7
    assert rec.epoch_ends() == [(0, 5), (1, 7)]  # on_train_epoch_end is called for the cut epoch
    assert rec.val_runs() == [(0, 5, 5)]  # no validation at the cut
    assert (trainer.current_epoch, trainer.global_step) == (2, 7)
    assert trainer.max_epochs == -1


def test_max_steps_on_an_epoch_boundary(kit) -> None:
    trainer, _, rec = fit(kit, train=10, max_steps=10)
    assert rec.epoch_ends() == [(0, 5), (1, 10)]
    assert rec.val_runs() == [(0, 5, 5), (1, 10, 5)]
    assert (trainer.current_epoch, trainer.global_step) == (2, 10)


def test_min_steps_keeps_training_after_early_stop(kit) -> None:
    trainer, _, rec = fit(kit, train=10, recorder=kit.Recorder(stop_at=(0, 0)), max_epochs=10, min_steps=12)
    assert rec.epoch_ends() == [(0, 5), (1, 10), (2, 12)]
    assert (trainer.current_epoch, trainer.global_step) == (3, 12)


# --- batch limits ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("limit", "per_epoch"), [(3, 3), (0.5, 5), (1.0, 10), (25, 10)])
def test_limit_train_batches(kit, limit, per_epoch) -> None:
    trainer, model, rec = fit(kit, max_epochs=2, limit_train_batches=limit)
    assert trainer.num_training_batches == per_epoch
    assert rec.epoch_ends() == [(0, per_epoch), (1, 2 * per_epoch)]
    assert [e[4] for e in rec.events if e[0] == "batch"][per_epoch - 1] is True  # is_last_batch at the limit
    assert [ids for _, ids in model.seen][:per_epoch] == [[2 * i, 2 * i + 1] for i in range(per_epoch)]
    assert trainer.global_step == 2 * per_epoch


@pytest.mark.parametrize("limit", [0, 0.0])
def test_limit_train_batches_zero_skips_training(kit, limit) -> None:
    calls = {"train_dataloader": 0}

    class Model(kit.Model):
        def train_dataloader(self):
            calls["train_dataloader"] += 1
            return kit.loader(TRAIN)

    rec = kit.Recorder()
    trainer = kit.trainer(max_epochs=2, limit_train_batches=limit, callbacks=[rec])
    trainer.fit(Model(), val_dataloaders=kit.loader(VAL))
    assert calls["train_dataloader"] == 0
    assert rec.count("epoch_start") == rec.count("batch") == rec.count("epoch_end") == 0
    assert (trainer.current_epoch, trainer.global_step) == (0, 0)
    assert trainer.state.status == "finished"


def test_limit_train_batches_zero_still_runs_the_sanity_check(kit) -> None:
    # Lightning: fit with limit_train_batches=0 still runs the 2-batch sanity check (then skips training)
    trainer, _, rec = fit(kit, max_epochs=2, limit_train_batches=0)
    assert rec.val_runs(sanity=True) == [(0, 0, 2)]
    assert rec.count("batch") == 0


@pytest.mark.parametrize(("limit", "batches"), [(2, 2), (0.5, 2), (1.0, 5), (9, 5)])
def test_limit_val_batches(kit, limit, batches) -> None:
    trainer, _, rec = fit(kit, max_epochs=1, limit_val_batches=limit)
    assert trainer.num_val_batches == [batches]
    assert rec.val_runs() == [(0, 10, batches)]
    assert rec.val_runs(sanity=True) == [(0, 0, min(2, batches))]


@pytest.mark.parametrize("limit", [0, 0.0])
def test_limit_val_batches_zero_disables_validation(kit, limit) -> None:
    calls = {"val_dataloader": 0}

    class Model(kit.Model):
        def val_dataloader(self):
            calls["val_dataloader"] += 1
            return kit.loader(VAL)

    rec = kit.Recorder()
    trainer = kit.trainer(max_epochs=1, limit_val_batches=limit, callbacks=[rec])
    trainer.fit(Model(), kit.loader(TRAIN))
    assert rec.val_runs() == [] and rec.val_runs(sanity=True) == []
    assert calls["val_dataloader"] == 0
    assert trainer.global_step == 10


@pytest.mark.parametrize(("limit", "batches"), [(2, 2), (0.5, 3), (1.0, 6)])
def test_limit_test_batches(kit, limit, batches) -> None:
    rec = kit.Recorder()
    trainer = kit.trainer(limit_test_batches=limit, callbacks=[rec])
    trainer.test(kit.Model(), kit.loader(12), verbose=False)
    assert rec.count("test_batch") == batches
    assert trainer.num_test_batches == [batches]


@pytest.mark.parametrize(("limit", "batches"), [(2, 2), (0.5, 3), (1.0, 6)])
def test_limit_predict_batches(kit, limit, batches) -> None:
    rec = kit.Recorder()
    trainer = kit.trainer(limit_predict_batches=limit, callbacks=[rec])
    predictions = trainer.predict(kit.Model(), kit.loader(12))
    assert len(predictions) == rec.count("predict_batch") == batches


# --- when validation runs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("interval", "steps"), [(0.25, [2, 4, 6, 8, 10]), (0.5, [5, 10]), (1.0, [10]),
                                                   (3, [3, 6, 9]), (10, [10])])
def test_val_check_interval_within_an_epoch(kit, interval, steps) -> None:
    trainer, model, rec = fit(kit, max_epochs=1, val_check_interval=interval)
    assert [r[1] for r in rec.val_runs()] == steps
    assert all(r[2] == 5 for r in rec.val_runs())
    assert trainer.global_step == 10 and len(model.seen) == 10


def test_val_check_interval_int_restarts_each_epoch(kit) -> None:
    _, _, rec = fit(kit, max_epochs=2, val_check_interval=3)
    assert [r[:2] for r in rec.val_runs()] == [(0, 3), (0, 6), (0, 9), (1, 13), (1, 16), (1, 19)]


def test_val_check_interval_int_across_epochs_without_check_val_every_n_epoch(kit) -> None:
    trainer, _, rec = fit(kit, train=10, max_epochs=3, val_check_interval=7, check_val_every_n_epoch=None)
    assert [r[:2] for r in rec.val_runs()] == [(1, 7), (2, 14)]
    assert trainer.global_step == 15


def test_val_check_interval_larger_than_the_epoch_is_an_error(kit) -> None:
    trainer = kit.trainer(max_epochs=1, val_check_interval=20)
    with pytest.raises(ValueError, match=r"val_check_interval.*20.*10"):
        trainer.fit(kit.Model(), kit.loader(TRAIN), kit.loader(VAL))
    assert trainer.global_step == 0


def test_check_val_every_n_epoch(kit) -> None:
    trainer, _, rec = fit(kit, train=6, max_epochs=4, check_val_every_n_epoch=2)
    assert [r[:2] for r in rec.val_runs()] == [(1, 6), (3, 12)]
    assert trainer.global_step == 12


@pytest.mark.parametrize(("steps", "sanity_runs"), [(0, []), (2, [(0, 0, 2)]), (-1, [(0, 0, 5)])])
def test_num_sanity_val_steps(kit, steps, sanity_runs) -> None:
    trainer, model, rec = fit(kit, train=4, max_epochs=1, num_sanity_val_steps=steps)
    assert rec.val_runs(sanity=True) == sanity_runs
    assert rec.count("sanity_start") == len(sanity_runs)
    assert rec.val_runs() == [(0, 2, 5)]
    assert [ids for _, ids in model.seen] == [[0, 1], [2, 3]]
    assert trainer.global_step == 2 and rec.count("epoch_start") == 1


# --- debugging flags -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "n"), [(True, 1), (3, 3)])
def test_fast_dev_run_fit(kit, flag, n) -> None:
    trainer, model, rec = fit(kit, fast_dev_run=flag, max_epochs=5)
    assert rec.val_runs(sanity=True) == [] and rec.count("sanity_start") == 0
    assert len(model.seen) == n and rec.count("epoch_start") == 1
    assert rec.val_runs() == [(0, n, n)]
    assert (trainer.current_epoch, trainer.global_step) == (1, n)
    assert trainer.max_steps == n and trainer.num_training_batches == n


@pytest.mark.parametrize(("flag", "n"), [(True, 1), (3, 3)])
def test_fast_dev_run_test_and_predict(kit, flag, n) -> None:
    rec = kit.Recorder()
    trainer = kit.trainer(fast_dev_run=flag, callbacks=[rec])
    trainer.test(kit.Model(), kit.loader(12), verbose=False)
    assert len(trainer.predict(kit.Model(), kit.loader(12))) == n
    assert rec.count("test_batch") == rec.count("predict_batch") == n


@pytest.mark.parametrize(("overfit", "batches", "val_batches"), [(2, 2, 2), (0.3, 3, 1)])
def test_overfit_batches_replaces_a_shuffled_loader(kit, overfit, batches, val_batches) -> None:
    rec = kit.Recorder()
    model = kit.Model()
    trainer = kit.trainer(max_epochs=2, overfit_batches=overfit, callbacks=[rec])
    with pytest.warns(UserWarning, match="overfit"):
        trainer.fit(model, kit.loader(TRAIN, shuffle=True), kit.loader(VAL))
    first = [[2 * i, 2 * i + 1] for i in range(batches)]  # sequential, not shuffled
    assert [ids for epoch, ids in model.seen if epoch == 0] == first
    assert [ids for epoch, ids in model.seen if epoch == 1] == first  # the same batches every epoch
    assert rec.val_runs() == [(0, batches, val_batches), (1, 2 * batches, val_batches)]
    assert trainer.global_step == 2 * batches


def test_detect_anomaly(kit) -> None:
    seen = []

    class Model(kit.Model):
        def training_step(self, batch, batch_idx):
            seen.append(torch.is_anomaly_enabled())
            return super().training_step(batch, batch_idx)

    kit.trainer(max_epochs=1, limit_train_batches=2, detect_anomaly=True).fit(Model(), kit.loader(TRAIN))
    assert seen == [True, True]
    assert torch.is_anomaly_enabled() is False  # switched off again after fit
    kit.trainer(max_epochs=1, limit_train_batches=2).fit(Model(), kit.loader(TRAIN))
    assert seen[2:] == [False, False]


def test_deterministic(kit) -> None:
    torch.use_deterministic_algorithms(False)
    kit.trainer(max_epochs=1, limit_train_batches=1, deterministic=True).fit(kit.Model(), kit.loader(TRAIN))
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # the autouse fixture restores it too
    kit.trainer(max_epochs=1, limit_train_batches=1, deterministic="warn")
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


class _ModeProbe:
    """Records (inference_mode, grad_enabled, module.training) inside each step."""

    @staticmethod
    def model(kit):
        class Model(kit.Model):
            def __init__(self):
                super().__init__()
                self.modes: dict[str, list[tuple[bool, bool, bool]]] = {}

            def _probe(self, where):
                key = "sanity" if where == "val" and self.trainer.sanity_checking else where
                key = f"{self.trainer.state.fn}:{key}"
                self.modes.setdefault(key, []).append(
                    (torch.is_inference_mode_enabled(), torch.is_grad_enabled(), self.training))

            def training_step(self, batch, batch_idx):
                self._probe("train")
                return super().training_step(batch, batch_idx)

            def validation_step(self, batch, batch_idx):
                self._probe("val")
                return super().validation_step(batch, batch_idx)

            def test_step(self, batch, batch_idx):
                self._probe("test")
                return super().test_step(batch, batch_idx)

            def predict_step(self, batch, batch_idx):
                self._probe("predict")
                return super().predict_step(batch, batch_idx)

        return Model()


@pytest.mark.parametrize("inference", [True, False])
def test_inference_mode(kit, inference) -> None:
    model = _ModeProbe.model(kit)
    trainer = kit.trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, inference_mode=inference)
    trainer.fit(model, kit.loader(TRAIN), kit.loader(VAL))
    trainer.validate(model, kit.loader(VAL), verbose=False)
    trainer.test(model, kit.loader(VAL), verbose=False)
    trainer.predict(model, kit.loader(VAL))
    # in-fit validation (sanity included) is always no_grad without inference mode, in eval mode
    assert set(model.modes["fit:train"]) == {(False, True, True)}
    assert set(model.modes["fit:sanity"]) == set(model.modes["fit:val"]) == {(False, False, False)}
    expected = {(inference, False, False)}
    assert set(model.modes["validate:val"]) == set(model.modes["test:test"]) == expected
    assert set(model.modes["predict:predict"]) == expected
    assert model.training is True


# --- dataloader reloading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "epochs", "loads"), [(0, 4, 1), (1, 3, 3), (2, 4, 2), (3, 4, 2)])
def test_reload_dataloaders_every_n_epochs(kit, n, epochs, loads) -> None:
    calls = {"train_dataloader": 0, "val_dataloader": 0}

    class Model(kit.Model):
        def train_dataloader(self):
            calls["train_dataloader"] += 1
            return kit.loader(4)

        def val_dataloader(self):
            calls["val_dataloader"] += 1
            return kit.loader(VAL)

    rec = kit.Recorder()
    trainer = kit.trainer(max_epochs=epochs, reload_dataloaders_every_n_epochs=n, callbacks=[rec])
    trainer.fit(Model())
    assert calls == {"train_dataloader": loads, "val_dataloader": loads}
    assert trainer.global_step == 2 * epochs and len(rec.val_runs()) == epochs


# --- hardware ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
@pytest.mark.parametrize("devices", [1, "auto"])
def test_accelerator_and_devices_that_exist(kit, accelerator, devices) -> None:
    if accelerator == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        pytest.skip("'auto' picks an accelerator here; this test checks the CPU fallback")
    trainer = kit.trainer(max_epochs=1, limit_train_batches=2, accelerator=accelerator, devices=devices)
    model = kit.Model()
    trainer.fit(model, kit.loader(TRAIN))
    assert trainer.strategy.root_device == torch.device("cpu")
    assert model.device == torch.device("cpu")
    assert trainer.num_devices == 1 and trainer.world_size == 1 and trainer.global_step == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("accelerator", ["cuda", "gpu"])
def test_cuda_accelerator_without_cuda_raises(kit, accelerator) -> None:
    if accelerator == "gpu" and torch.backends.mps.is_available():
        pytest.skip("'gpu' means MPS here")
    with pytest.raises(MisconfigurationException, match=rf"accelerator='{accelerator}'.*CUDA"):
        kit.trainer(accelerator=accelerator)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is present")
def test_mps_accelerator_without_mps_raises(kit) -> None:
    with pytest.raises(MisconfigurationException, match=r"accelerator='mps'.*MPS"):
        kit.trainer(accelerator="mps")


# --- callbacks, paths --------------------------------------------------------------------------------------------
def test_callbacks_as_one_object_or_a_list(kit) -> None:
    single = kit.Recorder()
    kit.trainer(max_epochs=1, callbacks=single).fit(kit.Model(), kit.loader(TRAIN), kit.loader(VAL))
    first, second = kit.Recorder(), kit.Recorder()
    kit.trainer(max_epochs=1, callbacks=[first, second]).fit(kit.Model(), kit.loader(TRAIN), kit.loader(VAL))
    assert single.count("batch") == first.count("batch") == second.count("batch") == 10
    assert single.events == first.events == second.events


def test_default_root_dir(kit, tmp_path) -> None:
    assert kit.trainer(default_root_dir=tmp_path).default_root_dir == str(tmp_path)
    assert kit.trainer(default_root_dir=str(tmp_path)).default_root_dir == str(tmp_path)
    assert kit.trainer().default_root_dir == os.getcwd()


# --- barebones and the model summary -----------------------------------------------------------------------------
def test_barebones_makes_self_log_a_warning_no_op(kit, capsys) -> None:
    class Model(kit.Model):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, barebones=True)
    with pytest.warns(UserWarning, match="barebones"):
        trainer.fit(Model(), kit.loader(TRAIN))
    assert trainer.global_step == 3
    assert dict(trainer.callback_metrics) == {} and dict(trainer.progress_bar_metrics) == {}
    assert capsys.readouterr().out == ""  # no model summary


def test_barebones_skips_sanity_check_and_summary(kit, capsys) -> None:
    rec = kit.Recorder()
    trainer = pl.Trainer(max_epochs=1, barebones=True, callbacks=[rec])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(kit.Model(), kit.loader(8), kit.loader(VAL))
    assert rec.count("sanity_start") == 0 and rec.val_runs(sanity=True) == []
    assert rec.val_runs() == [(0, 4, 5)]
    assert trainer.global_step == 4
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("flag", "value"), [("enable_model_summary", True), ("num_sanity_val_steps", 2),
                                             ("log_every_n_steps", 5), ("fast_dev_run", True),
                                             ("detect_anomaly", True), ("enable_checkpointing", True),
                                             ("enable_progress_bar", True), ("logger", True)])
def test_barebones_conflicting_flags_raise(flag, value) -> None:
    with pytest.raises(ValueError, match=rf"barebones=True, {flag}="):
        pl.Trainer(barebones=True, **{flag: value})


def test_model_summary_printed_at_fit_start(kit, capsys) -> None:
    class Model(kit.Model):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(4, 3)
            self.frozen = torch.nn.Linear(3, 2)
            self.frozen.requires_grad_(False)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(Model(), kit.loader(TRAIN))
    out = capsys.readouterr().err  # the summary goes through the framework's message log (stderr), as in Lightning
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") >= 3}
    assert {"layer", "hidden", "frozen"} <= set(rows)
    assert "Linear" in rows["layer"] and "| 5 " in rows["layer"] and "| 15 " in rows["hidden"]
    assert "| 8 " in rows["frozen"]
    assert re.search(r"^20\s+Trainable params", out, re.M) and re.search(r"^8\s+Non-trainable params", out, re.M)
    assert re.search(r"^28\s+Total params", out, re.M)


def test_model_summary_disabled(kit, capsys) -> None:
    pl.Trainer(max_epochs=1, limit_train_batches=1, enable_model_summary=False, enable_progress_bar=False).fit(
        kit.Model(), kit.loader(TRAIN))
    captured = capsys.readouterr()
    assert captured.out == "" and "Trainable params" not in captured.err


# --- flags whose feature has not landed --------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "value"), [("strategy", "deepspeed"), ("profiler", "xla")])
def test_flags_not_available_yet_raise(flag, value) -> None:
    with pytest.raises(NotImplementedError, match=rf"Trainer\({flag}="):
        pl.Trainer(**{flag: value})


# --- trainer properties ------------------------------------------------------------------------------------------
def test_trainer_properties_after_fit(kit) -> None:
    trainer = kit.trainer(max_epochs=2, limit_val_batches=3)
    assert trainer.state.status == "initializing" and trainer.should_stop is False
    assert (trainer.current_epoch, trainer.global_step) == (0, 0)
    trainer.fit(kit.Model(), kit.loader(10), kit.loader(VAL))
    assert trainer.state.status == "finished" and trainer.state.fn == "fit" and trainer.state.stage is None
    assert (trainer.current_epoch, trainer.global_step) == (2, 10)
    assert trainer.num_training_batches == 5 and trainer.num_val_batches == [3]
    assert trainer.is_last_batch is True and trainer.sanity_checking is False
    assert trainer.should_stop is False and trainer.interrupted is False
    trainer.should_stop = True
    assert trainer.should_stop is True
    trainer.should_stop = False
    assert trainer.should_stop is False
    trainer.validate(kit.Model(), kit.loader(VAL), verbose=False)
    assert trainer.num_val_batches == [3] and (trainer.current_epoch, trainer.global_step) == (2, 10)


def test_should_stop_set_in_on_train_start_runs_no_epoch(kit) -> None:
    class Stop(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.should_stop = True

    rec = kit.Recorder()
    trainer = kit.trainer(max_epochs=3, callbacks=[Stop(), rec])
    trainer.fit(kit.Model(), kit.loader(6), kit.loader(VAL))
    # Lightning checks the stop request before every epoch: no epoch starts, no batch runs
    assert rec.count("epoch_start") == rec.count("batch") == rec.count("epoch_end") == 0
    assert rec.val_runs() == []
    assert (trainer.current_epoch, trainer.global_step) == (0, 0)


def test_should_stop_set_in_on_train_epoch_start_skips_that_epochs_batches(kit) -> None:
    class Stop(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    rec = kit.Recorder()
    trainer = kit.trainer(max_epochs=3, callbacks=[Stop(), rec])
    trainer.fit(kit.Model(), kit.loader(6), kit.loader(VAL))
    # Lightning checks the stop request before every batch: epoch 1 starts and ends without a batch or validation
    assert rec.epoch_ends() == [(0, 3), (1, 3)]
    assert [r[:2] for r in rec.val_runs()] == [(0, 3)]
    assert (trainer.current_epoch, trainer.global_step) == (2, 3)
