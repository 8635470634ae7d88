"""ModelCheckpoint and OnExceptionCheckpoint: Lightning's checkpoint callbacks (reference §5.1), as handlers.

ModelCheckpoint decides where Lightning (2.6) decides (on_train_batch_end for every_n_train_steps and
train_time_interval, deferred to on_validation_end while the monitored value is not logged yet or the epoch's
validation follows the last batch; on_train_epoch_end or on_validation_end for every_n_epochs, by Lightning's
`save_on_train_epoch_end` rule), keeps Lightning's top-k bookkeeping (best_model_path, best_k_models, kth_value, ...)
and file names (`epoch=0-step=8.ckpt`, `-v1` on collisions, `last.ckpt`; at epoch level last.ckpt follows a saved
checkpoint, and is written at the train end if none was), and writes the file at the fit's next boundary (the end of
that batch, validation included, or of that epoch) through `RunContext.at_boundary`: a checkpoint written there
resumes bit-exactly. Where no boundary follows (the train end, an exception) the queued files are written at once.
Files that fall out of the top k are deleted after the new one is on disk; the file a run resumed from is never
deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from copy import deepcopy
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.errors import MisconfigurationException
from engine.log import log
from engine.utilities import cloud_io
from engine.utilities.rank_zero import rank_zero_warn
from hooks.callback import Callback

__all__ = ["ModelCheckpoint", "OnExceptionCheckpoint"]

_MODES = {"min": torch.lt, "max": torch.gt}


class ModelCheckpoint(Callback):
    """Save the model periodically, keep the `save_top_k` best by `monitor`, optionally a `last.ckpt`."""

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1
    is_monitor = True

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 monitor: str | None = None, verbose: bool = False, save_last: bool | str | None = None,
                 save_top_k: int = 1, save_on_exception: bool = False, save_weights_only: bool = False,
                 mode: str = "min", auto_insert_metric_name: bool = True, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = None, every_n_epochs: int | None = None,
                 save_on_train_epoch_end: bool | None = None, enable_version_counter: bool = True) -> None:
        # checked in Lightning's order: mode, save_top_k, the triggers' values, their exclusivity, top-k without monitor
        if mode not in _MODES:
            raise MisconfigurationException(f"ModelCheckpoint(mode={mode!r}): expected 'min' or 'max'")
        if save_top_k < -1:
            raise MisconfigurationException(f"ModelCheckpoint(save_top_k={save_top_k}): must be >= -1 (-1 keeps all)")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and value < 0:
                raise MisconfigurationException(f"ModelCheckpoint({name}={value}): must be >= 0")
        triggers = [every_n_train_steps, every_n_epochs, train_time_interval]
        if ((every_n_train_steps or 0) >= 1) + ((every_n_epochs or 0) >= 1) + (train_time_interval is not None) > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={every_n_train_steps}, every_n_epochs="
                f"{every_n_epochs} and train_time_interval={train_time_interval} should be mutually exclusive.")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: without a "
                "monitor only the latest checkpoint can be kept; pass monitor=... or save_top_k in (-1, 0, 1)")
        if save_last not in (None, True, False, "link"):
            raise MisconfigurationException(f"ModelCheckpoint(save_last={save_last!r}): expected True, False, "
                                            "None or 'link'")
        self.dirpath: str | None = _dir(dirpath) if dirpath else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        default_epochs = 1 if all(t is None for t in triggers) else 0  # epoch-level saving unless told otherwise
        self._every_n_epochs = default_epochs if every_n_epochs is None else every_n_epochs
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: Tensor | None = None
        self.kth_value: Tensor = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        self._last_global_step_saved = 0
        self._last_time_checked: float | None = None
        self._last_checkpoint_saved = ""
        self._deferred = False  # a step/time-triggered save waits for the validation that follows
        self._val_has_run = False  # the fit's validation has run (sanity check aside): a missing monitor is an error

    # -- Lightning's surface ----------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode,
                                        every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._every_n_epochs,
                                        train_time_interval=self._train_time_interval)

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_model_score": self.best_model_score,
                "best_model_path": self.best_model_path, "current_score": self.current_score,
                "dirpath": self.dirpath, "best_k_models": dict(self.best_k_models),
                "kth_best_model_path": self.kth_best_model_path, "kth_value": self.kth_value,
                "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        dirpath = state_dict.get("dirpath", self.dirpath)
        if dirpath == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", self.best_k_models))
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        else:
            rank_zero_warn(f"The dirpath has changed from {dirpath!r} to {self.dirpath!r}, therefore "
                           "`best_model_score`, `kth_best_model_path`, `kth_value`, `last_model_path` and "
                           "`best_k_models` won't be reloaded. Only `best_model_path` will be reloaded.")
        self.best_model_path = state_dict["best_model_path"]

    def to_yaml(self, filepath: str | os.PathLike | None = None) -> None:
        """The best k models and their scores as YAML (next to the checkpoints by default)."""
        import yaml

        best = {k: v.item() for k, v in self.best_k_models.items()}
        target = (cloud_io.normalize(filepath) if filepath is not None
                  else cloud_io.join(self.dirpath or ".", "best_k_models.yaml"))
        cloud_io.atomic_write(target, yaml.dump(best).encode("utf-8"))

    # -- hooks ------------------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:  # rank 0 decides (its logger's version); every rank reaches this setup
            mine = self._resolve_dirpath(trainer) if trainer.is_global_zero else None
            # without a process group (one process that calls itself rank > 0) nothing is broadcast: resolve here
            self.dirpath = trainer.strategy.broadcast(mine) or self._resolve_dirpath(trainer)
        if stage == "fit":
            self._val_has_run = False
            if self.save_top_k != 0 and cloud_io.isdir(self.dirpath) and cloud_io.listdir(self.dirpath):
                rank_zero_warn(f"Checkpoint directory {self.dirpath} exists and is not empty.")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_time_checked = time.monotonic()

    def listens_to(self, hook: str) -> bool:
        """Without a step or time trigger, nothing happens at a batch's end: the hook is not subscribed."""
        if hook == "on_train_batch_end":
            return self._every_n_train_steps >= 1 or self._train_time_interval is not None
        return True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning's order: trigger due? (the time trigger restarts its clock even if the save is skipped), monitor
        # not logged yet or a validation about to run after this last batch -> defer to on_validation_end, skip
        # (sanity check / fast_dev_run / this step already saved), save the top-k and last checkpoints
        n = self._every_n_train_steps
        step_due = n >= 1 and trainer.global_step % n == 0
        time_due = False
        if self._train_time_interval is not None:
            now = time.monotonic()
            last = self._last_time_checked
            time_due = last is not None and now - last >= self._train_time_interval.total_seconds()
            if time_due:
                self._last_time_checked = now
        if not (step_due or time_due):
            return
        candidates = self._candidates(trainer)
        if self.monitor is not None and self.monitor not in candidates:
            self._deferred = True  # the monitored value comes from a validation that has not run yet
            return
        if self.monitor is not None and trainer.is_last_batch and not self._on_train_epoch_end(trainer) and (
                self._validation_follows(trainer)):
            self._deferred = True  # the epoch's validation is next: save with its fresh value
            return
        if self._skip(trainer):
            return
        self._save_topk(trainer, candidates)
        self._save_last(trainer, candidates)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._skip(trainer) and self._on_train_epoch_end(trainer):
            self._save_epoch(trainer)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit":
            self._val_has_run = False

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and _total(trainer.num_val_batches) > 0:
            self._val_has_run = True
        if self._skip(trainer) or self._on_train_epoch_end(trainer):
            return
        if self._deferred:
            self._deferred = False
            candidates = self._candidates(trainer)
            self._save_topk(trainer, candidates)
            self._save_last(trainer, candidates)
            return
        self._save_epoch(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # Lightning: save_last=True gets its last.ckpt even if no checkpoint was saved during the fit (save_top_k=0,
        # or no trigger ever fired); unlike Lightning, not under fast_dev_run (which never checkpoints). No boundary
        # follows the train end, so the file is written now.
        if self.save_last and not self._last_checkpoint_saved and not trainer.fast_dev_run:
            self._save_last(trainer, self._candidates(trainer))
            self._run_pending(trainer, ("teardown", True))

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Files decided in this batch but queued for its end (e.g. the validation after it raised) are written now:
        # Lightning has them on disk already, and best_model_path/last_model_path name them.
        self._run_pending(trainer, None)
        # Lightning's `_should_save_on_exception`: not under fast_dev_run or the sanity check, not twice at one step;
        # the file has the usual name (the `filename` template), and last.ckpt follows. Written now: no boundary comes.
        if (not self.save_on_exception or self.dirpath is None or trainer.fast_dev_run or trainer.sanity_checking
                or self._last_global_step_saved == trainer.global_step):
            return
        candidates = self._candidates(trainer)
        filepath = self.format_checkpoint_name(candidates)
        self._write(trainer, filepath, remove="", now=True)
        self._save_last(trainer, candidates, now=True)
        log.info(f"An {type(exception).__name__} was raised with message: {exception}, saved checkpoint to "
                 f"{filepath}")

    # -- decisions --------------------------------------------------------------------------------------------------
    def _skip(self, trainer: Any) -> bool:
        return bool(trainer.fast_dev_run or trainer.state.fn != "fit" or trainer.sanity_checking
                    or self._last_global_step_saved == trainer.global_step)

    def _save_epoch(self, trainer: Any) -> None:
        """The epoch-level save (on_train_epoch_end or on_validation_end): the top k if the epoch is due; last.ckpt
        only if a checkpoint was saved at this step (Lightning >= 2.6), or re-linked to the latest one with 'link'."""
        candidates = self._candidates(trainer)
        if self._epoch_due(trainer):
            self._save_topk(trainer, candidates)
        if self._last_global_step_saved == trainer.global_step or (
                self.save_last == "link" and self._last_checkpoint_saved):
            self._save_last(trainer, candidates)

    def _validation_follows(self, trainer: Any) -> bool:
        """Whether the fit validates right after this (last) batch of the epoch."""
        if not trainer.context.val_on or _total(trainer.num_val_batches) <= 0:
            return False
        every = trainer.check_val_every_n_epoch
        return every is None or (trainer.current_epoch + 1) % every == 0

    def _epoch_due(self, trainer: Any) -> bool:
        n = self._every_n_epochs
        return n >= 1 and (trainer.current_epoch + 1) % n == 0

    def _on_train_epoch_end(self, trainer: Any) -> bool:
        """Lightning's rule for where epoch-level saving runs."""
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if getattr(trainer.context.settings, "val_check_time_interval", None) is not None:
            return False  # time-based validation: save after it
        if trainer.check_val_every_n_epoch != 1:
            return False
        if _total(trainer.num_val_batches) == 0 or not trainer.context.val_on:
            return True
        return trainer.val_check_interval == 1.0

    def check_monitor_top_k(self, trainer: Any, current: Tensor | None = None) -> bool:
        """Whether `current` enters the top k."""
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        return bool(_MODES[self.mode](current, self.best_k_models[self.kth_best_model_path]))

    def _candidates(self, trainer: Any) -> dict[str, Any]:
        metrics = deepcopy(dict(trainer.callback_metrics))
        epoch, step = metrics.get("epoch"), metrics.get("step")
        metrics["epoch"] = epoch.int() if isinstance(epoch, Tensor) else torch.tensor(trainer.current_epoch)
        metrics["step"] = step.int() if isinstance(step, Tensor) else torch.tensor(trainer.global_step)
        return metrics

    # -- saving -------------------------------------------------------------------------------------------------------
    def _save_topk(self, trainer: Any, candidates: dict[str, Any]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            filepath = self._free_name(candidates, keep=self.best_model_path)
            previous, self.best_model_path = self.best_model_path, filepath
            self._write(trainer, filepath, remove=previous if self.save_top_k == 1 else "")
            return
        if self.monitor not in candidates:
            message = (f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the "
                       f"returned metrics: {list(candidates)}. HINT: Did you call `log({self.monitor!r}, value)` "
                       "in the `LightningModule`?")
            if self._val_has_run:  # Lightning: an error once the fit's validation has run, a warning before
                raise MisconfigurationException(message)
            trainer.context.warn_once(f"ckpt_monitor_{self.monitor}", message)
            return
        current = candidates[self.monitor]
        if not isinstance(current, Tensor):
            current = torch.tensor(float(current))
        if not self.check_monitor_top_k(trainer, current):
            if self.verbose:
                log.info(f"Epoch {trainer.current_epoch:d}, global step {trainer.global_step:d}: "
                         f"{self.monitor!r} was not in top {self.save_top_k}")
            return
        self._update_best(trainer, current, candidates)

    def _update_best(self, trainer: Any, current: Tensor, candidates: dict[str, Any]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        dropped = ""
        if len(self.best_k_models) == k and k > 0:
            dropped = self.kth_best_model_path
            self.best_k_models.pop(dropped)
        if torch.isnan(current):
            current = torch.tensor(float("inf" if self.mode == "min" else "-inf"), device=current.device)
        filepath = self._free_name(candidates, keep=dropped)
        self.current_score = current
        self.best_k_models[filepath] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=lambda p: self.best_k_models[p].item())
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=lambda p: self.best_k_models[p].item())
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            log.info(f"Epoch {trainer.current_epoch:d}, global step {trainer.global_step:d}: {self.monitor!r} "
                     f"reached {current.item():0.5f} (best {self.best_model_score.item():0.5f}), saving model to "
                     f"{filepath!r} as top {k}")
        self._write(trainer, filepath, remove=dropped)

    def _save_last(self, trainer: Any, candidates: dict[str, Any], now: bool = False) -> None:
        if not self.save_last:
            return
        filepath = self._free_name(candidates, keep=self.last_model_path, name=self.CHECKPOINT_NAME_LAST)
        previous, self.last_model_path = self.last_model_path, filepath
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0 \
                and not cloud_io.is_remote(filepath):  # no links in fsspec stores: a full copy there
            target = self._last_checkpoint_saved
            if os.path.abspath(target) != os.path.abspath(filepath):  # never a link to itself
                if trainer.is_global_zero:  # rank 0 owns the files
                    self._at_boundary(trainer, lambda: _link(target, filepath), now)
        else:
            self._write(trainer, filepath, remove="", now=now)
        if previous and previous != filepath:
            self._at_boundary(trainer, lambda: self._remove(trainer, previous, filepath), now)

    def _write(self, trainer: Any, filepath: str, remove: str, now: bool = False) -> None:
        """Save `filepath` at the fit's next boundary (or `now`), then delete `remove` (a file that fell out of the
        top k)."""
        weights_only = self.save_weights_only

        def write() -> None:
            trainer.save_checkpoint(filepath, weights_only)
            for lg in trainer.loggers:
                lg.after_save_checkpoint(self)
            if remove:
                self._remove(trainer, remove, filepath)

        self._last_checkpoint_saved = filepath
        self._last_global_step_saved = trainer.global_step
        self._at_boundary(trainer, write, now)

    def _at_boundary(self, trainer: Any, write: Any, now: bool = False) -> None:
        if now:
            write()
        else:
            trainer.context.at_boundary(write)

    @staticmethod
    def _run_pending(trainer: Any, boundary: tuple[str, bool] | None) -> None:
        """Run the writes queued for a boundary that will not come: at the train's end (`boundary` = where the fit
        goes on, as the last epoch-end boundary recorded it) or after an exception (None: not a boundary)."""
        ctx = trainer.context
        writes, ctx.boundary_writes = ctx.boundary_writes, []
        if not writes:
            return
        previous = ctx.boundary
        ctx.boundary = previous or boundary
        try:
            for write in writes:
                if boundary is not None:
                    write()
                    continue
                try:  # after an exception: never mask it
                    write()
                except Exception as exc:  # noqa: BLE001
                    rank_zero_warn(f"ModelCheckpoint: a checkpoint decided before the exception could not be "
                                   f"written: {exc!r}")
        finally:
            ctx.boundary = previous

    def _remove(self, trainer: Any, previous: str, current: str) -> None:
        """Delete a checkpoint that is no longer kept: never the current one, nor the one this fit resumed from,
        nor a file outside our directory."""
        if not previous or previous == current or not trainer.is_global_zero:  # rank 0 owns the files
            return
        if cloud_io.is_remote(previous):
            if (self.dirpath and previous.startswith(self.dirpath.rstrip("/") + "/") and previous != trainer.ckpt_path
                    and cloud_io.exists(previous)):
                cloud_io.remove(previous)
            return
        path = Path(previous).absolute()  # not resolve(): a last.ckpt link is removed itself, not its target
        resumed = trainer.ckpt_path
        if resumed and Path(resumed).absolute() == path:
            return
        if self.dirpath and Path(self.dirpath).absolute() in path.parents and os.path.lexists(path):
            if path.is_dir() and not path.is_symlink():  # a sharded (FSDP) checkpoint is a directory
                shutil.rmtree(path)
            else:
                path.unlink()

    # -- names ------------------------------------------------------------------------------------------------------
    def _resolve_dirpath(self, trainer: Any) -> str:
        """<logger save_dir>/<name>/<version>/checkpoints, or <default_root_dir>/checkpoints without a logger."""
        if trainer.loggers:
            lg = trainer.loggers[0]
            save_dir = getattr(lg, "save_dir", None) or trainer.default_root_dir
            version = lg.version
            version = version if isinstance(version, str) else f"version_{version}"
            return cloud_io.join(os.fspath(save_dir), str(lg.name), version, "checkpoints")
        return cloud_io.join(os.fspath(trainer.default_root_dir), "checkpoints")

    def _free_name(self, candidates: dict[str, Any], keep: str, name: str | None = None) -> str:
        """The formatted file name, with -v1, -v2... while another file has it (unless it is `keep`)."""
        filepath = self.format_checkpoint_name(candidates, name)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while cloud_io.exists(filepath) and filepath != keep:
                filepath = self.format_checkpoint_name(candidates, name, ver=version)
                version += 1
        return filepath

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        """`filename` (default: the configured template) filled from `metrics`, `-v<ver>`, `.ckpt`, in dirpath."""
        name = self._format_name(filename or self.filename, dict(metrics), prefix or "",
                                 self.auto_insert_metric_name)
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        name += self.FILE_EXTENSION
        return cloud_io.join(self.dirpath, name) if self.dirpath else name

    @classmethod
    def _format_name(cls, template: str | None, metrics: dict[str, Any], prefix: str = "",
                     auto_insert_metric_name: bool = True) -> str:
        """'{epoch}-{val_loss:.2f}' -> 'epoch=0-val_loss=0.12' (names inserted unless auto_insert_metric_name is
        False; missing metrics count as 0; dots in names work)."""
        template = template or "{epoch}" + cls.CHECKPOINT_JOIN_CHAR + "{step}"
        fields = sorted(set(re.findall(r"\{([^{}:]+)(?::[^{}]*)?\}", template)), key=len, reverse=True)
        for field in fields:
            if field not in metrics:
                metrics[field] = torch.tensor(0)
            pattern = re.compile(r"\{" + re.escape(field) + r"(?=[:}])")
            label = field + cls.CHECKPOINT_EQUALS_CHAR if auto_insert_metric_name else ""
            template = pattern.sub(lambda _m, label=label, field=field: f"{label}{{0[{field}]", template)
        text = template.format(metrics)
        return cls.CHECKPOINT_JOIN_CHAR.join([prefix, text]) if prefix else text

    def __repr__(self) -> str:
        return (f"ModelCheckpoint(dirpath={self.dirpath!r}, monitor={self.monitor!r}, mode={self.mode!r}, "
                f"save_top_k={self.save_top_k}, save_last={self.save_last!r})")


class OnExceptionCheckpoint(Callback):
    """Save a checkpoint when the fit raises (Lightning's `OnExceptionCheckpoint(dirpath, filename='on_exception')`);
    with `ckpt_path='last'` a new fit resumes from it."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        if not filename:
            raise ValueError("OnExceptionCheckpoint(filename=''): the filename cannot be empty")
        self.dirpath = cloud_io.normalize(dirpath)
        self.filename = filename
        self.best_model_path = ""
        self.last_model_path = ""

    @property
    def ckpt_path(self) -> str:
        return cloud_io.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        trainer.save_checkpoint(self.ckpt_path)
        self.last_model_path = self.ckpt_path

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """A run that ends normally removes the file (as Lightning does): it only stands for a failed run."""
        path = self.ckpt_path
        present = cloud_io.exists(path) if cloud_io.is_remote(path) else os.path.lexists(path)
        if present:
            cloud_io.remove(path)
        self.last_model_path = ""


def _dir(dirpath: str | os.PathLike) -> str:
    """A local dirpath made absolute and real (Lightning's realpath); an fsspec URL as given."""
    path = cloud_io.normalize(dirpath)
    return path if cloud_io.is_remote(path) else os.path.realpath(path)


def _total(num_batches: Any) -> float:
    """trainer.num_val_batches as one number (a list per dataloader in Lightning)."""
    if isinstance(num_batches, (list, tuple)):
        return sum(num_batches)
    return num_batches or 0


def _link(target: str, link: str) -> None:
    """`last.ckpt` as a symlink to the latest checkpoint (replaced atomically)."""
    tmp = f"{link}.tmp-link"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.relpath(target, os.path.dirname(link) or "."), tmp)
    os.replace(tmp, link)
