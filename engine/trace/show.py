"""A human view of a trace: the run's config, events per type, the control decisions (who stopped training, when and
why), the slowest states (from the wall-clock gaps between records), the loss curve as a terminal sparkline, and
`plot(trace, 'out.png')` with matplotlib when it is installed."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

from engine.trace.reader import Trace, read_trace

__all__ = ["summary", "show", "sparkline", "plot", "losses"]

_BARS = "▁▂▃▄▅▆▇█"


def _trace(trace: str | os.PathLike | Trace) -> Trace:
    return trace if isinstance(trace, Trace) else read_trace(trace)


def losses(trace: str | os.PathLike | Trace) -> list[tuple[int, float]]:
    """(batches_seen, loss) of every training batch record."""
    return [(r["ts"][3], r["loss"]) for r in _trace(trace).records if r["ev"] == "BatchEnded" and "loss" in r]


def sparkline(values: list[float], width: int = 60) -> str:
    """`values` as a line of block characters, averaged down to `width` buckets."""
    vals = [v for v in values if v == v and abs(v) != float("inf")]
    if not vals:
        return ""
    if len(vals) > width:
        size = len(vals) / width
        vals = [sum(b) / len(b) for b in (vals[int(i * size): max(int((i + 1) * size), int(i * size) + 1)]
                                          for i in range(width))]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int((v - lo) / span * (len(_BARS) - 1) + 0.5))] for v in vals)


def summary(trace: str | os.PathLike | Trace) -> str:
    """The text `python -m engine trace summary` prints."""
    t = _trace(trace)
    h, recs = t.header, t.records
    cfg = h.get("config") or {}
    changed = {k: v for k, v in cfg.items() if v not in (None, False) and k not in ("callbacks",)}
    lines = [f"trace {t.path}", f"  statetrain {h.get('engine')}, torch {h.get('torch')}, python {h.get('python')}, "
             f"level {t.level!r}, rank {h.get('rank')}/{h.get('world_size')}, seed {h.get('seed')}",
             f"  module {h.get('module')}; {len(recs)} records" + (" (last line cut off: killed run)"
                                                                   if t.truncated else "")]
    shown = ", ".join(f"{k}={v}" for k, v in list(changed.items())[:12])
    lines.append(f"  config: {shown}")
    if recs:
        last = recs[-1]["ts"]
        lines.append(f"  reached epoch={last[0]} step={last[2]} batches_seen={last[3]} samples_seen={last[4]}")
    lines.append("events per type:")
    for name, n in Counter(r["ev"] for r in recs).most_common():
        lines.append(f"  {name:<24}{n:>9}")
    lines.append("control decisions:")
    decisions = [r for r in recs if r["ev"] == "ControlRequested"]
    for r in decisions:
        req, ts = r.get("request", {}), r["ts"]
        lines.append(f"  epoch={ts[0]} batch={ts[1]} step={ts[2]}: {req.get('action')} by {req.get('by')}"
                     + (f" ({req.get('reason')})" if req.get("reason") else ""))
    if not decisions:
        lines.append("  none (the run ended by its limits)")
    errors = [r for r in recs if r["ev"] == "ExceptionRaised"]
    for r in errors:
        lines.append(f"  exception at step {r['ts'][2]}: {r.get('error')}")
    spent: dict[str, float] = defaultdict(float)
    for a, b in zip(recs, recs[1:]):
        if a.get("state"):
            spent[str(a["state"]).split("/")[0]] += max(0.0, b["wall"] - a["wall"])
    if spent:
        lines.append("slowest states (wall time between records):")
        for state, secs in sorted(spent.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"  {state:<24}{secs:>9.3f} s")
    curve = [v for _, v in losses(t)]
    if curve:
        lines.append(f"loss ({len(curve)} batches, {curve[0]:.4g} -> {curve[-1]:.4g}, min {min(curve):.4g}):")
        lines.append("  " + sparkline(curve))
    return "\n".join(lines)


def show(trace: str | os.PathLike | Trace, limit: int = 50, event: str | None = None) -> str:
    """The first `limit` records (of type `event` when given), one line each."""
    from engine.trace.diff import describe_record

    t = _trace(trace)
    recs = [r for r in t.records if event is None or r["ev"] == event]
    out = [describe_record(r) + (f" state={r['state']}" if r.get("state") else "") for r in recs[:limit]]
    if len(recs) > limit:
        out.append(f"... {len(recs) - limit} more")
    return "\n".join(out)


def plot(trace: str | os.PathLike | Trace, out: str | os.PathLike) -> str:
    """The loss curve as a PNG (needs matplotlib: `pip install matplotlib`); returns the path written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModuleNotFoundError("plot(..., out) needs matplotlib: `pip install matplotlib`") from None
    points = losses(trace)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1)
    ax.set_xlabel("batches seen")
    ax.set_ylabel("loss")
    ax.set_title(os.path.basename(os.fspath(_trace(trace).path)))
    tmp = os.fspath(out) + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return os.fspath(out)
