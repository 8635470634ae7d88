"""LearningRateMonitor: logs each optimizer's learning rate (and optionally momentum / weight decay) to the loggers.

Lightning's keys: `lr-<OptimizerClass>`, `-<k>` appended for the k-th further optimizer of the same class,
`/pg<i>` (or the param group's `name`) when an optimizer has several param groups, the scheduler config's `name`
instead of `lr-<OptimizerClass>`; `<key>-momentum` (Adam-style `betas[0]`) and `<key>-weight_decay`.

When: with logging_interval='step' at every training batch start where the trainer writes step logs
(`trainer.should_update_logs`), with 'epoch' at every training epoch start, with None each scheduler at its own
interval; optimizers without a scheduler are logged at both points. The x-axis is `trainer.batches_stepped`.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch

from engine.errors import MisconfigurationException, user_stacklevel
from hooks.callback import Callback

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Logs learning rates through `trainer.log_metrics`; the history is kept in `self.lrs` (key -> list)."""

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False, log_key_prefix: str | None = None) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): logging_interval should be `step` or "
                "`epoch` or `None` (None: each scheduler at its own interval)")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.log_key_prefix = log_key_prefix or ""
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Check that there is a logger and find the keys, so `self.lrs` lists them before the first value."""
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger. Pass a logger "
                "(e.g. `Trainer(logger=True)` or `logger=CSVLogger(...)`) or remove the callback.")
        if self.log_momentum and self._lacks("momentum", trainer) and self._lacks("betas", trainer):
            warnings.warn("You have set log_momentum=True, but some optimizers do not have momentum. This will log "
                          "a value 0 for the momentum.", RuntimeWarning, stacklevel=user_stacklevel())
        names = [n for group in self._names(trainer)[0] for n in group]
        self.lrs = {n: [] for n in names}
        self.last_momentum_values = {f"{n}-momentum": None for n in names}
        self.last_weight_decay_values = {f"{n}-weight_decay": None for n in names}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch" or not trainer.should_update_logs:
            return
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    @staticmethod
    def _lacks(key: str, trainer: Any) -> bool:
        """Some optimizer (of a scheduler, else any) has no `key` default (Lightning's momentum check)."""
        if trainer.lr_scheduler_configs:
            return any(key not in c.scheduler.optimizer.defaults for c in trainer.lr_scheduler_configs)
        return any(key not in getattr(o, "optimizer", o).defaults for o in trainer.optimizers)

    # -- stats ----------------------------------------------------------------------------------------------------
    def _log(self, trainer: Any, interval: str) -> None:
        stats = self._extract_stats(trainer, interval)
        if stats:
            trainer.log_metrics(stats, step=trainer.batches_stepped)

    def _extract_stats(self, trainer: Any, interval: str) -> dict[str, float]:
        """Current values for the schedulers due at `interval` ('step', 'epoch' or 'any') and every optimizer
        without a scheduler; also put into `trainer.callback_metrics` (as Lightning does)."""
        groups, with_sched, without_sched = self._names(trainer)
        configs = trainer.lr_scheduler_configs
        stats: dict[str, float] = {}
        for names, config in zip(groups[: len(configs)], configs):
            if interval in (config.interval, "any"):
                stats.update(self._optimizer_stats(config.scheduler.optimizer, names))
        for names, opt in zip(groups[len(configs):], without_sched):
            stats.update(self._optimizer_stats(opt, names))
        if stats:
            device = getattr(getattr(trainer, "strategy", None), "root_device", None)
            trainer.callback_metrics.update({k: torch.tensor(float(v), device=device) for k, v in stats.items()})
        return stats

    def _optimizer_stats(self, optimizer: Any, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        use_betas = "betas" in optimizer.defaults
        for pg, name in zip(optimizer.param_groups, names):
            lr = pg["lr"]
            self.lrs.setdefault(name, []).append(lr)
            stats[name] = lr
            if self.log_momentum:
                key = f"{name}-momentum"
                value = pg["betas"][0] if use_betas else pg.get("momentum", 0)
                self.last_momentum_values[key] = value
                stats[key] = value
            if self.log_weight_decay:
                key = f"{name}-weight_decay"
                value = pg.get("weight_decay", 0)
                self.last_weight_decay_values[key] = value
                stats[key] = value
        return stats

    # -- names ----------------------------------------------------------------------------------------------------
    def _names(self, trainer: Any) -> tuple[list[list[str]], list[Any], list[Any]]:
        """Keys per param group: first one list per scheduler config, then one per optimizer without a scheduler.
        Returns (key lists, optimizers with a scheduler, optimizers without one)."""
        seen: list[Any] = []
        seen_types: defaultdict[type, int] = defaultdict(int)
        groups = []
        for config in trainer.lr_scheduler_configs:
            opt = config.scheduler.optimizer
            base = config.name if config.name is not None else f"lr-{type(opt).__name__}"
            groups.append(self._keys(opt, base, seen, seen_types, named=config.name is not None))
        with_sched = list(seen)
        without = []
        for opt in trainer.optimizers:
            opt = getattr(opt, "optimizer", opt)  # a wrapper (LightningOptimizer) holds the real one
            if any(opt is s for s in seen):
                continue
            groups.append(self._keys(opt, f"lr-{type(opt).__name__}", seen, seen_types, named=False))
            without.append(opt)
        return groups, with_sched, without

    def _keys(self, opt: Any, base: str, seen: list[Any], seen_types: defaultdict[type, int],
              named: bool) -> list[str]:
        seen.append(opt)
        cls = type(opt)
        if not named:
            seen_types[cls] += 1
        groups = opt.param_groups
        pg_names = [pg.get("name", f"pg{i}") for i, pg in enumerate(groups, start=1)]
        dupes = {n for n in pg_names if pg_names.count(n) > 1}
        if dupes:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical `name` values. "
                f"{base} has duplicated parameter group names {dupes}; give each param group a unique 'name'")
        if cls in seen_types and seen_types[cls] > 1:
            base = f"{base}-{seen_types[cls] - 1}"
        if len(groups) > 1:
            keys = [f"{base}/{n}" for n in pg_names]
        else:
            keys = [f"{base}/{groups[0]['name']}" if groups[0].get("name") else base]
        return [f"{self.log_key_prefix}{k}" for k in keys]
