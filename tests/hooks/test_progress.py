"""TQDMProgressBar: bars on a terminal (pseudo-terminal), plain rate-limited lines in a pipe, and a cheap step path."""

from __future__ import annotations

import io
import os
import pickle
import re
import select
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine as pl
from hooks import progress
from hooks.logger import Logger
from hooks.progress import TQDMProgressBar

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A script run in a subprocess so that its stdout is a real terminal (pty) or a real pipe.
SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import engine as pl
    from hooks.logger import Logger
    from hooks.progress import TQDMProgressBar

    sleep, interval, epochs = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])

    class Versioned(Logger):
        name = "run"
        version = 5
        def log_metrics(self, metrics, step=None): pass
        def log_hyperparams(self, params, *args, **kwargs): pass

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)
        def training_step(self, batch, batch_idx):
            time.sleep(sleep)
            loss = nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("train_loss", loss, prog_bar=True)
            return loss
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]), prog_bar=True)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    def loader(n):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=2)

    class Clock(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = time.monotonic()
        def on_train_end(self, trainer, pl_module):
            print(json.dumps({"train_seconds": time.monotonic() - self.start}), file=sys.stderr)

    trainer = pl.Trainer(max_epochs=epochs, callbacks=[TQDMProgressBar(print_interval=interval), Clock()],
                         enable_model_summary=False, logger=Versioned(), num_sanity_val_steps=1)
    trainer.fit(Model(), loader(16), loader(8))
""")


def _start(directory, args, stdout, stderr) -> subprocess.Popen:
    path = directory / "train_with_bar.py"
    path.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, STATETRAIN_LOG_FORMAT="console")
    env.pop("TQDM_MINITERS", None)
    return subprocess.Popen([sys.executable, str(path), *map(str, args)], stdout=stdout, stderr=stderr, env=env,
                            cwd=directory)


def _read_terminal(master: int, proc: subprocess.Popen) -> str:
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


PIPE_INTERVAL = 0.1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-epoch fit, once with stdout/stderr on a pseudo-terminal, once on pipes; started together."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    tty_proc = _start(tmp_path_factory.mktemp("tty"), (0.0, 30.0, 2), stdout=slave, stderr=slave)
    os.close(slave)
    pipe_proc = _start(tmp_path_factory.mktemp("pipe"), (0.03, PIPE_INTERVAL, 2), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    tty_out = _read_terminal(master, tty_proc)
    tty_rc = tty_proc.wait(timeout=60)
    out, err = pipe_proc.communicate(timeout=120)
    return {"tty": (tty_rc, tty_out), "pipe": (pipe_proc.returncode, out.decode(), err.decode())}


def test_terminal_shows_the_tqdm_bar(runs) -> None:
    rc, out = runs["tty"]
    assert rc == 0, out
    assert "\r" in out  # redrawn in place
    assert "Epoch 0" in out and "Epoch 1" in out
    final = re.findall(r"Epoch 1: 100%\|[^\r\n]*", out)
    assert final, out
    assert "8/8" in final[-1] and "it/s" in final[-1]
    assert "v_num=5" in final[-1] and "train_loss=" in final[-1] and "val_loss=" in final[-1]
    assert "Validation DataLoader 0" in out and "Sanity Checking DataLoader 0" in out


def test_pipe_gets_plain_rate_limited_lines(runs) -> None:
    rc, text, err = runs["pipe"]
    assert rc == 0, err
    assert "\r" not in text and "\x1b" not in text  # no redraw, no cursor movement
    lines = text.splitlines()
    line_re = re.compile(r"^(Epoch [01]: \d/8|Validation DataLoader 0: \d/4) "
                         r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+it/s(, .+)?\]$")
    assert all(line_re.match(line) for line in lines), text
    assert not any(line.startswith("Sanity") for line in lines)
    ends = [line for line in lines if line.startswith("Epoch") and " 8/8 " in line]
    assert [e.split(":")[0] for e in ends] == ["Epoch 0", "Epoch 1"]  # one line at each epoch end...
    assert all("v_num=5" in e and "train_loss=" in e and "val_loss=" in e for e in ends)  # ...with the metrics
    assert sum(" 4/4 " in line for line in lines) == 2  # one line per validation run
    intermediate = [line for line in lines if " 8/8 " not in line and " 4/4 " not in line]
    train_seconds = float(re.search(r'"train_seconds": ([\d.]+)', err).group(1))
    assert train_seconds > 16 * 0.03
    assert 1 <= len(intermediate) <= train_seconds / PIPE_INTERVAL + 1, text  # at most one per print_interval


# -- in-process: the step path, Lightning's surface -----------------------------------------------------------------
class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]), prog_bar=True)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=2)


class FakeTerminal(io.StringIO):
    """Stands in for a terminal on sys.stdout: tqdm draws bars into it."""

    def isatty(self) -> bool:
        return True


def trainer(bar: TQDMProgressBar, **flags) -> pl.Trainer:
    flags.setdefault("max_epochs", 2)
    flags.setdefault("logger", False)
    return pl.Trainer(callbacks=[bar], enable_model_summary=False, num_sanity_val_steps=0, **flags)


@pytest.fixture()
def metric_reads(monkeypatch):
    """Count reads of trainer.progress_bar_metrics (the property converts tensors: the host sync)."""
    reads = []
    original = pl.Trainer.progress_bar_metrics

    def counting(self):
        reads.append(self.global_step)
        return original.fget(self)

    monkeypatch.setattr(pl.Trainer, "progress_bar_metrics", property(counting))
    return reads


@pytest.mark.parametrize("terminal", [True, False])
def test_metrics_are_read_only_when_drawing_not_every_step(monkeypatch, metric_reads, terminal) -> None:
    out = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(progress, "MIN_REDRAW", 1000.0)  # no timed redraw, however slow the machine
    t = trainer(TQDMProgressBar())
    t.fit(Model(), loader(128))  # 64 steps per epoch, 128 in all
    assert t.global_step == 128
    # terminal: the first batch (nothing drawn yet), the last batch, and the epoch end; lines: the epoch end only
    assert len(metric_reads) <= (3 if terminal else 1) * 2, metric_reads
    assert ("Epoch 1: 100%" if terminal else "Epoch 1: 64/64") in out.getvalue()


def test_refresh_rate_zero_disables(monkeypatch) -> None:
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)
    bar = TQDMProgressBar(refresh_rate=0)
    assert bar.refresh_rate == 0 and not bar.is_enabled and bar.is_disabled
    trainer(bar).fit(Model(), loader(8))
    assert "Epoch" not in out.getvalue()


def test_disable_and_enable(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    bar = TQDMProgressBar()
    assert bar.refresh_rate == 1 and bar.is_enabled
    bar.disable()
    assert not bar.is_enabled
    trainer(bar, max_epochs=1).fit(Model(), loader(8))
    assert out.getvalue() == ""
    bar.enable()
    trainer(bar, max_epochs=1).fit(Model(), loader(8))
    assert "Epoch 0: 4/4" in out.getvalue()


def test_nonzero_rank_draws_nothing(monkeypatch) -> None:
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    bar = TQDMProgressBar()
    trainer(bar).fit(Model(), loader(8))
    assert not bar.is_enabled and "Epoch" not in out.getvalue()


def test_tqdm_miniters_env_raises_the_refresh_rate(monkeypatch) -> None:
    monkeypatch.setenv("TQDM_MINITERS", "20")
    assert TQDMProgressBar().refresh_rate == 20
    assert TQDMProgressBar(refresh_rate=50).refresh_rate == 50


def test_leave_keeps_one_bar_per_epoch(monkeypatch) -> None:
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)
    trainer(TQDMProgressBar(leave=True), max_epochs=3).fit(Model(), loader(8))
    finals = [line for line in out.getvalue().split("\n") if "100%" in line]
    assert [re.findall(r"Epoch \d", f)[-1] for f in finals] == ["Epoch 0", "Epoch 1", "Epoch 2"]


def test_v_num_comes_from_the_logger_and_get_metrics_can_drop_it(monkeypatch) -> None:
    class Versioned(Logger):
        name = "run"
        version = "version_2024_abcd"

        def log_metrics(self, metrics, step=None): ...
        def log_hyperparams(self, params, *args, **kwargs): ...

    class NoVersion(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    trainer(TQDMProgressBar(), max_epochs=1, logger=Versioned()).fit(Model(), loader(8))
    assert "v_num=abcd, train_loss=" in out.getvalue()  # long string versions: the last 4 characters
    out.truncate(0)
    trainer(NoVersion(), max_epochs=1, logger=Versioned()).fit(Model(), loader(8))
    assert "v_num" not in out.getvalue() and "train_loss=" in out.getvalue()


def test_validation_bars_per_dataloader_and_validate(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    t = trainer(TQDMProgressBar(), max_epochs=1)
    t.fit(Model(), loader(8), [loader(4), loader(6)])
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "Validation DataLoader 0: 2/2", "Validation DataLoader 1: 3/3", "Epoch 0: 4/4"]
    out.truncate(0)
    out.seek(0)
    t.validate(Model(), loader(6), verbose=False)
    assert out.getvalue().startswith("Validation DataLoader 0: 3/3 [")


def test_test_and_predict_bars(monkeypatch) -> None:
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)
    t = trainer(TQDMProgressBar())
    t.test(Model(), loader(6), verbose=False)
    t.predict(Model(), loader(10))
    text = out.getvalue()
    assert re.search(r"Testing DataLoader 0: 100%\|[^\r]*\| 3/3", text)
    assert re.search(r"Predicting DataLoader 0: 100%\|[^\r]*\| 5/5", text)


def test_infinite_steps_total_follows_max_steps(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    trainer(TQDMProgressBar(), max_epochs=-1, max_steps=6).fit(Model(), loader(8))
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == ["Epoch 0: 4/4", "Epoch 1: 2/2"]


def test_print_goes_through_tqdm_write_on_a_terminal(monkeypatch) -> None:
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)

    class Printer(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            bar.print("epoch", trainer.current_epoch, "done")

    bar = TQDMProgressBar()
    pl.Trainer(callbacks=[bar, Printer()], max_epochs=1, enable_model_summary=False, logger=False).fit(
        Model(), loader(4))
    assert "epoch 0 done\n" in out.getvalue()


def test_picklable_after_fit(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    bar = TQDMProgressBar(refresh_rate=3, leave=True)
    trainer(bar, max_epochs=1).fit(Model(), loader(4))
    copy = pickle.loads(pickle.dumps(bar))
    assert copy.refresh_rate == 3 and copy.train_progress_bar is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"refresh_rate": -1}, r"TQDMProgressBar\(refresh_rate=-1\): expected an int >= 0"),
    ({"refresh_rate": 1.5}, r"TQDMProgressBar\(refresh_rate=1.5\): expected an int >= 0"),
    ({"process_position": -2}, r"TQDMProgressBar\(process_position=-2\): expected an int >= 0"),
    ({"print_interval": "often"}, r"TQDMProgressBar\(print_interval='often'\): expected seconds >= 0"),
])
def test_bad_arguments_name_the_value(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        TQDMProgressBar(**kwargs)


def test_trainer_reference_before_setup() -> None:
    with pytest.raises(TypeError, match=r"TQDMProgressBar.trainer` reference is set in `setup`"):
        TQDMProgressBar().trainer
