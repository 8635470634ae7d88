"""Resuming a fit from a checkpoint, in Lightning's two steps (reference §6), called by `FitLoop.setup_fit`:

1. `restore_modules` after configure_model, before configure_optimizers: the module's `on_load_checkpoint` and
   weights, the datamodule's state, the handlers' `on_load_checkpoint` and `load_state_dict`.
2. `restore_training` after FitStarted: optimizers and schedulers, the run state (progress, control, results,
   metrics), then the data position and the RNG states; returns the state the fit goes on at.

A statetrain checkpoint written at a boundary resumes exactly (same batches, same RNG, bit-identical weights); a
Lightning checkpoint resumes at the start of the epoch after its last completed one, with its counters mapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import events as ev
from engine.errors import CheckpointError
from engine.sharded_checkpoint import SHARDED_KEY

if TYPE_CHECKING:  # pragma: no cover
    from engine.loops.context import RunContext
    from engine.loops.fit import FitLoop

__all__ = ["restore_modules", "restore_training", "load_weights", "RESUME_STATES"]

RESUME_STATES = ("epoch_start", "batch", "epoch_end", "teardown")


def load_weights(module: Any, ckpt: dict[str, Any], strict: bool, source: str, strategy: Any = None) -> None:
    """`module.load_state_dict(ckpt['state_dict'])` (or the strategy's `load_model_state_dict`, e.g. FSDP's into
    sharded parameters) with an error that lists what does not match."""
    load = getattr(strategy, "load_model_state_dict", None)
    if "state_dict" not in ckpt and not (load is not None and SHARDED_KEY in ckpt):
        raise CheckpointError(f"checkpoint {source} has no 'state_dict' (keys: {sorted(ckpt)}); it is not a model "
                              "checkpoint")
    if load is not None:
        result = load(module, ckpt)
    else:
        result = module.load_state_dict(ckpt["state_dict"], strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {source} does not match {type(module).__name__}: missing keys {missing or '(none)'}, "
            f"unexpected keys {unexpected or '(none)'}; is it a checkpoint of another model? Pass strict=False to "
            "load what matches")


def restore_modules(run: "RunContext", ckpt: dict[str, Any]) -> None:
    """Step 1: the module's weights, the datamodule's state, the handlers' states."""
    module = run.module
    source = run.resume_source or "(ckpt_path)"
    run.call_module("on_load_checkpoint", ckpt)
    load_weights(module, ckpt, strict=module.strict_loading, source=source, strategy=run.strategy)
    dm = run.datamodule
    if dm is not None and type(dm).__qualname__ in ckpt:
        dm.load_state_dict(ckpt[type(dm).__qualname__])
    hs = run.bus.table.get(ev.LoadCheckpoint)
    if hs:
        run.bus.call(hs, ev.LoadCheckpoint(run, run.progress.timestamp(), ckpt))
    states = dict(ckpt.get("callbacks") or {})
    for cb in run.callbacks:
        key = getattr(cb, "state_key", None)
        if key in states and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(states.pop(key))
    if states:
        run.warn_once("ckpt_callbacks", f"the checkpoint holds the state of handlers this Trainer does not have: "
                      f"{sorted(states)}; their state is not restored")


