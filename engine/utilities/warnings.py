"""Lightning's `lightning.pytorch.utilities.warnings` path: `PossibleUserWarning` and the filter that silences it."""

from __future__ import annotations

import warnings

from engine.errors import PossibleUserWarning, user_stacklevel

__all__ = ["PossibleUserWarning", "disable_possible_user_warnings", "user_stacklevel"]


def disable_possible_user_warnings(module: str = "") -> None:
    """Ignore `PossibleUserWarning`s; with `module` (a regex), only those attributed to matching modules (statetrain
    attributes its warnings to the user's line, so that is the user's module)."""
    warnings.filterwarnings("ignore", module=module, category=PossibleUserWarning)
