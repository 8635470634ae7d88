"""The evaluation machine (validate, test, sanity check, predict): eval_start -> eval_batch -> eval_end.

It is the body of the fit machine's `validation` state and the whole body of `trainer.validate/test/predict`.
Lightning order: `on_<stage>_model_eval` -> Started -> EpochStarted -> per batch (transfer hooks, BatchStarted,
`<stage>_step`, BatchEnded) -> EpochEnded -> epoch metrics -> Ended -> modules' train/eval modes restored.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from engine import events as ev
from engine.bus import entered
from engine.errors import MisconfigurationException
from engine.loops.data import overridden
from engine.machine import DONE, Machine
from engine.results import ResultCollection
from engine.state import Stage, Timestamp, TrainerFn

if TYPE_CHECKING:  # pragma: no cover
    from engine.loops.context import RunContext

__all__ = ["EvalLoop", "build_eval_machine", "STAGES", "accepts_batch_idx", "run_eval_stage", "check_step_implemented"]


class _StageSpec:
    __slots__ = ("started", "epoch_started", "batch_started", "batch_ended", "epoch_ended", "ended", "step",
                 "model_eval", "model_train")

    def __init__(self, started: type, epoch_started: type, batch_started: type, batch_ended: type,
                 epoch_ended: type, ended: type, step: str, model_eval: str, model_train: str | None) -> None:
        self.started, self.epoch_started, self.batch_started, self.batch_ended = (
            started, epoch_started, batch_started, batch_ended)
        self.epoch_ended, self.ended, self.step, self.model_eval, self.model_train = (
            epoch_ended, ended, step, model_eval, model_train)


_VALIDATE = _StageSpec(ev.ValidationStarted, ev.ValidationEpochStarted, ev.ValidationBatchStarted,
                       ev.ValidationBatchEnded, ev.ValidationEpochEnded, ev.ValidationEnded, "validation_step",
                       "on_validation_model_eval", "on_validation_model_train")
STAGES: dict[str, _StageSpec] = {
    "validate": _VALIDATE,
    "sanity_check": _VALIDATE,
    "test": _StageSpec(ev.TestStarted, ev.TestEpochStarted, ev.TestBatchStarted, ev.TestBatchEnded,
                       ev.TestEpochEnded, ev.TestEnded, "test_step", "on_test_model_eval", "on_test_model_train"),
    "predict": _StageSpec(ev.PredictStarted, ev.PredictEpochStarted, ev.PredictBatchStarted, ev.PredictBatchEnded,
                          ev.PredictEpochEnded, ev.PredictEnded, "predict_step", "on_predict_model_eval", None),
}


def accepts_batch_idx(fn: Any) -> bool:
    """Lightning passes `batch_idx` only when the step's signature has it (or *args) after the batch."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return "batch_idx" in [p.name for p in params] or len(params) >= 2


def _overridden(module: Any, name: str) -> bool:
    from engine.module import LightningModule

    return overridden(module, LightningModule, name)


