"""The framework's own messages, through structlog: `log.info("event", key=value)`; rank zero only by default.

Formats: 'console' (readable lines for a terminal) or 'json' (one JSON object per line with event, level, timestamp,
logger, rank and the keys). Settings, strongest first: the arguments of `configure()` (the Trainer passes its
`log_format` flag and its rank), earlier explicit `configure()` arguments, then the environment —
STATETRAIN_LOG_FORMAT (console|json), STATETRAIN_LOG_LEVEL (DEBUG|INFO|WARNING|ERROR|CRITICAL),
STATETRAIN_LOG_ALL_RANKS=1 (let ranks != 0 speak too; DEBUG does as well) — then console, INFO, stderr.

`log` is one stable object whose level methods are swapped on (re)configuration: a call below the level, or on a
silent rank, is a no-op function call (about 0.1 µs). structlog is imported on the first message or `configure()`,
not with `import engine`. Metrics never come here (they go to loggers); Python warnings stay `warnings.warn`.

structlog sits on top of the standard library: every message becomes a `logging.LogRecord` of the `engine` logger
(`record.getMessage()` is the rendered line, `record.event_dict` the structured keys), so `logging` configuration,
`caplog` and any handler a user adds see it. The `engine` logger carries one console handler that writes the line to
the configured stream (default: the current sys.stderr), except when the program gave the root logger handlers of
its own (`logging.basicConfig(...)`): then those print it, once. `logging.getLogger("engine").setLevel(...)` set by
the user is respected by later `configure()` calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import IO, Any, Callable, Iterator

from engine.errors import MisconfigurationException

__all__ = ["log", "MessageLog", "configure", "reset", "capture_logs", "env_rank", "FORMATS", "LEVELS", "LOGGER_NAME",
           "log_lines"]

FORMATS = ("console", "json")
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_METHOD_LEVEL = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40,
                 "critical": 50, "fatal": 50}
_RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # Lightning's rank_zero_only order
_JSON_HEAD = ("event", "level", "timestamp", "logger", "rank")
LOGGER_NAME = "engine"  # the standard-library logger every framework message is a record of


def _nop(*args: Any, **kwargs: Any) -> None:
    return None


class MessageLog:
    """The message logger: `debug/info/warning/error/exception/critical(event, *args, **keys)`.

    The methods are instance attributes set by `configure()`; until then the first call configures from the
    environment."""

    def __init__(self) -> None:
        self.format = "console"
        self.level = LEVELS["INFO"]
        self.rank = 0
        self.silent = False
        for name in _METHOD_LEVEL:
            setattr(self, name, self._first_call(name))

    def _first_call(self, name: str) -> Callable[..., None]:
        def first(event: str, *args: Any, **kw: Any) -> None:
            if not _state["configured"]:
                configure()
            getattr(self, name)(event, *args, **kw)
        return first

    def is_enabled(self, level: str | int) -> bool:
        """Whether a message at `level` ('info', 'DEBUG', 20, ...) would be written: guard costly arguments."""
        if not _state["configured"]:
            configure()
        return not self.silent and _parse_level(level, "level") >= self.level

    # Declared for type checkers and readers; replaced per instance by configure().
    def debug(self, event: str, *args: Any, **kw: Any) -> None: ...
    def info(self, event: str, *args: Any, **kw: Any) -> None: ...
    def warning(self, event: str, *args: Any, **kw: Any) -> None: ...
    def warn(self, event: str, *args: Any, **kw: Any) -> None: ...
    def error(self, event: str, *args: Any, **kw: Any) -> None: ...
    def exception(self, event: str, *args: Any, **kw: Any) -> None: ...
    def critical(self, event: str, *args: Any, **kw: Any) -> None: ...
    def fatal(self, event: str, *args: Any, **kw: Any) -> None: ...

    def __repr__(self) -> str:
        level = next((k for k, v in LEVELS.items() if v == self.level), str(self.level))
        return f"MessageLog(format={self.format!r}, level={level!r}, rank={self.rank}, silent={self.silent})"


log = MessageLog()

_explicit: dict[str, Any] = {}  # settings given as arguments to configure(); they outlive later None arguments
_state: dict[str, Any] = {"configured": False, "sinks": []}  # sinks: active capture_logs() blocks, innermost last


class _ConsoleHandler(logging.Handler):
    """The `engine` logger's own output: the rendered line on the configured stream (None: the current sys.stderr).

    Without an explicit stream it stays quiet when the root logger has handlers the program installed (they print
    the record); pytest's capture handlers do not count, so `capsys` and `caplog` both see messages in tests."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.stream: IO[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and _root_prints():
            return
        stream = self.stream if self.stream is not None else sys.stderr
        try:
            stream.write(record.getMessage() + "\n")
            stream.flush()
        except (OSError, ValueError):  # closed stream (interpreter exit, broken pipe): never break training
            pass


