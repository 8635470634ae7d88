"""`python -m engine`: the machine graph and the demo run as a user would type them."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=120)


def test_graph_mermaid_lists_every_fit_edge() -> None:
    from engine.loops import build_fit_machine

    out = _run("graph").stdout
    assert out.startswith("stateDiagram-v2")
    for src, targets in build_fit_machine().transitions.items():
        for dst in targets:
            assert f"{src} --> {'[*]' if dst == 'done' else dst}" in out


def test_graph_text_and_dot() -> None:
    assert "optimizer_step -> batch | epoch_end | teardown | validation" in _run("graph", "--format", "text").stdout
    assert '"eval_batch" -> "eval_end";' in _run("graph", "--machine", "evaluate", "--format", "dot").stdout


def test_demo_trains() -> None:
    proc = _run("demo", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "epochs=2 steps=32" in proc.stdout
