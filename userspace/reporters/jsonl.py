"""JSON lines: one record per line, written in batches, rotated by size or age.

The reporter decides when a file is full or old enough; the file work is
the sink's (``RotatingSink``): the application hands in one that renames
and reopens files (or wraps stdout, where rotating does nothing), tests
hand in a list. Durability is a policy: never
fsync, fsync after every batch, or fsync when a file is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from userspace.records import Record, encode_json
from userspace.reporters import RotatingSink, Rotation, RotationTracker


class FsyncPolicy(Enum):
    NEVER = "never"      # the page cache decides
    BATCH = "batch"      # after every written batch
    ROTATE = "rotate"    # when a file is rotated or closed


@dataclass(slots=True)
class JsonLinesStats:
    written: int = 0
    bytes: int = 0
    rotations: int = 0
    sync_errors: int = 0  # fsyncs that failed: the lines are in the file, their durability unsure


class JsonLinesReporter:
    def __init__(self, sink: RotatingSink, rotation: Rotation | None = None,
                 clock: Callable[[], float] | None = None, fsync: FsyncPolicy = FsyncPolicy.NEVER) -> None:
        """``clock``: monotonic seconds, needed only for age-based rotation
        (this package reads no clock itself)."""
        self._sink = sink
        self._files = RotationTracker(rotation or Rotation(), clock)
        self._fsync = fsync
        self.stats = JsonLinesStats()

    def write(self, records: Sequence[Record]) -> None:
        self.write_encoded([encode_json(r) for r in records])

    def write_encoded(self, lines: Sequence[bytes]) -> None:
        """Records already in their JSON form (what a Kafka reporter could not deliver)."""
        self.write_block(b"\n".join(lines) + b"\n" if lines else b"", len(lines))

    def write_block(self, data: bytes, lines: int) -> None:
        """``lines`` records already joined, each ending in a newline (a worker's, say)."""
        if self._files.too_old():
            self._rotate()
        if not lines:
            return
        if self._files.too_big_for(len(data)):
            self._rotate()
        self._sink.write(data)
        self._sink.flush()  # once per batch: lines reach the file while traffic is low
        self._files.wrote(len(data))
        if self._fsync is FsyncPolicy.BATCH:
            self._sync()  # after the write: the lines are in the file whatever fsync says
        self.stats.written += lines
        self.stats.bytes += len(data)

    def _sync(self) -> None:
        """fsync, counted when it fails: raising would hand lines already in the file
        to the fallback too, and one record must be in one place."""
        try:
            self._sink.sync()
        except OSError:
            self.stats.sync_errors += 1

    def _rotate(self) -> None:
        if self._fsync is not FsyncPolicy.NEVER:
            self._sync()
        self._sink.rotate()
        self._files.started_new_file()
        self.stats.rotations += 1

    def flush(self, timeout: float) -> int:
        self._sink.flush()
        return 0

    def close(self) -> None:
        if self._fsync is not FsyncPolicy.NEVER:
            self._sync()
        self._sink.close()
