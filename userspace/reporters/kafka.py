"""Kafka reporter over a librdkafka-style producer handed in by the caller.

Batching is librdkafka's (linger/batch settings on the producer); this class
hands records over keyed by Call-ID, so a call stays on one partition, and
services delivery reports once per batch rather than once per record.

It never blocks the capture. When librdkafka's own queue is full (the
broker is slow or away), records wait in a bounded backlog here and are
handed over as room appears, on every ``write`` — the agent calls it after
every poll, also with no new records. Past the backlog's bounds the oldest
(or, by choice, the newest) records are dropped, and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from userspace.records import Record, encode_json


class OverflowPolicy(Enum):
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"


@dataclass(frozen=True, slots=True)
class BacklogLimits:
    max_records: int = 500_000
    max_bytes: int = 128 << 20
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` this reporter uses."""

    def produce(self, topic: str, *, value: bytes, key: bytes,
                on_delivery: Callable[[Any, Any], None]) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def __len__(self) -> int:
        """Messages handed over and not yet delivered or failed."""
        ...


@dataclass(slots=True)
class KafkaStats:
    produced: int = 0      # handed to librdkafka
    delivered: int = 0     # produced - failed - still in flight, as of the last write/flush
    failed: int = 0        # delivery reports with an error
    queue_full: int = 0    # times librdkafka's queue was full
    dropped: int = 0       # backlog over its bounds
    backlog: int = 0       # records waiting here now


# How long flush() waits for librdkafka between pumps of the backlog.
FLUSH_STEP_S = 0.1


class KafkaReporter:
    def __init__(self, producer: ProducerLike, topic: str, clock: Callable[[], float],
                 limits: BacklogLimits | None = None) -> None:
        """``clock``: monotonic seconds, for flush deadlines (this package reads no clock itself)."""
        self._producer = producer
        self._clock = clock
        self._topic = topic
        self._limits = limits or BacklogLimits()
        self._backlog: deque[tuple[bytes, bytes]] = deque()
        self._backlog_bytes = 0
        self._on_delivery = self._record_delivery
        self.stats = KafkaStats()

    def write(self, records: Sequence[Record]) -> None:
        for record in records:
            self._queue(record.key, encode_json(record))
        self._pump()
        self._producer.poll(0)
        self._count_delivered()

    def _count_delivered(self) -> None:
        # Delivery reports come for errors only (delivery.report.only.error: a
        # Python callback per delivered message would cost more than the produce).
        self.stats.delivered = self.stats.produced - self.stats.failed - len(self._producer)

    def _queue(self, key: bytes, value: bytes) -> None:
        limits = self._limits
        if len(self._backlog) >= limits.max_records or self._backlog_bytes + len(value) > limits.max_bytes:
            self.stats.dropped += 1
            if limits.policy is OverflowPolicy.DROP_NEWEST or not self._backlog:
                return
            _old_key, old_value = self._backlog.popleft()
            self._backlog_bytes -= len(old_value)
        self._backlog.append((key, value))
        self._backlog_bytes += len(value)

    def _pump(self) -> None:
        backlog, produce = self._backlog, self._producer.produce
        handed = 0
        while backlog:
            key, value = backlog[0]
            try:
                produce(self._topic, value=value, key=key, on_delivery=self._on_delivery)
            except BufferError:  # librdkafka's queue is full: try again on the next write
                self.stats.queue_full += 1
                break
            backlog.popleft()
            self._backlog_bytes -= len(value)
            handed += 1
        self.stats.produced += handed
        self.stats.backlog = len(backlog)

    def flush(self, timeout: float) -> int:
        """Deliver what is queued within ``timeout``; return how many records were not."""
        deadline = self._clock() + timeout
        while True:
            self._pump()
            remaining = deadline - self._clock()
            in_flight = self._producer.flush(max(0.0, min(FLUSH_STEP_S, remaining)))
            self._count_delivered()
            if (not self._backlog and in_flight == 0) or remaining <= 0:
                return len(self._backlog) + in_flight

    def close(self) -> None:
        self._producer.flush(0)

    def _record_delivery(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.stats.failed += 1