def restore_training(loop: "FitLoop", ckpt: dict[str, Any]) -> str:
    """Step 2: optimizers, schedulers, the run state, the data position and the RNG; returns where to go on."""
    from engine.checkpoint import set_rng_state

    run, p = loop.run, loop.progress
    if "optimizer_states" not in ckpt or "lr_schedulers" not in ckpt:
        raise CheckpointError("trainer.fit(ckpt_path=...): the checkpoint was saved with weights_only=True and has "
                              "no optimizer or scheduler states, so training cannot resume from it; load the weights "
                              "with Model.load_from_checkpoint(path) and start a new fit instead")
    load_optimizer = getattr(run.strategy, "load_optimizer_state_dict", None)
    if load_optimizer is not None:  # e.g. FSDP: into sharded states (from the full file or the shards)
        for i, (optimizer, state) in enumerate(zip(run.pipeline.optimizers, ckpt["optimizer_states"])):
            load_optimizer(optimizer, state, ckpt, i)
        run.pipeline.load_state_dict({"lr_schedulers": ckpt["lr_schedulers"]})
    else:
        run.pipeline.load_state_dict(ckpt)
    engine = ckpt.get("engine")
    if engine is None:
        return _restore_lightning(loop, ckpt)
    run.load_state_dict(engine["run"])
    loop.pending_grads = engine.get("grads")  # inside an accumulation window: set after setup's zero_grad
    run.strategy.load_state_dict(engine.get("strategy") or {})
    if run.precision is not None and engine.get("precision"):
        run.precision.load_state_dict(engine["precision"])
    resume = engine["resume"]
    if not resume.get("exact", False):
        run.warn_once("resume_inexact", "this checkpoint was written outside a batch or epoch boundary (e.g. by "
                      "trainer.save_checkpoint in a hook): the fit resumes at the next batch, but not necessarily "
                      "bit-identical to the interrupted run")
    _check_epochs(run, ckpt)
    nxt = resume["next"]
    p.sanity_done = nxt != "epoch_start"  # Lightning runs the sanity check again unless it resumes mid-epoch
    p.train_started = False
    if nxt not in RESUME_STATES:
        raise CheckpointError(f"checkpoint resumes at state {nxt!r}, which is not one of {RESUME_STATES}")
    if nxt in ("batch", "epoch_end"):
        run.sources.load_train()
        p.train_started = True
        run.fire_simple(ev.TrainStarted)
    if nxt == "batch":
        loop.resume_epoch(engine.get("data"), engine["rng"])
        _announce(run, p.batch_idx)
    else:
        if nxt == "epoch_end":
            run.results = run.train_results
            run.metrics.attach(run.train_results)
        set_rng_state(engine["rng"])
    return nxt


def _restore_lightning(loop: "FitLoop", ckpt: dict[str, Any]) -> str:
    """A Lightning checkpoint: epoch, global_step and the loggers' step from its loop trackers; the fit goes on at
    the start of the next epoch (Lightning's own mid-epoch resume restarts the epoch's data as well)."""
    p = loop.progress
    fit = (ckpt.get("loops") or {}).get("fit_loop") or {}
    # an epoch-end checkpoint (ModelCheckpoint in on_train_epoch_end) has the epoch processed, not yet completed
    epoch_done = _get(fit, "epoch_progress", "current", "processed")
    if epoch_done is None:
        epoch_done = _get(fit, "epoch_progress", "current", "completed")
    p.epoch = int(epoch_done if epoch_done is not None else ckpt.get("epoch", 0))
    p.global_step = int(ckpt.get("global_step", 0))
    stepped = _get(fit, "epoch_loop.state_dict", "_batches_that_stepped")
    p.batches_stepped = int(stepped if stepped is not None else p.global_step)
    in_epoch = _get(fit, "epoch_loop.batch_progress", "current", "completed") or 0
    if in_epoch and not _get(fit, "epoch_loop.batch_progress", "is_last_batch"):
        loop.run.warn_once("resume_lightning_mid_epoch", f"this Lightning checkpoint was written after batch "
                           f"{in_epoch} of epoch {p.epoch}; statetrain resumes it at the start of that epoch")
    _check_epochs(loop.run, ckpt)
    p.sanity_done = False
    p.train_started = False
    return "epoch_start"


def restore_grads(loop: "FitLoop") -> None:
    """The gradients summed in an open accumulation window, back on the parameters."""
    grads, loop.pending_grads = loop.pending_grads, None
    if grads:
        for name, param in loop.module.named_parameters():
            if name in grads:
                param.grad = grads[name].to(param.device)


def _check_epochs(run: "RunContext", ckpt: dict[str, Any]) -> None:
    """Lightning refuses to resume past max_epochs (equal is fine: the fit ends at once)."""
    from engine.errors import MisconfigurationException

    s, epoch = run.settings, run.progress.epoch
    if s.max_epochs != -1 and epoch > s.max_epochs:
        raise MisconfigurationException(
            f"You restored a checkpoint with current_epoch={epoch}, but you have set Trainer(max_epochs="
            f"{s.max_epochs}); raise max_epochs to train further, or load only the weights with "
            "Model.load_from_checkpoint")


def _get(tree: dict[str, Any], *keys: str) -> Any:
    node: Any = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _announce(run: "RunContext", batch_idx: int) -> None:
    from engine.log import log

    if run.strategy.is_global_zero:
        log.info(f"resuming mid-epoch: epoch {run.progress.epoch}, after batch {batch_idx} (skipped by index)")
