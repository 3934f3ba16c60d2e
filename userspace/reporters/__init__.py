"""Reporters: the only part of ``userspace`` that writes anywhere, each to a
sink handed to it, so tests can hand them a list."""

from __future__ import annotations

from collections.abc import Sequence
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
