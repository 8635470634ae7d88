"""Who owns what: no module outside engine/trainer.py touches a private attribute or method of the Trainer.

Found by AST, not by grep: the private names are collected from the Trainer class itself (its `_x` methods and
every `self._x = ...` it stores) and from trainer.py's module-level `_x` functions, then every attribute access and
`from engine.trainer import _x` in engine/, hooks/ and strategies/ is checked against them. Renaming a variable
cannot hide a reach-in; adding a private Trainer member that another module uses fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "engine" / "trainer.py"


def trainer_private_names() -> set[str]:
    tree = ast.parse(TRAINER.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            names.add(node.name)
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                    names.add(item.name)
                if (isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self"
                        and isinstance(item.ctx, ast.Store) and _private(item.attr)):
                    names.add(item.attr)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def reaches(private: set[str]) -> list[str]:
    found = []
    for pkg in ("engine", "hooks", "strategies"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == TRAINER:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in private:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
                if isinstance(node, ast.ImportFrom) and node.module == "engine.trainer":
                    found.extend(f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}"
                                 for a in node.names if a.name.startswith("_"))
    return found


def test_the_trainer_has_private_members_to_protect() -> None:
    names = trainer_private_names()
    assert "_rc" in names and "_evaluate" in names  # the collector sees stores and methods


def test_no_module_reaches_into_the_trainer() -> None:
    assert reaches(trainer_private_names()) == []


def test_the_collector_would_catch_a_reach_in(tmp_path: Path) -> None:
    """The check is not vacuous: a reach-in written like the old fit loop's is found."""
    tree = ast.parse("def f(loop):\n    loop.trainer._rc.progress\n    t = loop.trainer\n    t._evaluate('x')\n")
    hits = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in trainer_private_names()]
    assert sorted(hits) == ["_evaluate", "_rc"]


def test_the_facade_stays_small() -> None:
    assert len(TRAINER.read_text().splitlines()) <= 600


# DESIGN §1: engine/ imports hooks/ and strategies/ only in the facade (trainer.py + assembly.py) and in the Lightning-path re-export modules
FACADES = {"engine/trainer.py", "engine/assembly.py", "engine/__init__.py", "engine/callbacks.py", "engine/profilers.py",
           "engine/loggers/__init__.py", "engine/loggers/logger.py", "engine/loggers/tensorboard.py",
           "engine/loggers/csv_logs.py"}


def test_the_engine_core_does_not_import_handlers_or_strategies() -> None:
    found = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in FACADES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found.extend(f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("hooks", "strategies"))
    assert found == []
