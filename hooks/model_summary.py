"""ModelSummary: the table of layers, types and parameter counts, printed when fit starts."""

from __future__ import annotations

from typing import Any

from torch import nn

from hooks.callback import Callback

__all__ = ["ModelSummary", "summarize"]


def _human(n: float) -> str:
    for unit in ("", " K", " M", " B", " T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000.0
    return f"{n:.1f} P"


def summarize(module: nn.Module, max_depth: int = 1) -> str:
    """Layers down to `max_depth` (name, type, params, mode), then trainable / non-trainable / total / size MB."""
    rows = []
    if max_depth != 0:
        for name, sub in module.named_modules():
            if not name:
                continue
            depth = name.count(".") + 1
            if max_depth != -1 and depth > max_depth:
                continue
            params = sum(p.numel() for p in sub.parameters())
            rows.append((name, type(sub).__name__, _human(params), "train" if sub.training else "eval"))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    size_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6
    lines = []
    if rows:
        header = ("", "Name", "Type", "Params", "Mode")
        table = [header] + [(str(i),) + r for i, r in enumerate(rows)]
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        fmt = " | ".join(f"{{:<{w}}}" for w in widths)
        lines.append(fmt.format(*header))
        lines.append("-" * len(lines[0]))
        lines.extend(fmt.format(*r) for r in table[1:])
        lines.append("-" * len(lines[0]))
    lines.append(f"{_human(trainable):<10} Trainable params")
    lines.append(f"{_human(total - trainable):<10} Non-trainable params")
    lines.append(f"{_human(total):<10} Total params")
    lines.append(f"{size_mb:<10.3f} Total estimated model params size (MB)")
    return "\n".join(lines)


class ModelSummary(Callback):
    """Print `summarize(model, max_depth)` at fit start (rank zero); the default with enable_model_summary=True."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}): expected an int >= -1 (-1 = all layers)")
        self._max_depth = max_depth

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        print(summarize(pl_module, self._max_depth))
