"""Lightning's `utilities.model_helpers.is_overridden`: does a module, datamodule or callback define its own hook?"""

from __future__ import annotations

import functools
from typing import Any
from unittest.mock import Mock

__all__ = ["is_overridden"]


def _default_parent(instance: object) -> type | None:
    """The Lightning base class of `instance`: LightningModule, LightningDataModule or Callback (found on its MRO,
    so this module needs no import of the handlers package)."""
    from engine.datamodule import LightningDataModule
    from engine.module import LightningModule

    if isinstance(instance, LightningModule):
        return LightningModule
    if isinstance(instance, LightningDataModule):
        return LightningDataModule
    return next((c for c in type(instance).__mro__ if c.__name__ == "Callback" and c.__module__ == "hooks.callback"),
                None)


def _code(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # bound method -> function
    while hasattr(fn, "__wrapped__") and not isinstance(fn, Mock):  # functools.wraps, @contextmanager
        fn = fn.__wrapped__
    return getattr(fn, "__code__", fn)


def is_overridden(method_name: str, instance: object | None = None, parent: type | None = None) -> bool:
    """Whether `instance` overrides `parent.method_name` (parent defaults to the instance's Lightning base class).

    A Mock standing in for the method counts as overridden, as in Lightning."""
    if instance is None:
        return False
    if parent is None:
        parent = _default_parent(instance)
        if parent is None:
            raise ValueError(f"is_overridden({method_name!r}, instance={type(instance).__name__}): expected a "
                             "LightningModule, LightningDataModule or Callback; pass parent=<base class> otherwise")
    instance_attr = getattr(instance, method_name, None)
    if instance_attr is None:
        return False
    if isinstance(instance_attr, Mock):
        return True
    parent_attr = getattr(parent, method_name, None)
    if parent_attr is None:
        raise ValueError(f"is_overridden({method_name!r}, parent={parent.__name__}): the parent has no method "
                         f"{method_name!r}")
    return _code(instance_attr) != _code(parent_attr)
