"""Logging for the whole program: the standard logging module, one handler on
stderr, messages as the operator has always read them (no timestamps: the
journal and the terminal add their own), a level chosen with --log-level or
the config's ``log.level``. Never called per packet.

Each module logs through ``_log = logs.get(__name__)``. Whatever imports the
program first gets the default level without asking: ``get`` configures it
if nobody has yet, so an entry point that never calls ``configure`` (a test,
a bench script) still prints the info lines. ``configure`` again replaces
that handler; a worker process calls it with its parent's level and its
``[wN]`` prefix (otus_ebpf.capture.worker)."""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "info"
ROOT = "otus_ebpf"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes, not to the one
    there was when logging was configured: the live view redirects it to print
    lines above the dashboard (otus_ebpf.cli.tui), and tests capture it."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def configure(level: str = DEFAULT_LEVEL, stream: TextIO | None = None, prefix: str = "") -> None:
    """Send the program's records at ``level`` and above to stderr (or ``stream``),
    each line after ``prefix``."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _Stderr() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    # Ours alone: a library that configures the root logger must not print each line twice.
    logger.propagate = False


def level() -> str:
    """The level the program logs at now (what a worker process is told)."""
    return logging.getLevelName(logging.getLogger(ROOT).getEffectiveLevel()).lower()


def get(name: str) -> logging.Logger:
    """The logger of module ``name`` (pass ``__name__``)."""
    if not logging.getLogger(ROOT).handlers:
        configure()
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class HeldLines:
    """What the program says while another process (the live view) holds the
    terminal: the last ``keep`` lines, numbered, to be read by that view and
    printed when the terminal is given back. Set as ``sys.stderr`` (see _Stderr)."""

    def __init__(self, keep: int = 500) -> None:
        self._lines: deque[tuple[int, str]] = deque(maxlen=keep)
        self._partial = ""
        self._count = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *whole, self._partial = (self._partial + text).split("\n")
            for line in whole:
                self._count += 1
                self._lines.append((self._count, line))
        return len(text)

    def flush(self) -> None:
        return None

    def after(self, number: int) -> tuple[int, list[str]]:
        """The number of the last line, and the lines after ``number`` still held."""
        with self._lock:
            return self._count, [line for n, line in self._lines if n > number]

    def lines(self) -> list[str]:
        return self.after(0)[1]
