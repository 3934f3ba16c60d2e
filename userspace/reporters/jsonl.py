"""JSON lines: one record per line, written in batches to a binary sink."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from userspace.records import Record, encode_json


class BinarySink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


@dataclass(slots=True)
class JsonLinesStats:
    written: int = 0
    bytes: int = 0


class JsonLinesReporter:
    def __init__(self, sink: BinarySink) -> None:
        self._sink = sink
        self.stats = JsonLinesStats()

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        data = b"\n".join([encode_json(r) for r in records]) + b"\n"
        self._sink.write(data)
        self._sink.flush()  # once per batch: lines reach the file while traffic is low
        self.stats.written += len(records)
        self.stats.bytes += len(data)

    def flush(self, timeout: float) -> int:
        self._sink.flush()
        return 0

    def close(self) -> None:
        self._sink.flush()
