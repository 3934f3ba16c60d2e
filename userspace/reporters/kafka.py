"""Kafka reporter over a librdkafka-style producer handed in by the caller.

Batching is librdkafka's (linger/batch settings on the producer); this class
encodes records and hands them over in batches — ``produce_batch``, one call
per batch, when records go without Kafka headers; one ``produce`` per record
when they carry headers, which librdkafka's batch call cannot take. Keys put
all records of a call (or of a flow) on one partition. Delivery reports come
for errors only and are serviced once per batch.

It never blocks the capture. When librdkafka's own queue is full (the
broker is slow or away), records wait in a bounded backlog here and are
handed over as room appears, on every ``write`` — the agent calls it after
every poll, also with no new records. Past the backlog's bounds the oldest
(or, by choice, the newest) records are dropped, and counted. At any moment
received = delivered + failed + dropped + backlog + in_flight.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import Any, NamedTuple, Protocol

from userspace.records import RECORD_KINDS, RECORD_SCHEMA_VERSION, Record, encode_json

# librdkafka's RD_KAFKA_RESP_ERR__QUEUE_FULL: a batch member refused for lack of room.
QUEUE_FULL = -184
# Records encoded and handed over per produce_batch call. Small on purpose:
# librdkafka copies the values, so each chunk's ~100 KB of JSON is freed at
# once and reused by the next chunk; at 1,000 records per chunk the allocator
# returned and re-faulted its arenas every time (measured: 1.9 page faults
# and +5 µs per record; none at 32-128).
ENCODE_CHUNK = 128
PUMP_BATCH = ENCODE_CHUNK


class OverflowPolicy(Enum):
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"


class KeyChoice(Enum):
    CALL_ID = "call-id"  # all records of a call on one partition
    FLOW = "flow"        # all records of a 5-tuple conversation on one partition
    NONE = "none"        # no key: librdkafka spreads records over partitions


@dataclass(frozen=True, slots=True)
class BacklogLimits:
    max_records: int = 500_000
    max_bytes: int = 128 << 20
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST


@dataclass(frozen=True, slots=True)
class KafkaRouting:
    """Where each record goes and what travels with it."""

    topic: str = "otus.sip"
    per_kind: bool = False  # then ``topic`` is a prefix: PREFIX.sip, PREFIX.call, PREFIX.rtp, PREFIX.rtcp
    key: KeyChoice = KeyChoice.CALL_ID
    # node, task, kind, schema on every record. Off by default: librdkafka's batch
    # call takes no headers, so with them every record is its own produce() and
    # the reporter runs at ~60% of its batched rate (docs/BENCHMARKS.md).
    headers: bool = False
    node: str = ""
    task: str = ""

    def topic_for(self, kind: str) -> str:
        return f"{self.topic}.{kind}" if self.per_kind else self.topic

    def describe(self) -> str:
        """The topics, for the start-up line."""
        if not self.per_kind:
            return f"topic {self.topic}"
        return "topics " + ", ".join(self.topic_for(kind) for kind in RECORD_KINDS)

    def headers_for(self, kind: str) -> list[tuple[str, bytes]]:
        return [("node", self.node.encode()), ("task", self.task.encode()), ("kind", kind.encode()),
                ("schema", str(RECORD_SCHEMA_VERSION).encode())]


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` this reporter uses."""

    def produce(self, topic: str, *, value: bytes, key: bytes | None,
                headers: Any,  # list[tuple[str, bytes]]; confluent-kafka's own type is wider
                on_delivery: Callable[[Any, Any], None]) -> None: ...

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], *,
                      on_delivery: Callable[[Any, Any], None]) -> int:
        """Queue the messages; refused ones get an ``_error`` entry."""
        ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def purge(self) -> None:
        """Drop every message not yet delivered; each gets a failed delivery report."""

    def close(self) -> Any: ...

    def __len__(self) -> int:
        """Messages handed over and not yet delivered or failed."""
        ...


@dataclass(slots=True)
class KafkaStats:
    received: int = 0      # records given to write()
    produced: int = 0      # handed to librdkafka
    delivered: int = 0     # produced - failed - in flight, as of the last write/flush
    failed: int = 0        # refused for good, or a delivery report with an error
    retried: int = 0       # librdkafka's resends (from its statistics)
    in_flight: int = 0     # handed over, not yet acknowledged
    queue_full: int = 0    # times librdkafka's queue was full
    dropped: int = 0       # backlog over its bounds (handed to the spill, if there is one)
    spilled: int = 0       # dropped or failed records handed to the spill
    backlog: int = 0       # records waiting here now


