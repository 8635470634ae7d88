"""Fixtures shared by the handler tests."""

from __future__ import annotations

import pytest

from hooks import logger as logger_mod


class ErrorLog:
    """Stands in for engine.log.log: records error(event, **keys) calls; `messages` renders each as one line."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def error(self, event: str, *args: object, **keys: object) -> None:
        self.calls.append((event, keys))

    @property
    def messages(self) -> list[str]:
        return [" ".join([event] + [f"{k}={v}" for k, v in keys.items()]) for event, keys in self.calls]


@pytest.fixture()
def errors(monkeypatch: pytest.MonkeyPatch) -> ErrorLog:
    rec = ErrorLog()
    monkeypatch.setattr(logger_mod, "log", rec)
    return rec
