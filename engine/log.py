"""The framework's own messages (rank zero): a stdlib logger named `statetrain`, INFO to stderr by default.

Set STATETRAIN_LOG_LEVEL (e.g. WARNING) to quiet it. Metrics never go through here; they go to loggers.
"""

from __future__ import annotations

import logging
import os

__all__ = ["log"]

log = logging.getLogger("statetrain")
if not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(os.environ.get("STATETRAIN_LOG_LEVEL", "INFO").upper())
    log.propagate = False