class _Pending(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    kind: str


# How long flush() waits for librdkafka between pumps of the backlog.
FLUSH_STEP_S = 0.1


class KafkaReporter:
    def __init__(self, producer: ProducerLike, routing: KafkaRouting, clock: Callable[[], float],
                 limits: BacklogLimits | None = None,
                 spill: Callable[[Sequence[bytes]], bool] | None = None) -> None:
        """``clock``: monotonic seconds, for flush deadlines (this package reads no clock itself).
        ``spill``: takes the JSON of every record dropped or failed here (a fallback reporter),
        and says whether it could."""
        self._spill = spill
        self._producer = producer
        self._clock = clock
        self._routing = routing
        self._limits = limits or BacklogLimits()
        self._topics = {kind: routing.topic_for(kind) for kind in RECORD_KINDS}
        self._headers = {kind: routing.headers_for(kind) for kind in RECORD_KINDS}
        self._backlog: deque[_Pending] = deque()
        self._backlog_bytes = 0
        self._on_delivery = self._record_delivery
        self.stats = KafkaStats()

    def spill_to(self, spill: Callable[[Sequence[bytes]], bool]) -> None:
        """Set the spill after the fact: the broker is checked before anything else
        (a fallback file) is created."""
        self._spill = spill

    def write(self, records: Sequence[Record]) -> None:
        self.stats.received += len(records)
        if self._backlog:
            for record in records:  # behind what waits already, in order
                self._queue(self._pending(record))
            self._pump()
        elif self._routing.headers:
            self._produce_each(records)
        else:
            self._produce_batches(records)  # the common case: straight to librdkafka
        self._producer.poll(0)
        self._count_delivered()

    def _key_of(self, record: Record) -> bytes | None:
        choice = self._routing.key
        if choice is KeyChoice.CALL_ID:
            return record.key
        return record.flow_key if choice is KeyChoice.FLOW else None

    def _pending(self, record: Record) -> _Pending:
        kind = record.kind
        return _Pending(self._topics[kind], self._key_of(record), encode_json(record), kind)

    def _produce_each(self, records: Sequence[Record]) -> None:
        """One produce per record (headers need it); from the first refusal on, the backlog."""
        produce, topics, headers, key_of = self._producer.produce, self._topics, self._headers, self._key_of
        for i, record in enumerate(records):
            kind = record.kind
            value = encode_json(record)
            try:
                produce(topics[kind], value=value, key=key_of(record), headers=headers[kind],
                        on_delivery=self._on_delivery)
            except BufferError:
                self.stats.queue_full += 1
                for waiting in records[i:]:
                    self._queue(self._pending(waiting))
                return
            except Exception:  # KafkaException (not importable here): librdkafka will never take this one
                self.stats.failed += 1
                self._spill_values([value])
            self.stats.produced += 1

    def _produce_batches(self, records: Sequence[Record]) -> None:
        """One produce_batch per topic and chunk; what a full queue refuses goes to the backlog."""
        for start in range(0, len(records), ENCODE_CHUNK):
            self._produce_chunk(records[start:start + ENCODE_CHUNK])

    def _produce_chunk(self, records: Sequence[Record]) -> None:
        key_of = self._key_of
        by_topic: dict[str, tuple[list[Record], list[dict[str, Any]]]] = {}
        topics = self._topics
        for record in records:
            topic = topics[record.kind]
            batch = by_topic.get(topic)
            if batch is None:
                batch = by_topic[topic] = ([], [])
            batch[0].append(record)
            batch[1].append({"key": key_of(record), "value": encode_json(record)})
        for topic, (batch_records, messages) in by_topic.items():
            queued = self._producer.produce_batch(topic, messages, on_delivery=self._on_delivery)
            self.stats.produced += queued
            if queued < len(messages):
                self._settle_refused(topic, batch_records, messages)

    def _settle_refused(self, topic: str, records: list[Record], messages: list[dict[str, Any]]) -> None:
        full = False
        for record, message in zip(records, messages, strict=True):
            error = message.get("_error")
            if error is None:
                continue
            if _error_code(error) == QUEUE_FULL:
                full = True
                self._queue(_Pending(topic, message["key"], message["value"], record.kind))
            else:  # librdkafka will never take this one (too large, say)
                self.stats.produced += 1
                self.stats.failed += 1
                self._spill_values([message["value"]])
        if full:
            self.stats.queue_full += 1

    def _count_delivered(self) -> None:
        # Delivery reports come for errors only (delivery.report.only.error: a
        # Python callback per delivered message would cost more than the produce).
        stats = self.stats
        stats.in_flight = len(self._producer)
        stats.delivered = stats.produced - stats.failed - stats.in_flight
        stats.backlog = len(self._backlog)

    def _queue(self, pending: _Pending) -> None:
        limits = self._limits
        if len(self._backlog) >= limits.max_records or \
                self._backlog_bytes + len(pending.value) > limits.max_bytes:
            self.stats.dropped += 1
            if limits.policy is OverflowPolicy.DROP_NEWEST or not self._backlog:
                self._spill_values([pending.value])
                return
            oldest = self._backlog.popleft()
            self._backlog_bytes -= len(oldest.value)
            self._spill_values([oldest.value])
        self._backlog.append(pending)
        self._backlog_bytes += len(pending.value)

    def _pump(self) -> None:
        if self._routing.headers:
            self._pump_one_by_one()
        else:
            self._pump_batches()

    def _pump_one_by_one(self) -> None:
        backlog, produce, headers = self._backlog, self._producer.produce, self._headers
        while backlog:
            p = backlog[0]
            try:
                produce(p.topic, value=p.value, key=p.key, headers=headers[p.kind],
                        on_delivery=self._on_delivery)
            except BufferError:  # librdkafka's queue is full: try again on the next write
                self.stats.queue_full += 1
                break
            except Exception:  # KafkaException (not importable here): librdkafka will never take this one
                self.stats.failed += 1
                self.stats.produced += 1
                self._spill_values([p.value])
            else:
                self.stats.produced += 1
            backlog.popleft()
            self._backlog_bytes -= len(p.value)

    def _pump_batches(self) -> None:
        backlog = self._backlog
        while backlog:
            topic = backlog[0].topic
            run = [p for p in islice(backlog, PUMP_BATCH)]
            same_topic = next((i for i, p in enumerate(run) if p.topic != topic), len(run))
            del run[same_topic:]
            messages = [{"value": p.value} if p.key is None else {"key": p.key, "value": p.value}
                        for p in run]
            queued = self._producer.produce_batch(topic, messages, on_delivery=self._on_delivery)
            if queued == len(run):
                for _ in run:
                    backlog.popleft()
                self._backlog_bytes -= sum(len(p.value) for p in run)
                self.stats.produced += queued
                continue
            self._take_back_refused(run, messages)
            break

    def _take_back_refused(self, run: list[_Pending], messages: list[dict[str, Any]]) -> None:
        """After a partial batch: what the full queue refused goes back to the
        front of the backlog, in order; what librdkafka refused for good fails."""
        refused = []
        for pending, message in zip(run, messages, strict=True):
            self._backlog.popleft()
            self._backlog_bytes -= len(pending.value)
            error = message.get("_error")
            if error is None:
                self.stats.produced += 1
            elif _error_code(error) == QUEUE_FULL:
                refused.append(pending)
            else:
                self.stats.produced += 1
                self.stats.failed += 1
                self._spill_values([pending.value])
        if refused:
            self.stats.queue_full += 1
        self._backlog.extendleft(reversed(refused))
        self._backlog_bytes += sum(len(p.value) for p in refused)

    def client_stats(self, statistics_json: str) -> None:
        """librdkafka's periodic statistics (its ``stats_cb``): resends per broker."""
        try:
            brokers = json.loads(statistics_json).get("brokers", {})
            self.stats.retried = sum(int(b.get("txretries", 0)) for b in brokers.values())
        except (ValueError, AttributeError, TypeError):
            return  # statistics are a diagnostic; a malformed one changes no count

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
        """Give up what is still queued (counted as failed, spilled if there is a spill)
        and release the client: its threads and sockets end here."""
        self._producer.purge()
        self._producer.poll(0)  # the purged records' delivery reports
        self._count_delivered()
        self._producer.close()

    def _record_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self.stats.failed += 1
            value = message.value() if message is not None else None
            if value:
                self._spill_values([value])

    def _spill_values(self, values: Sequence[bytes]) -> None:
        if self._spill is not None and self._spill(values):
            self.stats.spilled += len(values)


def _error_code(error: Any) -> int | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None
