"""`python -m engine trace schema|show|summary|diff|replay`: the trace tools on the command line.

Exit status: 0 on success (diff: the traces are equal), 1 when `diff` finds a divergence, 2 on bad input (a
missing or corrupt file, a handler that cannot be imported).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

__all__ = ["add_trace_parser", "load_object"]


def load_object(spec: str, flag: str = "--handler") -> Any:
    """`package.module:Name` -> the object (a class, a callable); errors name the flag and what is expected."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"{flag} {spec!r}: expected 'package.module:Name', e.g. hooks.early_stopping:EarlyStopping")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"{flag} {spec!r}: cannot import {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SystemExit(f"{flag} {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _kwargs(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--kw {item!r}: expected key=value (the value is read as JSON, else as a string)")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _schema(args: argparse.Namespace) -> int:
    from engine.trace.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from engine.trace.show import plot, summary

    print(summary(args.trace))
    if args.plot:
        try:
            print(f"loss curve written to {plot(args.trace, args.plot)}")
        except ModuleNotFoundError as exc:
            print(f"--plot: {exc}", file=sys.stderr)
            return 2
    return 0


def _show(args: argparse.Namespace) -> int:
    from engine.trace.show import show

    print(show(args.trace, limit=args.limit, event=args.event))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from engine.trace.diff import diff_traces

    report = diff_traces(args.a, args.b, rtol=args.rtol, atol=args.atol)
    print(report)
    return 0 if report.equal else 1


def _replay(args: argparse.Namespace) -> int:
    from engine.trace.replay import replay

    kwargs = _kwargs(args.kw)
    handlers = []
    for spec in args.handler:
        factory = load_object(spec)
        handlers.append(factory(**kwargs) if callable(factory) else factory)
    print(replay(args.trace, handlers))
    return 0


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from engine.trace.reader import TraceCorrupt

        try:
            return fn(args)
        except (OSError, TraceCorrupt) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run


def add_trace_parser(sub: Any) -> None:
    """Add `trace ...` to the `python -m engine` parser."""
    p = sub.add_parser("trace", help="trace tools: schema, show, summary, diff, replay")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    s = tsub.add_parser("schema", help="print the JSON Schema of the trace format")
    s.set_defaults(run=_schema)
    s = tsub.add_parser("summary", help="config, events per type, control decisions, slowest states, loss curve")
    s.add_argument("trace")
    s.add_argument("--plot", metavar="OUT.png", help="also draw the loss curve (needs matplotlib)")
    s.set_defaults(run=_guarded(_summary))
    s = tsub.add_parser("show", help="the records, one line each")
    s.add_argument("trace")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--event", help="only records of this event type, e.g. BatchEnded")
    s.set_defaults(run=_guarded(_show))
    s = tsub.add_parser("diff", help="the first divergence of two traces (exit 0 equal, 1 differ)")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=0.0)
    s.add_argument("--atol", type=float, default=0.0)
    s.set_defaults(run=_guarded(_diff))
    s = tsub.add_parser("replay", help="feed a trace's events to handlers, without a model")
    s.add_argument("trace")
    s.add_argument("--handler", action="append", required=True, metavar="module:Class",
                   help="a handler class (built with the --kw arguments); repeat for several")
    s.add_argument("--kw", action="append", default=[], metavar="key=value", help="constructor argument")
    s.set_defaults(run=_guarded(_replay))
