"""Kafka reporter over a librdkafka-style producer handed in by the caller.

Batching is librdkafka's (linger/batch settings on the producer); this class
hands records over, keyed by Call-ID so a call stays on one partition, and
services delivery reports once per batch rather than once per record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from userspace.records import Record, encode_json

# How long to wait for librdkafka's queue to drain when it is full.
QUEUE_FULL_BACKOFF_S = 0.05


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` this reporter uses."""

    def produce(self, topic: str, *, value: bytes, key: bytes,
                on_delivery: Callable[[Any, Any], None]) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


@dataclass(slots=True)
class KafkaStats:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    queue_full: int = 0


class KafkaReporter:
    def __init__(self, producer: ProducerLike, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._on_delivery = self._record_delivery
        self.stats = KafkaStats()

    def write(self, records: Sequence[Record]) -> None:
        produce = self._producer.produce
        for record in records:
            value, key = encode_json(record), record.key
            while True:
                try:
                    produce(self._topic, value=value, key=key, on_delivery=self._on_delivery)
                    break
                except BufferError:  # librdkafka's local queue is full
                    self.stats.queue_full += 1
                    self._producer.poll(QUEUE_FULL_BACKOFF_S)
        self.stats.produced += len(records)
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.flush(0)

    def _record_delivery(self, error: Any, _message: Any) -> None:
        if error is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
