"""`save_hyperparameters` / `hparams`: record a module's constructor arguments so checkpoints can rebuild it.

Semantics follow Lightning 2.x (`core/mixins/hparams_mixin.py`, `utilities/parsing.py`), with one deliberate fix:
arguments are collected only from `__init__` frames of the *same object*, so a module built inside another
module's `__init__` does not inherit the outer module's arguments (Lightning issue #19596).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import warnings
from argparse import Namespace
from collections.abc import MutableMapping, Sequence
from typing import Any

from torch import nn

from engine.errors import user_stacklevel

__all__ = ["AttributeDict", "HyperparametersMixin"]

_PRIMITIVE_TYPES = (bool, int, float, str)


class AttributeDict(dict):
    """A dict whose keys can also be read and written as attributes (`hparams.lr` == `hparams["lr"]`)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        if key not in self:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        del self[key]

    def __repr__(self) -> str:
        if not self:
            return ""
        keys = sorted(self, key=str)
        width = max(len(str(k)) for k in keys) + 3  # two quotes and a colon
        labels = {k: '"' + str(k) + '":' for k in keys}
        return "\n".join(f"{labels[k]:<{width}} {self[k]}" for k in keys)


class HyperparametersMixin:
    """Adds `save_hyperparameters()`, `hparams` and `hparams_initial`; list it before `nn.Module` in the bases."""

    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial", "hparams_logged", "hparams_name"]

    def __init__(self) -> None:
        super().__init__()
        self._log_hyperparams = False

    @property
    def hparams_name(self) -> str | None:
        """How the hyperparameters were given to `save_hyperparameters` ('kwargs', an argument name, or None);
        Lightning stores it in checkpoints as `hparams_name`."""
        return getattr(self, "_hparams_name", None)

    @property
    def hparams_logged(self) -> bool:
        """Whether `save_hyperparameters(logger=True)` asked for these hyperparameters to go to the loggers."""
        return bool(getattr(self, "_log_hyperparams", False))

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Store the caller's `__init__` arguments (all, the names in `args`, or one dict/Namespace) in `self.hparams`.

        Args:
            args: nothing (take every init argument), argument names, or a single dict / Namespace / mapping.
            ignore: an argument name or names to leave out (also removes them if a base class saved them).
            frame: the frame to read the arguments from; defaults to the caller's frame.
            logger: whether the trainer should send these hyperparameters to its loggers.
        """
        self._log_hyperparams = logger
        if len(args) == 1 and not isinstance(args[0], str) and not args[0]:
            return  # an empty container: nothing to save
        if frame is None:
            caller = inspect.currentframe()
            frame = caller.f_back if caller is not None else None
        if not isinstance(frame, types.FrameType):
            raise AttributeError(
                "`save_hyperparameters` could not find the calling frame; pass it explicitly as "
                "`save_hyperparameters(frame=inspect.currentframe())`."
            )

        if dataclasses.is_dataclass(self):
            init_args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        else:
            init_args = {}
            # outer (most derived) constructors are collected last, so their values win
            for frame_args in _collect_init_args(frame, self):
                init_args.update(frame_args)

        ignored = _normalize_ignore(ignore)
        init_args = {k: v for k, v in init_args.items() if k not in ignored}

        if not args:
            hp: Any = init_args
            self._hparams_name = "kwargs" if hp else None
        else:
            non_str = [a for a in args if not isinstance(a, str)]
            if len(non_str) == 1:
                hp = non_str[0]
                names = [k for k, v in init_args.items() if _safe_equal(v, hp)]
                self._hparams_name = names[0] if names else None
            else:
                missing = [a for a in args if isinstance(a, str) and a not in init_args]
                if missing:
                    raise KeyError(
                        f"`save_hyperparameters` was asked for {missing}, which are not arguments of the calling "
                        f"`__init__` (or were ignored); available: {sorted(init_args)}."
                    )
                hp = {a: init_args[a] for a in args if isinstance(a, str)}
                self._hparams_name = "kwargs"

        self._set_hparams(hp)
        self.remove_ignored_hparams(ignored)
        for key, value in self._hparams.items():
            if isinstance(value, nn.Module):
                warnings.warn(
                    f"Attribute {key!r} is an instance of `nn.Module` and is already saved during checkpointing. "
                    f"It is recommended to ignore it with `self.save_hyperparameters(ignore=[{key!r}])`.",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
        # frozen snapshot: later edits to `self.hparams` do not show up here
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _set_hparams(self, hp: MutableMapping | Namespace | Any) -> None:
        """Merge a dict into existing dict hparams, otherwise replace them (Lightning's rule)."""
        hp = self._to_hparams_dict(hp)
        if isinstance(hp, dict) and isinstance(self.hparams, dict):
            self.hparams.update(hp)
        else:
            self._hparams = hp

    def remove_ignored_hparams(self, ignore_list: Sequence[str]) -> None:
        """Drop the named keys from the stored hyperparameters (e.g. ones a base class saved)."""
        for key in ignore_list:
            self.hparams.pop(key, None)

    @staticmethod
    def _to_hparams_dict(hp: Any) -> MutableMapping:
        if isinstance(hp, Namespace):
            hp = vars(hp)
        if isinstance(hp, dict):
            return AttributeDict(hp)
        if isinstance(hp, _PRIMITIVE_TYPES):
            raise ValueError(
                f"`save_hyperparameters` got the primitive {hp!r} ({type(hp).__name__}); pass argument names as "
                "strings, or a dict / Namespace of hyperparameters."
            )
        if not isinstance(hp, MutableMapping):
            raise ValueError(
                f"`save_hyperparameters` got an unsupported config type {type(hp).__name__}; expected a dict, "
                "an argparse.Namespace or another MutableMapping."
            )
        return hp

    @property
    def hparams(self) -> AttributeDict | MutableMapping:
        """The saved hyperparameters; mutable. See `hparams_initial` for the values at save time."""
        if "_hparams" not in self.__dict__:
            self._hparams = AttributeDict()
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        """A fresh deep copy of the hyperparameters as they were when `save_hyperparameters` ran."""
        if "_hparams_initial" not in self.__dict__:
            return AttributeDict()
        return copy.deepcopy(self.__dict__["_hparams_initial"])


def _normalize_ignore(ignore: Sequence[str] | str | None) -> list[str]:
    if ignore is None:
        return []
    if isinstance(ignore, str):
        return [ignore]
    if isinstance(ignore, (list, tuple)):
        return list(dict.fromkeys(name for name in ignore if isinstance(name, str)))
    return []


def _safe_equal(a: Any, b: Any) -> bool:
    """`a == b` that tolerates objects whose comparison raises or returns a non-bool (tensors, arrays)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _init_args_of(frame: types.FrameType) -> tuple[Any, dict[str, Any]]:
    """(self, arguments) of an `__init__` frame that defines `__class__` (uses `super()`), else (None, {}).

    Values are read from the frame's locals, so an argument reassigned before the call is saved reassigned.
    `*args` is dropped and `**kwargs` is flattened into the result, as in Lightning.
    """
    local_vars = frame.f_locals
    if "__class__" not in local_vars or frame.f_code.co_name != "__init__":
        return None, {}
    params = list(inspect.signature(local_vars["__class__"].__init__).parameters.values())
    if not params:
        return None, {}
    self_name = params[0].name
    var_pos = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    found = {p.name: local_vars[p.name] for p in params if p.name in local_vars}
    if var_kw is not None:
        found.update(found.get(var_kw) or {})
    excluded = {self_name, var_pos, var_kw, "__class__", "frame", "frame_args"}
    return local_vars.get(self_name), {k: v for k, v in found.items() if k not in excluded}


def _collect_init_args(frame: types.FrameType, obj: object) -> list[dict[str, Any]]:
    """Arguments of the chain of `__init__` frames of `obj`, innermost (base class) first.

    Frames before the first `__init__` of `obj` are skipped (the call may come from a helper); the walk stops at
    the first frame after the chain that is not an `__init__` of `obj`.
    """
    collected: list[dict[str, Any]] = []
    current: types.FrameType | None = frame
    while current is not None and current.f_back is not None:
        owner, args = _init_args_of(current)
        if owner is obj:
            collected.append(args)
        elif collected:
            break
        current = current.f_back
    return collected
