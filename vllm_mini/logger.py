"""Logging: one logger per module, level from VLLM_MINI_LOGGING_LEVEL.

Mirrors vllm/logger.py (where the variable is VLLM_LOGGING_LEVEL). Set
`VLLM_MINI_LOGGING_LEVEL=DEBUG` to watch every scheduling decision and engine step.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(levelname)s %(asctime)s [%(name)s:%(lineno)d] %(message)s"
_configured = False


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    root = logging.getLogger("vllm_mini")
    level = os.environ.get("VLLM_MINI_LOGGING_LEVEL", "INFO").upper()
    root.setLevel(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.propagate = False
    _configured = True


def init_logger(name: str) -> logging.Logger:
    """Return the logger for a module (call as `logger = init_logger(__name__)`)."""
    _configure_root()
    return logging.getLogger(name)
