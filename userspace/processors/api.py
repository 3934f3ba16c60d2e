"""The processor interface, the one plugins implement too (docs/PLUGINS.md).

A processor takes a batch of records and returns the records to pass on,
in order: the same objects, changed copies (``dataclasses.replace``: a
record may already be encoded, and other processors may hold it), or fewer.
It counts what it did by verdict. It must not block, and must not keep
records beyond a bound. Records: userspace.records (SipRecord with its
parsed SipMessage, CallSummary, StreamReport, RtcpRecord).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Protocol

from userspace.records import Record

# The plugin API's major version: the records, this Processor protocol and
# userspace.reporters.Reporter. Raised only by a change an existing plugin would
# notice (a field gone or changed, a method it must now have); additions keep
# it. A plugin declares the version it was built for as OTUS_API_VERSION (an
# int, or "MAJOR.MINOR") on its factory or its factory's module; one built for
# another major version is refused at load (docs/PLUGINS.md).
API_VERSION = 1


class Processor(Protocol):
    name: str  # for counters and logs: "filter", "redact", a plugin's own
    # A processor that fails must not let records through it would have changed
    # (redaction): its batch is dropped, counted, instead of passed on as it came.
    fail_closed: bool

    def process(self, records: list[Record]) -> list[Record]: ...

    def counts(self) -> Mapping[str, int]:
        """What it did so far, by verdict (kept, dropped, labelled...): cumulative."""
        ...


class Verdicts:
    """A processor's counters: cheap to bump, read as a plain mapping."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, verdict: str, n: int = 1) -> None:
        if n:
            self._counts[verdict] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