def _root_prints() -> bool:
    return any(not type(h).__module__.startswith("_pytest") for h in logging.getLogger().handlers)


class _StdlibLogger:
    """structlog's final logger: hands the rendered line (and the event dict) to the `engine` stdlib logger."""

    __slots__ = ()

    @staticmethod
    def _emit(level: int, message: str, event_dict: dict | None = None) -> None:
        logger = logging.getLogger(LOGGER_NAME)
        if logger.isEnabledFor(level):
            # The record's file and line are the code that called `log.info(...)`, past this module and structlog.
            frame, stacklevel = sys._getframe(0), 1
            while frame.f_back is not None and (frame.f_code.co_filename == __file__
                                                or "structlog" in frame.f_code.co_filename):
                frame, stacklevel = frame.f_back, stacklevel + 1
            logger.log(level, "%s", message, extra={"event_dict": event_dict or {}}, stacklevel=stacklevel)

    def debug(self, message: str, event_dict: dict | None = None) -> None:
        self._emit(10, message, event_dict)

    def info(self, message: str, event_dict: dict | None = None) -> None:
        self._emit(20, message, event_dict)

    def warning(self, message: str, event_dict: dict | None = None) -> None:
        self._emit(30, message, event_dict)

    def error(self, message: str, event_dict: dict | None = None) -> None:
        self._emit(40, message, event_dict)

    def critical(self, message: str, event_dict: dict | None = None) -> None:
        self._emit(50, message, event_dict)

    warn = warning
    exception = error
    fatal = critical
    msg = log = info


def _to_stdlib(render: Callable[[Any, str, dict], str]) -> Callable[[Any, str, dict], tuple]:
    """The last processor: the rendered line plus a copy of the keys, as the final logger's arguments."""
    def processor(logger: Any, method: str, event_dict: dict) -> tuple:
        keys = dict(event_dict)
        return (render(logger, method, event_dict), keys), {}
    return processor


