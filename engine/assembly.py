"""The facade's assembly: the default handlers, loggers and profiler a Trainer attaches, and its console output.

Part of the facade (with `engine/trainer.py`): the one place besides the Trainer that chooses concrete handlers from
`hooks/`, which it imports lazily so `import engine` stays light.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from engine.config import TrainerConfig
from engine.errors import MisconfigurationException

__all__ = ["set_torch_flags", "default_callbacks", "build_loggers", "build_profiler", "is_progress_bar",
           "configure_messages", "print_results", "build_tracers", "with_tracers", "replay_attach"]


def set_torch_flags(s: Any) -> None:
    if s.deterministic:
        if torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=s.deterministic == "warn")
    if s.benchmark is not None and torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = s.benchmark


def default_callbacks(s: Any, config: TrainerConfig, callbacks: list[Any]) -> tuple[list[Any], bool]:
    """Lightning appends its default callbacks after the user's: Timer (max_time), progress bar, model summary;
    then statetrain's non-finite loss check (`on_nonfinite_loss`) and the checkpoint callbacks, last.
    Returns the list and whether a Timer limits the run."""
    from engine.log import log

    timers = [c for c in callbacks if type(c).__name__ == "Timer"]
    if s.max_time_seconds is not None:
        if timers:
            log.info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
        else:
            from hooks.timer import Timer

            timers = [Timer(duration=config.max_time, interval="step")]
            callbacks.append(timers[0])
    bars = [c for c in callbacks if is_progress_bar(c)]
    if not s.enable_progress_bar and bars:
        raise MisconfigurationException(
            f"Trainer(enable_progress_bar=False) but callbacks contains {type(bars[0]).__name__}; remove it or "
            "set enable_progress_bar=True")
    if s.enable_progress_bar and not bars:
        from hooks.progress import TQDMProgressBar

        callbacks.append(TQDMProgressBar())
    if s.enable_model_summary and not any(type(c).__name__ in ("ModelSummary", "RichModelSummary")
                                          for c in callbacks):
        from hooks.model_summary import ModelSummary

        callbacks.append(ModelSummary())
    from hooks.nonfinite import NonFiniteLoss

    if s.on_nonfinite_loss is not None and not any(isinstance(c, NonFiniteLoss) for c in callbacks):
        callbacks.append(NonFiniteLoss(s.on_nonfinite_loss))
    from hooks.checkpoint import ModelCheckpoint, OnExceptionCheckpoint

    if config.enable_checkpointing is False and any(isinstance(c, ModelCheckpoint) for c in callbacks):
        raise MisconfigurationException("Trainer was configured with `enable_checkpointing=False` but found "
                                        "`ModelCheckpoint` in callbacks list; remove it or drop the flag")
    if config.enable_checkpointing is not False and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(ModelCheckpoint())  # under fast_dev_run it is there and saves nothing, as in Lightning
    # Lightning runs the checkpoint callbacks last, after every other callback has seen the event
    kinds = (ModelCheckpoint, OnExceptionCheckpoint)
    return [c for c in callbacks if not isinstance(c, kinds)] + [c for c in callbacks if isinstance(c, kinds)], \
        bool(timers)


def build_loggers(s: Any) -> list[Any]:
    """logger=True/None: TensorBoard at default_root_dir (CSV without tensorboardX); False: none; else as given.
    No logger under fast_dev_run, as in Lightning."""
    flag = s.logger
    if flag is False or s.fast_dev_run:
        return []
    if flag is True:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            from hooks.csv_logger import CSVLogger

            return [CSVLogger(save_dir=s.default_root_dir)]
        from hooks.tensorboard import TensorBoardLogger

        return [TensorBoardLogger(save_dir=s.default_root_dir)]
    return list(flag) if isinstance(flag, (list, tuple)) else [flag]


def build_tracers(s: Any, loggers: list[Any]) -> list[Any]:
    """The trace recorder (`trace=`: default 'step' next to the logs, but only when the run has a logger, so
    logger=False and fast_dev_run write nothing unless `trace` is given) and the verifier (`verify_trace=`)."""
    from hooks.trace_recorder import TraceRecorder

    tracers = []
    if s.trace is None and loggers and _remote(getattr(loggers[0], "save_dir", None)):
        from engine.log import log

        log.info("No default trace: the logs go to a URL and traces are written to local files only; pass "
                 "Trainer(trace='local/path/trace.jsonl') to record one")
    elif s.trace is not False and (s.trace is not None or loggers):
        from engine.trace.schema import TraceConfig

        tracers.append(TraceRecorder(s.trace if s.trace is not None else TraceConfig()))
    if s.verify_trace is not None:
        from engine.trace.verify import TraceVerifier

        verifier = TraceVerifier(s.verify_trace)
        tracers.append(TraceRecorder(verifier.config, sink=verifier))
    return tracers


def _remote(save_dir: Any) -> bool:
    from engine.utilities.cloud_io import is_remote

    return save_dir is not None and is_remote(save_dir)


def with_tracers(attach: Any, tracers: list[Any], bus: Any) -> Any:
    """The run's attach function with the tracers subscribed last (TRACE band), for the run only (StateChanged,
    which the machine checks before a run starts, for the Trainer's lifetime)."""
    if not tracers:
        return attach
    for tracer in tracers:
        tracer.subscribe(bus, lifetime=True)

    def attach_run_and_trace(bus: Any, callbacks: list[Any], trainer: Any, module: Any) -> tuple[list, list]:
        subs, handlers = attach(bus, callbacks, trainer, module)
        for tracer in tracers:
            subs.extend(tracer.subscribe(bus))
        return subs, handlers
    return attach_run_and_trace


def replay_attach(bus: Any, handlers: list[Any], trainer: Any) -> tuple[list, list]:
    """Attach handlers for a trace replay the way a run does (Lightning callbacks through their adapter)."""
    from hooks.callback import attach_run

    return attach_run(bus, handlers, trainer, None)


def build_profiler(flag: Any) -> Any:
    if flag is None:
        return None
    from hooks.profiler import resolve_profiler

    return resolve_profiler(flag)


def is_progress_bar(cb: Any) -> bool:
    return any(k.__name__ in ("TQDMProgressBar", "ProgressBar", "RichProgressBar") for k in type(cb).__mro__)


def configure_messages(log_format: str | None, rank: int) -> None:
    from engine.log import configure

    configure(log_format=log_format, rank=rank)


def print_results(stage: str, results: Iterable[dict[str, float]]) -> None:
    """The table Lightning prints after validate/test: metric name and value per dataloader."""
    results = list(results)
    if not any(results):
        return
    title = {"validate": "Validate metric", "test": "Test metric"}.get(stage, stage)
    for i, res in enumerate(results):
        if not res:
            continue
        width = max(len(title), *(len(k) for k in res)) + 2
        header = f"{title:<{width}}DataLoader {i}"
        print("-" * len(header) + "-" * 10)
        print(header)
        print("-" * len(header) + "-" * 10)
        for k, v in res.items():
            print(f"{k:<{width}}{v:.6g}")
        print("-" * len(header) + "-" * 10)
