"""Reporters: the only part of ``userspace`` that writes anywhere, each to a
sink handed to it, so tests can hand them a list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from userspace.records import Record


class Reporter(Protocol):
    def write(self, records: Sequence[Record]) -> None:
        """Accept a batch; must not block the capture path for long."""

    def flush(self, timeout: float) -> int:
        """Push out what is buffered; return how many records are still undelivered."""

    def close(self) -> None:
        """Release the sink; records not flushed are counted as lost."""


class RotatingSink(Protocol):
    """Where lines go: ``write``/``flush`` the current file, ``sync`` it to disk,
    ``rotate`` to a fresh one (the old one is closed and kept), ``close``."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

    def sync(self) -> None: ...

    def rotate(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Rotation:
    max_bytes: int | None = None   # rotate before a file would grow past this
    max_age_s: float | None = None  # rotate files older than this


class RotationTracker:
    """When a file reporter should start a new file: by size (before a write
    would pass ``max_bytes``, never splitting a batch) or by age (with the
    injected clock; this package reads none)."""

    def __init__(self, rotation: Rotation, clock: Callable[[], float] | None) -> None:
        if rotation.max_age_s is not None and clock is None:
            raise ValueError("age-based rotation needs a clock")
        self._rotation = rotation
        self._clock = clock
        self.file_bytes = 0
        self._opened_at = clock() if clock else 0.0

    def too_old(self) -> bool:
        max_age = self._rotation.max_age_s
        return max_age is not None and self._clock is not None and self.file_bytes > 0 \
            and self._clock() - self._opened_at >= max_age

    def too_big_for(self, size: int) -> bool:
        limit = self._rotation.max_bytes
        return limit is not None and self.file_bytes > 0 and self.file_bytes + size > limit

    def wrote(self, size: int) -> None:
        self.file_bytes += size

    def started_new_file(self) -> None:
        self.file_bytes = 0
        self._opened_at = self._clock() if self._clock else 0.0
