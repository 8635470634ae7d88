"""Profilers: per-state and per-handler timings on real fits (attached by hand), the report, the instrumentation
leaving nothing behind, and a PyTorch trace file TensorBoard can load."""

from __future__ import annotations

import glob
import json
import os
import re
import time
from typing import Any

import pytest

from engine.errors import MisconfigurationException
from engine.events import BatchEnded
from engine.loops.fit import FIT_STATES
from engine.log import capture_logs
from hooks.profiler import (
    AdvancedProfiler, PassThroughProfiler, PyTorchProfiler, SimpleProfiler, resolve_profiler,
)


class SlowHandler:
    """A bus handler that costs 5 ms per training batch: the profiler must name it."""

    def on_batch_ended(self, event: BatchEnded) -> None:
        time.sleep(0.005)


def fit_profiled(kit: Any, profiler: Any, handler: Any = None, n_train: int = 12, **flags: Any) -> Any:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, **flags)
    if handler is not None:
        trainer.add_handler(handler)
    profiler.attach(trainer)
    try:
        trainer.fit(kit.Model(), kit.loader(n_train, batch_size=2), kit.loader(4, batch_size=2))
    finally:
        profiler.detach(trainer)
    return trainer


def test_slow_handler_tops_the_report_and_every_fit_state_is_timed(kit: Any) -> None:
    kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False).fit(kit.Model(), kit.loader(2))  # warm-up:
    # the first fit in a process spends ~1 s in setup (torch's lazy imports), which would top the table
    prof = SimpleProfiler()
    trainer = fit_profiled(kit, prof, SlowHandler())
    stats = prof.stats()
    top = max(stats, key=lambda a: stats[a]["total"])
    assert top == "handler:SlowHandler.on_batch_ended@BatchEnded"
    assert stats[top]["count"] == 6 and stats[top]["total"] >= 0.03
    assert {a for a in stats if a.startswith("state:") and "." not in a} == {f"state:{s}" for s in FIT_STATES}
    assert stats["state:batch"]["count"] == 6 and stats["state:optimizer_step"]["count"] == 6
    assert stats["state:validation"]["count"] == 2  # sanity check + end of epoch
    assert stats["state:evaluate.eval_batch"]["count"] == 2 * 3  # 2 batches (+ the exhausting call) per run
    # the slow handler runs inside optimizer_step: its time is in its own row, not in the state's self time
    assert stats["state:optimizer_step"]["inclusive"] >= stats[top]["total"] > stats["state:optimizer_step"]["total"]
    assert sum(s["total"] for s in stats.values()) <= prof.run_seconds()

    with capture_logs() as logs:
        text = prof.describe()
    lines = text.splitlines()
    assert lines[0].startswith("FIT Profiler Report (run: ")
    assert re.fullmatch(r"Action +\| Count \| Total \(s\) \| +Mean \(s\) \| % of run", lines[1])
    assert lines[3].startswith("Total ")
    assert lines[5].startswith("handler:SlowHandler.on_batch_ended@BatchEnded ")  # slowest first
    assert re.search(r"\| +6 \| +0\.0[3-9]\d+ \| +0\.00[5-9]\d+ \| +\d+\.\d %$", lines[5])
    assert [m["report"] for m in logs if m["event"] == "profiler report"] == [text]
    # instrumentation is gone: plain callables in the tables, plain state functions in the machines
    assert trainer.bus.instrumentation is None and trainer.machine.instrumentation is None
    assert trainer.eval_machine.instrumentation is None
    assert not any(hasattr(fn, "__wrapped__") for fns in trainer.bus.table.values() for fn in fns)