class EvalLoop:
    """One evaluation run over `loaders`, each limited to `limits[i]` batches."""

    def __init__(self, run: "RunContext", stage: str, loaders: list[Any], limits: list[int | float],
                 in_fit: bool = False, return_predictions: bool = True) -> None:
        self.run_context = run
        self.trainer = run.trainer
        self.stage = stage
        self.spec = STAGES[stage]
        self.loaders = loaders
        self.limits = limits
        self.in_fit = in_fit
        self.return_predictions = return_predictions
        self.module = run.module
        self.pass_batch_idx = accepts_batch_idx(getattr(self.module, self.spec.step))
        self.step_fn = run.step_method(self.spec.step)
        self.num_dataloaders = len(loaders)
        self.results: ResultCollection = run.eval_results
        self.predictions: list[list[Any]] = [[] for _ in loaders]
        self.dataloader_idx = 0
        self.batch_idx = 0
        self.batch: Any = None
        self._iter: Any = None
        self._modes: dict[torch.nn.Module, bool] = {}
        self.outputs: list[dict[str, Any]] = []

    # -- states ---------------------------------------------------------------------------------------------------
    def eval_start(self) -> str:
        run, spec = self.run_context, self.spec
        self._modes = {m: m.training for m in self.module.modules()}
        run.call_module(spec.model_eval)
        if self.stage != "predict":
            run.results = self.results
            run.metrics.attach(self.results)
        run.fire_simple(spec.started)
        run.fire_simple(spec.epoch_started)
        return self._next_loader(0)

    def _next_loader(self, idx: int) -> str:
        while idx < len(self.loaders):
            if self.limits[idx] > 0:
                self.dataloader_idx = idx
                self.batch_idx = 0
                self._iter = iter(self.loaders[idx])
                return "eval_batch"
            idx += 1
        return "eval_end"

    def eval_batch(self) -> str:
        run, spec, dl_idx = self.run_context, self.spec, self.dataloader_idx
        if self.batch_idx >= self.limits[dl_idx]:
            return self._next_loader(dl_idx + 1)
        try:
            batch = next(self._iter)
        except StopIteration:
            return self._next_loader(dl_idx + 1)
        batch = run.transfer(batch, dl_idx)  # type: ignore[misc]
        self.batch = batch
        batch_idx = self.batch_idx
        if self.stage != "predict":
            self.results.set_batch(batch, dl_idx, self.num_dataloaders)
        bus = run.bus
        table = bus.table
        hs = table.get(spec.batch_started)
        if hs:
            bus.call(hs, spec.batch_started(run, run.timestamp, batch, batch_idx, dl_idx, self.num_dataloaders))
        args: tuple = (batch, batch_idx) if self.pass_batch_idx else (batch,)
        if self.num_dataloaders > 1:
            args = args + (dl_idx,)
        module = self.module
        module.__dict__["_current_fx_name"] = spec.step
        wraps = bus.wrappers.get("eval_forward")
        if wraps:
            with entered(wraps, self):
                out = self.step_fn(*args)
        else:
            out = self.step_fn(*args)
        if self.stage == "predict" and self.return_predictions:
            self.predictions[dl_idx].append(out)
        hs = table.get(spec.batch_ended)
        if hs:
            bus.call(hs, spec.batch_ended(run, run.timestamp, out, batch, batch_idx, dl_idx, self.num_dataloaders))
        if self.stage != "predict":
            self.after_batch(dl_idx)
        self.batch_idx = batch_idx + 1
        return "eval_batch"

    def after_batch(self, dataloader_idx: int) -> None:
        """Eval step metrics go to loggers at every batch, x-axis = batches seen by that dataloader (Lightning)."""
        run, results = self.run_context, self.results
        write = bool(run.loggers) and self.stage != Stage.SANITY_CHECK
        out = run.metrics.update_step(results, write_logs=write)
        if out:
            key = (self.stage, dataloader_idx)
            run.eval_steps[key] = run.eval_steps.get(key, 0) + 1
            run.log_metrics(out, step=run.eval_steps[key] - 1)
        results.batch_end()

    def after_epoch(self) -> list[dict[str, float]]:
        """Eval epoch metrics into callback_metrics (not during the sanity check); per-dataloader result dicts."""
        if self.stage == Stage.SANITY_CHECK:
            return []
        run, results = self.run_context, self.results
        out = run.metrics.update_epoch(results, write_logs=bool(run.loggers))
        if out:
            run.log_metrics(out)
        return [{k: (v.item() if isinstance(v, Tensor) else float(v)) for k, v in d.items()}  # host sync, once
                for d in results.dataloader_outputs(self.num_dataloaders)]

    def eval_end(self) -> str:
        run, spec = self.run_context, self.spec
        if self.stage != "predict":
            self.results.epoch_end_reached()
        run.fire_simple(spec.epoch_ended)
        if self.stage != "predict":
            self.outputs = self.after_epoch()
        run.fire_simple(spec.ended)
        if self.stage != "predict":
            self.results.reset()
        run.results = None
        run.metrics.attach(None)
        if spec.model_train is not None and _overridden(self.module, spec.model_train):
            run.call_module(spec.model_train)
        else:
            for m, mode in self._modes.items():
                m.training = mode
        return DONE

    # -- run ------------------------------------------------------------------------------------------------------
    def run(self) -> Any:
        """Run the evaluation machine under no_grad (in fit) or inference_mode (validate/test/predict)."""
        run = self.run_context
        if not any(self.limits):  # every dataloader is empty (warned when loaded): the loop is skipped (Lightning)
            return None if self.stage == "predict" else []
        if self.in_fit or not run.settings.inference_mode:
            grad: Any = torch.no_grad()
        else:
            grad = torch.inference_mode()
        with grad:
            run.eval_machine.run(self)
        if self.stage == "predict":
            return self.predictions[0] if self.num_dataloaders == 1 else self.predictions
        return self.outputs


def build_eval_machine() -> Machine:
    """eval_start -> eval_batch | eval_end; eval_batch -> eval_batch | eval_end; eval_end -> done."""
    m = Machine("evaluate", initial="eval_start")
    m.add_state("eval_start", EvalLoop.eval_start, to={"eval_batch", "eval_end"})
    m.add_state("eval_batch", EvalLoop.eval_batch, to={"eval_batch", "eval_end"})
    m.add_state("eval_end", EvalLoop.eval_end, to={DONE})
    return m


def check_step_implemented(module: Any, stage: str) -> None:
    """trainer.test() without test_step (etc.) fails before any work, naming the method."""
    step = STAGES[stage].step
    if step == "predict_step" and getattr(module, step, None) is None:
        raise MisconfigurationException(
            f"`predict_step` cannot be None to run `Trainer.predict` ({type(module).__name__}.predict_step is None); "
            "remove the assignment or define `def predict_step(self, batch, batch_idx)`")
    if step != "predict_step" and not _overridden(module, step):
        raise MisconfigurationException(
            f"trainer.{'validate' if stage == 'validate' else stage}() needs {type(module).__name__}.{step}"
            f"(self, batch, batch_idx) to be implemented")


def run_eval_stage(run: "RunContext", stage: str, return_predictions: bool) -> Any:
    """The whole of trainer.validate/test/predict inside the run frame: setup, the eval machine, teardown."""
    p = run.progress
    p.set_timestamp(Timestamp(epoch=p.epoch, global_step=p.global_step))  # keep epoch and step, restart the rest
    run.setup_common(TrainerFn(stage))
    if run.resume_from is not None:  # ckpt_path=: weights, datamodule and handler states (Lightning's order)
        from engine.loops.resume import restore_modules

        restore_modules(run, run.resume_from)
    if stage != "predict":
        run.log_hyperparams()
    run.call_module("zero_grad")
    loaders, limits = run.sources.load_eval(stage)
    out = EvalLoop(run, stage, loaders, limits, in_fit=False, return_predictions=return_predictions).run()
    run.teardown_common(TrainerFn(stage))
    return out
