"""TQDMProgressBar: Lightning's progress bars, cheap per step, and plain lines when the output is not a terminal.

On a terminal: one tqdm bar per training epoch (`Epoch N`, total = the epoch's training batches, as in Lightning 2.x;
validation has its own bar below it), a sanity-check bar, and test/predict bars. The postfix is `v_num` (the logger's
version) then `trainer.progress_bar_metrics`. Output goes to sys.stdout, Lightning's choice (the framework's own
messages go to stderr through engine.log).

Cost per training step: an int check and a clock read. A bar is redrawn at most every `MIN_REDRAW` seconds (tqdm's
default mininterval) and on the last batch; only then are the metrics read (the one host sync) and formatted.

Not a terminal (pipe, file, CI log): nothing is redrawn. A plain line (`Epoch 0: 12/16 [00:01<00:00, 9.80it/s,
v_num=0, loss=0.123]`) is printed at most every `print_interval` seconds, plus one at the end of every training
epoch and of every validation/test/predict run.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from typing import Any

from engine.errors import user_stacklevel
from hooks.callback import Callback

__all__ = ["ProgressBar", "TQDMProgressBar"]

MIN_REDRAW = 0.1  # seconds between two redraws of a terminal bar (tqdm's default mininterval)
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
_PAD = 5


def _fmt(value: Any) -> str:
    """A postfix value. Floats as tqdm writes them (the shorter of 3 significant digits and repr), padded with
    zeros to 5 characters so the bar does not flicker as digits come and go (Lightning's padding)."""
    if not isinstance(value, float):
        return str(value)
    short = f"{value:.3g}".replace("e+0", "e+").replace("e-0", "e-")
    text = short if len(short) < len(repr(value)) else repr(value)
    if "e" in text or not math.isfinite(value):
        return text
    if "." not in text and len(text) < _PAD:
        text += "."
    return text + "0" * (_PAD - len(text))


def _total(x: int | float | None) -> int | None:
    """tqdm takes None for an unknown (infinite) total."""
    if x is None or (isinstance(x, float) and (math.isinf(x) or math.isnan(x))):
        return None
    return int(x)


class _Track:
    """One bar's counters; the tqdm object only exists on a terminal."""

    __slots__ = ("desc", "total", "n", "start", "next_draw", "bar")

    def __init__(self, desc: str, total: int | None, bar: Any = None) -> None:
        self.desc, self.total, self.n, self.bar = desc, total, 0, bar
        self.start = time.monotonic()
        self.next_draw = 0.0

    def restart(self, desc: str, total: int | None) -> None:
        self.desc, self.total, self.n = desc, total, 0
        self.start = time.monotonic()
        self.next_draw = 0.0
        if self.bar is not None:
            self.bar.reset()
            self.bar.total = total
            self.bar.initial = 0
            self.bar.set_description(desc, refresh=False)


class ProgressBar(Callback):
    """What every progress bar shares (Lightning's `ProgressBar` base): enable/disable, the refresh rate, and the
    metrics it shows. Subclasses set `_refresh_rate` and draw."""

    _refresh_rate = 1
    _enabled = True
    _warned_duplicates = False

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        """Stop drawing (`setup` does this on ranks != 0; Lightning's LR finder does it around its runs)."""
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        """What the postfix shows: `v_num` (logger version) then `trainer.progress_bar_metrics`. Override to change
        it; it is called only when a bar is redrawn or a line printed."""
        standard: dict[str, Any] = {}
        loggers = getattr(trainer, "loggers", None) or []
        if loggers:
            if len(loggers) == 1:
                version = loggers[0].version
            else:
                version = "_".join(dict.fromkeys(str(lg.version) for lg in loggers))
            if version not in ("", None):
                standard["v_num"] = version[-4:] if isinstance(version, str) else version
        metrics = trainer.progress_bar_metrics
        duplicates = standard.keys() & metrics.keys()
        if duplicates and not self._warned_duplicates:
            self._warned_duplicates = True
            name = sorted(duplicates)[0]
            warnings.warn(f"The progress bar already shows {name!r}; `self.log({name!r}, ..., prog_bar=True)` "
                          f"replaces it there. Rename the metric or override `{type(self).__name__}.get_metrics()`.",
                          UserWarning, stacklevel=user_stacklevel())
        return {**standard, **metrics}


class TQDMProgressBar(ProgressBar):
    """Lightning's default progress bar: `Trainer(callbacks=[TQDMProgressBar(refresh_rate=10)])`.

    refresh_rate: redraw at most every that many batches (0 disables the bar; default 1, or $TQDM_MINITERS if larger;
    on a terminal redraws are further spaced by MIN_REDRAW seconds, off a terminal lines by print_interval);
    process_position: offset the bars by this many lines (2 per position); leave: keep one finished bar per epoch;
    print_interval: seconds between two plain lines when the output is not a terminal."""

    def __init__(self, refresh_rate: int | None = None, process_position: int = 0, leave: bool = False,
                 print_interval: float = 30.0) -> None:
        if refresh_rate is not None and (not isinstance(refresh_rate, int) or isinstance(refresh_rate, bool)
                                         or refresh_rate < 0):
            raise ValueError(f"TQDMProgressBar(refresh_rate={refresh_rate!r}): expected an int >= 0 "
                             "(batches between redraws; 0 disables the bar)")
        if not isinstance(process_position, int) or process_position < 0:
            raise ValueError(f"TQDMProgressBar(process_position={process_position!r}): expected an int >= 0")
        if not isinstance(print_interval, (int, float)) or isinstance(print_interval, bool) or print_interval < 0:
            raise ValueError(f"TQDMProgressBar(print_interval={print_interval!r}): expected seconds >= 0 between "
                             "two plain progress lines when the output is not a terminal")
        rate = 1 if refresh_rate is None else refresh_rate
        if "TQDM_MINITERS" in os.environ and os.environ["TQDM_MINITERS"].strip().isdigit():
            rate = max(int(os.environ["TQDM_MINITERS"]), rate) if rate else 0
        self._refresh_rate = rate
        self._process_position = process_position
        self._leave = leave
        self._print_interval = float(print_interval)
        self._enabled = True
        self._trainer: Any = None
        self._terminal: bool | None = None
        self._train: _Track | None = None
        self._eval: _Track | None = None
        self._eval_idx: int | None = None
        self._next_line = 0.0
        self._warned_duplicates = False

    # -- Lightning's public surface -------------------------------------------------------------------------------
    @property
    def process_position(self) -> int:
        return self._process_position

    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise TypeError(f"The `{type(self).__name__}.trainer` reference is set in `setup`; it is not set yet.")
        return self._trainer

    @property
    def train_progress_bar(self) -> Any:
        """The training tqdm bar (None when the output is not a terminal or before training)."""
        return None if self._train is None else self._train.bar

    @property
    def val_progress_bar(self) -> Any:
        """The current validation/test/predict/sanity tqdm bar, if any."""
        return None if self._eval is None else self._eval.bar

    test_progress_bar = predict_progress_bar = val_progress_bar

    sanity_check_description = "Sanity Checking"
    train_description = "Training"
    validation_description = "Validation"
    test_description = "Testing"
    predict_description = "Predicting"

    @property
    def total_train_batches(self) -> int | float:
        """Training batches this epoch (fewer when max_epochs=-1 and max_steps ends the run sooner)."""
        t = self.trainer
        if t.max_epochs == -1 and t.max_steps is not None and t.max_steps > 0:
            return min(t.num_training_batches, t.max_steps - t.global_step)
        return t.num_training_batches

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print without breaking the bars on a terminal (tqdm.write)."""
        bar = self.train_progress_bar if self.train_progress_bar is not None else self.val_progress_bar
        if bar is not None and not bar.disable:
            bar.write(sep.join(map(str, args)), **kwargs)
        else:
            print(*args, sep=sep, **kwargs)

    # -- bar construction (override to customize, as in Lightning) ------------------------------------------------
    def _tqdm(self, desc: str, position: int, leave: bool, smoothing: float = 0.3) -> Any:
        from tqdm import tqdm  # first bar only: keeps `import engine` light

        return tqdm(desc=desc, position=2 * self._process_position + position, disable=self.is_disabled,
                    leave=leave, dynamic_ncols=True, file=sys.stdout, smoothing=smoothing, bar_format=BAR_FORMAT)

    def init_sanity_tqdm(self) -> Any:
        return self._tqdm(self.sanity_check_description, 0, leave=False)

    def init_train_tqdm(self) -> Any:
        return self._tqdm(self.train_description, 0, leave=True, smoothing=0)

    def init_validation_tqdm(self) -> Any:
        has_main_bar = self.trainer.state.fn != "validate"
        return self._tqdm(self.validation_description, int(has_main_bar), leave=not has_main_bar)

    def init_test_tqdm(self) -> Any:
        return self._tqdm(self.test_description, 0, leave=True)

    def init_predict_tqdm(self) -> Any:
        return self._tqdm(self.predict_description, 0, leave=True, smoothing=0)

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _postfix(self) -> str:
        t = self.trainer
        metrics = self.get_metrics(t, t.lightning_module)
        return ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())

    def _draw(self, track: _Track, metrics: bool) -> None:
        """Redraw `track`'s bar at its count, with the metrics postfix when `metrics`."""
        bar = track.bar
        if bar is None or bar.disable:
            return
        bar.n = track.n
        if metrics:
            bar.set_postfix_str(self._postfix(), refresh=False)
        bar.refresh()

    def _line(self, track: _Track, metrics: bool) -> None:
        """Print one plain progress line for `track`."""
        from tqdm import tqdm

        elapsed = time.monotonic() - track.start
        text = tqdm.format_meter(track.n, track.total, elapsed, prefix=track.desc, bar_format=LINE_FORMAT,
                                 postfix=self._postfix() if metrics else None)
        stream = sys.stdout
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass
        self._next_line = time.monotonic() + self._print_interval

    def _step(self, track: _Track, n: int, metrics: bool) -> None:
        """Count batch `n`; draw when its turn comes (refresh_rate, then the clock). O(1) otherwise."""
        track.n = n
        rate = self._refresh_rate
        if not rate or not self._enabled or (n % rate and n != track.total):
            return
        now = time.monotonic()
        if self._terminal:
            if now >= track.next_draw or n == track.total:
                track.next_draw = now + MIN_REDRAW
                self._draw(track, metrics)
        elif now >= self._next_line and n != track.total:  # the last batch's line comes at the end of the run
            self._line(track, metrics)

    def _open_eval(self, desc: str, bar: Any) -> None:
        self._close_eval()
        self._eval = _Track(desc, None, bar)
        self._eval_idx = None

    def _close_eval(self, final_line: bool = False) -> None:
        track = self._eval
        if track is None:
            return
        if final_line and not self._terminal and self.is_enabled and track.n:
            self._line(track, metrics=False)
        if track.bar is not None:
            track.bar.close()
        self._eval = None
        self._eval_idx = None

    def _eval_batch_start(self, desc: str, totals: Any, dataloader_idx: int) -> None:
        track = self._eval
        if track is None or dataloader_idx == self._eval_idx:
            return
        if self._eval_idx is not None and not self._terminal and self.is_enabled and track.n:
            self._line(track, metrics=False)  # the previous dataloader's last line
        self._eval_idx = dataloader_idx
        total = totals[dataloader_idx] if isinstance(totals, (list, tuple)) else totals
        track.restart(f"{desc} DataLoader {dataloader_idx}", _total(total))

    # -- hooks --------------------------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()
        stream = sys.stdout
        try:
            self._terminal = bool(stream.isatty())
        except (AttributeError, ValueError):
            self._terminal = False
        self._next_line = time.monotonic() + self._print_interval

    def _bar(self, factory: Any) -> Any:
        return factory() if self._terminal else None

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        if self._terminal:  # no plain lines for the sanity check
            self._open_eval(self.sanity_check_description, self.init_sanity_tqdm())

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_eval()  # no line for the sanity check

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._train = _Track(self.train_description, None, self._bar(self.init_train_tqdm))
        self._next_line = time.monotonic() + self._print_interval

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._train is None:
            self.on_train_start(trainer, pl_module)
        track = self._train
        assert track is not None
        if track.bar is None and self._terminal:  # leave=True closed the previous epoch's bar
            track.bar = self.init_train_tqdm()
        track.restart(f"Epoch {trainer.current_epoch}", _total(self.total_train_batches))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._step(self._train, batch_idx + 1, True)  # type: ignore[arg-type]

    def _batch_ended(self, event: Any) -> None:
        """Native BatchEnded handler used instead of on_train_batch_end when a subclass does not override it: the
        bar needs no Lightning-style arguments, so it skips the adapter on the per-step path."""
        self._step(self._train, event.batch_idx + 1, True)  # type: ignore[arg-type]

    native_handlers = {"on_train_batch_end": "_batch_ended"}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        track = self._train
        if track is None or not self.is_enabled:
            return
        if self._terminal:
            self._draw(track, metrics=True)
            if self._leave and track.bar is not None:
                track.bar.close()
                track.bar = None
        else:
            self._line(track, metrics=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._train is not None and self._train.bar is not None:
            self._train.bar.close()
        self._train = None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._open_eval(self.validation_description, self._bar(self.init_validation_tqdm))

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        sanity = trainer.sanity_checking
        self._eval_batch_start(self.sanity_check_description if sanity else self.validation_description,
                               trainer.num_sanity_val_batches if sanity else trainer.num_val_batches, dataloader_idx)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._eval is not None:
            self._step(self._eval, batch_idx + 1, False)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return  # closed by on_sanity_check_end
        self._close_eval(final_line=True)
        if self._terminal and self._train is not None and trainer.state.fn == "fit" and self.is_enabled:
            self._draw(self._train, metrics=True)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._open_eval(self.test_description, self._bar(self.init_test_tqdm))

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._eval_batch_start(self.test_description, trainer.num_test_batches, dataloader_idx)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if self._eval is not None:
            self._step(self._eval, batch_idx + 1, False)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_eval(final_line=True)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._open_eval(self.predict_description, self._bar(self.init_predict_tqdm))

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._eval_batch_start(self.predict_description, trainer.num_predict_batches, dataloader_idx)

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self._eval is not None:
            self._step(self._eval, batch_idx + 1, False)

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_eval(final_line=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close_eval()
        self.on_train_end(trainer, pl_module)

    def __getstate__(self) -> dict:
        """Picklable (e.g. for spawned processes): the tqdm bars are dropped."""
        state = dict(vars(self))
        state["_train"] = state["_eval"] = None
        state["_trainer"] = None
        return state
