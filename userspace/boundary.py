"""Failure boundaries: where a bug in handling one event stops.

Bad input is not a bug: parsers raise ``DecodeError`` and their callers
count it by layer. Any other exception out of the data path is a bug, and a
bug in one message must not switch off monitoring. So every place that
turns an event into records, kernel updates or output wraps it in a
boundary: the exception is counted by stage and exception type, handed to
``on_first`` once per kind (with its traceback and an example of the input,
for the log), and processing goes on with the next event.

``strict`` re-raises instead: the test suite and the fuzzers run strict, so
a bug fails them rather than being counted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType

# Distinct (stage, type) pairs kept: a bug that raises a new exception type
# per input must not grow the table (or a metric's label set) for ever.
MAX_KINDS = 256
OVERFLOW_KIND = ("other", "other")
_USERSPACE = Path(__file__).resolve().parent

OnFirst = Callable[[str, str, BaseException, bytes | None], None]


# Modules that only hand events on: a bug is named after where it happened below them.
_DISPATCHERS = frozenset({"pipeline"})


def innermost_module(tb: TracebackType | None, default: str) -> str:
    """The userspace module the exception came out of (``sdp``, ``calls``, ...),
    found from its traceback: naming the stage costs nothing until it fails."""
    found = default
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if _USERSPACE in (path.parent, path.parent.parent) and path.stem not in _DISPATCHERS:
            found = path.stem
        tb = tb.tb_next
    return found


class Boundary:
    def __init__(self, on_first: OnFirst | None = None, strict: bool = True) -> None:
        self._on_first = on_first
        self.strict = strict
        self.counts: dict[tuple[str, str], int] = {}

    def failed(self, stage: str, exc: BaseException, example: bytes | None = None,
               refine: bool = False) -> None:
        """Count ``exc`` under ``stage`` (refined to the userspace module it came
        from when ``refine``); re-raise when strict. Call from an ``except`` block."""
        if self.strict:
            raise exc
        if refine:
            stage = innermost_module(exc.__traceback__, stage)
        key = (stage, type(exc).__name__)
        if key not in self.counts and len(self.counts) >= MAX_KINDS:
            key = OVERFLOW_KIND
        first = key not in self.counts
        self.counts[key] = self.counts.get(key, 0) + 1
        if first and self._on_first is not None:
            self._on_first(key[0], key[1], exc, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