def test_callbacks_and_module_hooks_are_named_per_event(kit: Any) -> None:
    class Hooked(kit.Recorder):
        pass

    class HookedModel(kit.Model):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            pass

    prof = SimpleProfiler(extended=False)
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[Hooked()])
    prof.attach(trainer)
    trainer.fit(HookedModel(), kit.loader(12, batch_size=2), kit.loader(4, batch_size=2))
    prof.detach(trainer)
    stats = prof.stats()
    assert stats["handler:HookedModel.on_train_batch_start@BatchStarted"]["count"] == 6
    assert stats["handler:Hooked.on_train_batch_end@BatchEnded"]["count"] == 6
    assert stats["handler:Hooked.on_validation_batch_end@ValidationBatchEnded"]["count"] == 4
    header = prof.summary().splitlines()[1]
    assert re.fullmatch(r"Action +\| +Mean \(s\) \| Total \(s\)", header)


def test_report_file_and_user_actions(kit: Any, tmp_path: Any) -> None:
    prof = SimpleProfiler(dirpath=tmp_path, filename="perf")
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    prof.attach(trainer)
    with prof.profile("load data"):
        time.sleep(0.002)
    trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    prof.detach(trainer)
    text = prof.describe()
    assert prof.stats()["load data"]["count"] == 1
    with open(tmp_path / "fit-perf.txt") as f:
        assert f.read() == text
    with pytest.raises(ValueError, match=r"stop\('never'\): this action was never started"):
        prof.stop("never")
    prof.start("twice")
    with pytest.raises(ValueError, match=r"start\('twice'\): this action has already started"):
        prof.start("twice")


def test_timings_survive_an_exception_and_one_profiler_per_trainer(kit: Any) -> None:
    class Boom(kit.Model):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    prof = SimpleProfiler()
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    prof.attach(trainer)
    with pytest.raises(MisconfigurationException, match="already instrumented by another profiler"):
        SimpleProfiler().attach(trainer)
    with pytest.raises(MisconfigurationException, match="already attached to a trainer"):
        prof.attach(trainer)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), kit.loader(8, batch_size=2))
    prof.detach(trainer)
    assert prof.stats()["state:batch"]["count"] == 3
    assert prof._timings.stack == []


def test_profiler_flag_reports_after_the_run(kit: Any) -> None:
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, profiler="simple")
    with capture_logs() as logs:
        trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    reports = [m for m in logs if m["event"] == "profiler report"]
    assert len(reports) == 1 and "state:optimizer_step" in reports[0]["report"]
    assert trainer.bus.instrumentation is None


def test_resolve_profiler() -> None:
    assert resolve_profiler(None) is None
    assert isinstance(resolve_profiler("Simple"), SimpleProfiler)
    assert isinstance(resolve_profiler("pytorch"), PyTorchProfiler)
    passthrough = PassThroughProfiler()
    assert resolve_profiler(passthrough) is passthrough
    with passthrough.profile("anything") as name:
        assert name == "anything"
    assert isinstance(resolve_profiler("advanced"), AdvancedProfiler)
    with pytest.raises(MisconfigurationException, match=r"profiler='xla'.*\['simple', 'advanced', 'pytorch'\]"):
        resolve_profiler("xla")


def test_pytorch_profiler_writes_a_tensorboard_trace(kit: Any, tmp_path: Any) -> None:
    prof = PyTorchProfiler(dirpath=tmp_path)
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, limit_val_batches=0)
    prof.attach(trainer)
    with pytest.warns(UserWarning, match="fewer than 5 batches"):
        trainer.fit(kit.Model(), kit.loader(6, batch_size=2))  # 3 batches
    prof.detach(trainer)
    traces = glob.glob(os.path.join(tmp_path, "fit-training_step.*.pt.trace.json"))
    assert len(traces) == 1
    with open(traces[0]) as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert {"[statetrain]state:batch", "[statetrain]state:optimizer_step"} <= names
    assert any(n and n.startswith("[statetrain][module]torch.nn.modules.linear.Linear: layer") for n in names)
    assert "Profile stats for: records" in prof.describe()
    assert trainer.bus.instrumentation is None and "PyTorchProfiler.step" not in str(trainer.bus.describe())