def _setup_stdlib(level: int, stream: IO[str] | None) -> None:
    """The `engine` logger: its console handler (once), the stream, and our level unless the user set another."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = _state.get("handler")
    if handler is None:
        handler = _state["handler"] = _ConsoleHandler()
    if handler not in logger.handlers:
        logger.addHandler(handler)
    handler.stream = stream
    if logger.level in (logging.NOTSET, _state.get("stdlib_level")):
        logger.setLevel(level)
        _state["stdlib_level"] = level


# At import, as Lightning does for its logger: records of the `engine` hierarchy (rank_zero_info, ...) show at INFO
# even before the first Trainer configures the message log.
_setup_stdlib(LEVELS["INFO"], None)


def _parse_level(level: str | int, source: str) -> int:
    if isinstance(level, int) and not isinstance(level, bool) and level in LEVELS.values():
        return level
    if isinstance(level, str) and level.strip().upper() in LEVELS:
        return LEVELS[level.strip().upper()]
    raise MisconfigurationException(
        f"{source}={level!r} is not a log level; expected one of {', '.join(LEVELS)} (or 10/20/30/40/50)")


def _parse_format(fmt: str, source: str) -> str:
    value = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if value == "auto":
        env = os.environ.get("STATETRAIN_LOG_FORMAT", "").strip()
        return _parse_format(env, "STATETRAIN_LOG_FORMAT") if env and env.lower() != "auto" else "console"
    if value not in FORMATS:
        raise MisconfigurationException(
            f"{source}={fmt!r} is not a message format; expected 'console', 'json' or 'auto' "
            "(auto = $STATETRAIN_LOG_FORMAT, else console)")
    return value


def env_rank() -> int:
    for name in _RANK_ENV:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


def _order_for_json(logger: Any, method: str, event_dict: dict) -> dict:
    head = {k: event_dict.pop(k) for k in _JSON_HEAD if k in event_dict}
    head.update(event_dict)
    return head


def _render_json(logger: Any, method: str, event_dict: dict) -> str:
    return json.dumps(_order_for_json(logger, method, event_dict), default=repr, ensure_ascii=False)


def _render_console(logger: Any, method: str, event_dict: dict) -> str:
    """`event key=value ...`; WARNING+ gets a level prefix, rank != 0 a rank prefix; multi-line values follow as
    blocks (a table, a traceback), so they still read as written."""
    event_dict.pop("logger", None)
    event_dict.pop("timestamp", None)
    level = event_dict.pop("level", "info")
    rank = event_dict.pop("rank", 0)
    event = str(event_dict.pop("event", ""))
    prefix = f"[rank {rank}] " if rank else ""
    if level not in ("info", "debug"):
        prefix += f"{level.upper()}: "
    elif level == "debug":
        prefix += "DEBUG: "
    inline, blocks = [], []
    for key, value in event_dict.items():
        text = value if isinstance(value, str) else repr(value) if not isinstance(value, (int, float)) else str(value)
        if "\n" in text:
            blocks.append(text.rstrip("\n"))
        else:
            inline.append(f"{key}={text}")
    head = prefix + event + ("" if not inline else (" " if event else "") + " ".join(inline))
    return "\n".join([head, *blocks]) if blocks else head


def _build_bound(fmt: str, level: int, rank: int, stream: IO[str] | None) -> Any:
    import structlog  # first message or configure(): keeps `import engine` light

    sink = _state["sinks"][-1] if _state["sinks"] else None
    processors: list[Callable] = [structlog.processors.add_log_level]
    if fmt == "json" and sink is None:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors.append(structlog.processors.format_exc_info)
    if sink is not None:
        processors.append(sink)
    else:
        processors.append(_to_stdlib(_render_json if fmt == "json" else _render_console))
    _setup_stdlib(level, stream)
    return structlog.wrap_logger(
        _StdlibLogger(), processors=processors, context_class=dict,
        wrapper_class=structlog.make_filtering_bound_logger(level),
    ).bind(logger="statetrain", rank=rank)


def _install(bound: Any | None, level: int) -> None:
    for name, method_level in _METHOD_LEVEL.items():
        setattr(log, name, _nop if bound is None or method_level < level else getattr(bound, name))


def configure(log_format: str | None = None, level: str | int | None = None, rank: int | None = None,
              stream: IO[str] | None = None) -> None:
    """Set the message format ('console' | 'json' | 'auto'), level, this process's rank and the output stream.

    None keeps an earlier explicit setting, else takes the environment (STATETRAIN_LOG_FORMAT, STATETRAIN_LOG_LEVEL,
    RANK/LOCAL_RANK/SLURM_PROCID), else console / INFO / 0 / sys.stderr (looked up at each write). Ranks != 0 are
    silent unless the level is DEBUG or STATETRAIN_LOG_ALL_RANKS=1."""
    if log_format is not None:
        _explicit["log_format"] = _parse_format(log_format, "log_format")
    if level is not None:
        _explicit["level"] = _parse_level(level, "level")
    if rank is not None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise MisconfigurationException(f"configure(rank={rank!r}): expected the global rank, an int >= 0")
        _explicit["rank"] = rank
    if stream is not None:
        if not hasattr(stream, "write"):
            raise MisconfigurationException(
                f"configure(stream={stream!r}): expected a text stream with .write() (e.g. sys.stderr, a file)")
        _explicit["stream"] = stream

    fmt = _explicit.get("log_format") or _parse_format("auto", "log_format")
    env_level = os.environ.get("STATETRAIN_LOG_LEVEL", "").strip()
    lvl = _explicit.get("level") or (_parse_level(env_level, "STATETRAIN_LOG_LEVEL") if env_level else LEVELS["INFO"])
    rnk = _explicit["rank"] if "rank" in _explicit else env_rank()
    all_ranks = os.environ.get("STATETRAIN_LOG_ALL_RANKS", "").strip().lower() in ("1", "true", "yes")
    silent = rnk != 0 and lvl > LEVELS["DEBUG"] and not all_ranks

    log.format, log.level, log.rank, log.silent = fmt, lvl, rnk, silent
    _install(None if silent else _build_bound(fmt, lvl, rnk, _explicit.get("stream")), lvl)
    _state["configured"] = True


def log_lines(lines: list[str]) -> None:
    """INFO messages, one per line (Lightning's informational lines); nothing at all for an empty list."""
    for line in lines:
        log.info(line)


def reset() -> None:
    """Forget explicit settings and reconfigure from the environment (tests; a new run in the same process)."""
    _explicit.clear()
    configure()


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Collect the messages written inside the block as dicts (event, level, logger, rank, keys) instead of
    writing them; the level and rank rules still apply, and configure() calls inside the block keep capturing.
    Like `structlog.testing.capture_logs`, for this logger."""
    import structlog

    captured: list[dict[str, Any]] = []

    def sink(logger: Any, method: str, event_dict: dict) -> Any:
        captured.append(dict(event_dict))
        raise structlog.DropEvent

    _state["sinks"].append(sink)
    try:
        configure()  # same settings; a configure() inside the block (a new Trainer) keeps capturing
        yield captured
    finally:
        _state["sinks"].remove(sink)
        configure()
