"""Logging for the whole program: the standard logging module, one handler on
stderr, messages as the operator has always read them (no timestamps: the
journal and the terminal add their own), a level chosen with --log-level or
the config's ``log.level``. Never called per packet."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "info"
ROOT = "otus_ebpf"


def configure(level: str = DEFAULT_LEVEL, stream: TextIO | None = None) -> None:
    """Send the program's records at ``level`` and above to stderr (or ``stream``)."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def get(name: str) -> logging.Logger:
    """The logger of module ``name`` (pass ``__name__``)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