def test_pytorch_profiler_default_dir_and_bad_arguments(kit: Any, tmp_path: Any) -> None:
    prof = PyTorchProfiler(record_module_names=False)
    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    prof.attach(trainer)
    with pytest.warns(UserWarning, match="fewer than 5 batches"):
        trainer.fit(kit.Model(), kit.loader(4, batch_size=2))
    prof.detach(trainer)
    assert glob.glob(os.path.join(tmp_path, "profiler", "*.pt.trace.json"))
    with pytest.raises(TypeError, match=r"'use_gpu', which torch.profiler.profile does not accept"):
        PyTorchProfiler(use_gpu=True)
    with pytest.raises(MisconfigurationException, match=r"sort_by_key='wall'"):
        PyTorchProfiler(sort_by_key="wall")
    with pytest.raises(MisconfigurationException, match="schedule=3"):
        PyTorchProfiler(schedule=3)


# -- AdvancedProfiler ---------------------------------------------------------------------------------------------
def _slow_function() -> None:
    time.sleep(0.002)


class SlowCallingHandler:
    """Calls a named function each batch, so the handler's own cProfile stats must list it."""

    def on_batch_ended(self, event: BatchEnded) -> None:
        _slow_function()


def test_advanced_profiler_flag_profiles_states_and_handlers_with_cprofile(kit: Any, tmp_path: Any) -> None:
    import engine as pl

    trainer = kit.trainer(max_epochs=1, logger=False, enable_progress_bar=False, profiler="advanced",
                          limit_val_batches=0)
    assert isinstance(trainer.profiler, AdvancedProfiler)
    trainer.add_handler(SlowCallingHandler())
    with capture_logs() as logs:
        trainer.fit(kit.Model(), kit.loader(8, batch_size=2))
    prof = trainer.profiler
    label = next(a for a in prof.profiled_actions if a.startswith("handler:SlowCallingHandler.on_batch_ended"))
    calls = {func[2]: stat[0] for func, stat in prof.stats(label).stats.items()}  # function name -> call count
    assert calls["_slow_function"] == 4
    # the batch state's own profile does not hold the handler's calls: nested actions pause the outer one
    batch_calls = {func[2] for func in prof.stats("state:batch").stats}
    assert "_slow_function" not in batch_calls
    report = "\n".join(str(e.get("report", "")) for e in logs)
    assert "FIT Profiler Report" in report and f"Profile stats for: {label}" in report
    assert "cumulative" in report  # pstats' sorted table
    assert isinstance(pl.profilers.AdvancedProfiler(), AdvancedProfiler)


def test_advanced_profiler_user_actions_dump_stats_and_errors(tmp_path: Any) -> None:
    import pickle
    import pstats

    prof = AdvancedProfiler(dirpath=tmp_path, filename="prof", dump_stats=True, line_count_restriction=5)
    with prof.profile("load data"):
        with prof.profile("inner"):
            _slow_function()
        sum(range(1000))
    report = prof.summary()
    assert "Profile stats for: load data" in report and "Profile stats for: inner" in report
    inner = {func[2] for func in prof.stats("inner").stats}
    outer = {func[2] for func in prof.stats("load data").stats}
    assert "_slow_function" in inner and "_slow_function" not in outer
    dumped = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.prof")))
    assert dumped == ["prof-inner.prof", "prof-load data.prof"]
    assert pstats.Stats(str(tmp_path / "prof-inner.prof")).total_calls > 0  # a real pstats file
    with pytest.raises(ValueError, match=r"AdvancedProfiler.stop\('never'\)"):
        prof.stop("never")
    with pytest.raises(ValueError, match="line_count_restriction"):
        AdvancedProfiler(line_count_restriction=0)
    clone = pickle.loads(pickle.dumps(prof))
    assert isinstance(clone, AdvancedProfiler) and clone.line_count_restriction == 5 and clone.profiled_actions == {}
