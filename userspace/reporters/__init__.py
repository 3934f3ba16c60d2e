"""Reporters: the only part of ``userspace`` that writes anywhere, each to a
sink handed to it, so tests can hand them a list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from userspace.records import Record


class Reporter(Protocol):
    def write(self, records: Sequence[Record]) -> None:
        """Accept a batch; must not block the capture path for long."""

    def flush(self, timeout: float) -> int:
        """Push out what is buffered; return how many records are still undelivered."""

    def close(self) -> None:
        """Release the sink; records not flushed are counted as lost."""
