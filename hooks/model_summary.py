"""ModelSummary: Lightning's table of layers (Name, Type, Params, Mode) and totals, written at fit start.

The table goes through the message log (`engine.log`): in console mode it prints as a table under a "Model summary"
line; in JSON mode it is one event with the text in `table` and the counts as fields (trainable, non_trainable,
total, size_mb, train_modules, eval_modules). Unlike Lightning 2.6 there is no FLOPs column and no In/Out sizes (no
forward pass is run at fit start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from engine.log import log
from hooks.callback import Callback

__all__ = ["ModelSummary", "Summary", "summarize", "human_count"]

_UNITS = (" ", "K", "M", "B", "T")


def human_count(number: int | float) -> str:
    """Lightning's parameter count: '123  ', '1.2 K', '132 K', '2.0 M', ... (no unit beyond T)."""
    if number < 0:
        raise ValueError(f"human_count({number!r}): expected a count >= 0")
    digits = int(math.floor(math.log10(number))) + 1 if number > 0 else 1
    group = min(math.ceil(digits / 3), len(_UNITS)) - 1
    scaled = number / 10 ** (3 * group)
    if group == 0 or scaled >= 100:
        return f"{int(scaled):,d} {_UNITS[group]}"
    return f"{scaled:,.1f} {_UNITS[group]}"


def _numel(p: nn.Parameter) -> int:
    return 0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel()


def _bits(precision: Any) -> int:
    """Bits per parameter for the size estimate: 64 for '64(-true)', 16 for '16-true'/'bf16-true', else 32
    (mixed precision keeps fp32 weights)."""
    p = str(precision) if precision is not None else "32"
    if p in ("64", "64-true", "double"):
        return 64
    if p in ("16-true", "bf16-true"):
        return 16
    return 32


@dataclass(frozen=True)
class Summary:
    """What the table shows: one row per layer plus the totals."""

    rows: tuple[tuple[str, str, str, str, str], ...]  # (index, name, type, params, mode)
    trainable: int
    total: int
    size_mb: float
    train_modules: int
    eval_modules: int

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def table(self) -> str:
        """The text Lightning prints: header, rows, then the totals lines."""
        header = (" ", "Name", "Type", "Params", "Mode")
        widths = [max([len(h)] + [len(r[c]) for r in self.rows]) for c, h in enumerate(header)]
        rule = "-" * (sum(widths) + 3 * (len(header) + 1))

        def line(cells: tuple[str, ...]) -> str:
            return " | ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths))

        lines = [line(header), rule, *(line(r) for r in self.rows), rule]
        totals = ((human_count(self.trainable), "Trainable params"),
                  (human_count(self.non_trainable), "Non-trainable params"),
                  (human_count(self.total), "Total params"),
                  (f"{self.size_mb:,.3f}", "Total estimated model params size (MB)"),
                  (str(self.train_modules), "Modules in train mode"),
                  (str(self.eval_modules), "Modules in eval mode"))
        lines.extend(f"{value:<10}{label}" for value, label in totals)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summarize(module: nn.Module, max_depth: int = 1, precision: Any = None) -> Summary:
    """Summarize `module` down to `max_depth` (1 = direct children, -1 = all layers, 0 = totals only).

    Parameters not inside any listed layer show as an "other params" row; `precision` (the Trainer flag) sets the
    bytes per parameter of the size estimate, as in Lightning."""
    if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < -1:
        raise ValueError(f"ModelSummary(max_depth={max_depth!r}): expected -1 (all layers), 0 (totals only) or "
                         "a positive int (layers nested at most that deep)")
    if max_depth == 0:
        layers: list[tuple[str, nn.Module]] = []
    elif max_depth == 1:
        layers = list(module.named_children())
    else:
        layers = [(n, m) for n, m in list(module.named_modules())[1:]
                  if max_depth == -1 or n.count(".") < max_depth]
    counts = [sum(_numel(p) for p in m.parameters()) for _, m in layers]
    rows = [(str(i), name, type(m).__name__, human_count(c), "train" if m.training else "eval")
            for i, ((name, m), c) in enumerate(zip(layers, counts))]
    params = list(module.parameters())
    total = sum(_numel(p) for p in params)
    trainable = sum(_numel(p) for p in params if p.requires_grad)
    if total - sum(counts) > 0:
        rows.append((" ", "other params", "n/a", human_count(total - sum(counts)), "n/a"))
    modes = [m.training for m in list(module.modules())[1:]]
    return Summary(rows=tuple(rows), trainable=trainable, total=total,
                   size_mb=total * _bits(precision) / 8 * 1e-6,
                   train_modules=modes.count(True), eval_modules=modes.count(False))


class ModelSummary(Callback):
    """Write the model summary at fit start on rank zero; added by the Trainer when enable_model_summary=True.

    Example: `Trainer(callbacks=[ModelSummary(max_depth=2)])`. `max_depth=0` writes nothing (as in Lightning)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}): expected -1 (all layers), 0 (off) or a "
                             "positive int (layers nested at most that deep)")
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._max_depth or not trainer.is_global_zero:
            return
        s = summarize(pl_module, self._max_depth, precision=getattr(trainer, "precision", None))
        log.info("Model summary", table=s.table(), trainable=s.trainable, non_trainable=s.non_trainable,
                 total=s.total, size_mb=round(s.size_mb, 6), train_modules=s.train_modules, eval_modules=s.eval_modules)
