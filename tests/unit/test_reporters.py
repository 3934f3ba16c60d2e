from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.frames import ethernet, ipv4, raw, ring_record, udp
from tests.support.sinks import ListSink
from tests.support.sip_samples import INVITE, OK_200
from userspace.pipeline import Pipeline
from userspace.records import RECORD_SCHEMA_VERSION, CallSummary, SipRecord, encode_json
from userspace.reporters import Rotation
from userspace.reporters.jsonl import FsyncPolicy, JsonLinesReporter
from userspace.reporters.kafka import (
    QUEUE_FULL,
    BacklogLimits,
    KafkaReporter,
    KafkaRouting,
    KeyChoice,
    OverflowPolicy,
)


def records() -> list[SipRecord]:
    frames = [ethernet(ipv4(udp(m))) for m in (INVITE, OK_200)]
    out = Pipeline({}, 0).process([ring_record(f) for f in frames])
    return [r for r in out if isinstance(r, SipRecord)]


def lines(sink: ListSink) -> list[list[dict[str, object]]]:
    return [[json.loads(line) for line in f.splitlines()] for f in sink.files]


def test_jsonl_writes_one_line_per_record_and_flushes_each_batch() -> None:
    sink = ListSink()
    reporter = JsonLinesReporter(sink)
    reporter.write(records())
    reporter.write([])
    (only_file,) = lines(sink)
    assert [r["method"] for r in only_file] == ["INVITE", None]
    assert only_file[1]["status"] == 200 and only_file[0]["schema"] == RECORD_SCHEMA_VERSION
    assert reporter.stats.written == 2 and sink.calls == ["flush"]


def test_jsonl_rotates_by_size_without_splitting_a_batch() -> None:
    sink = ListSink()
    batch = records()
    size = len(b"\n".join(encode_json(r) for r in batch)) + 1
    reporter = JsonLinesReporter(sink, Rotation(max_bytes=2 * size))
    for _ in range(5):
        reporter.write(batch)
    assert [len(f) for f in sink.files] == [2 * size, 2 * size, size]
    assert reporter.stats.rotations == 2
    assert sum(len(f) for f in lines(sink)) == 10, "nothing lost across rotations"


def test_jsonl_rotates_by_age_with_the_clock_it_was_given() -> None:
    now = [0.0]
    sink = ListSink()
    reporter = JsonLinesReporter(sink, Rotation(max_age_s=60), clock=lambda: now[0])
    reporter.write(records())
    now[0] = 59.0
    reporter.write([])
    now[0] = 61.0
    reporter.write([])          # old enough: rotates even with nothing new
    reporter.write(records())
    assert [len(f) for f in lines(sink)] == [2, 2]


@pytest.mark.parametrize(("policy", "expected"), [
    (FsyncPolicy.NEVER, ["flush", "flush", "rotate", "flush", "close"]),
    (FsyncPolicy.BATCH, ["flush", "sync", "flush", "sync", "sync", "rotate", "flush", "sync",
                         "sync", "close"]),
    (FsyncPolicy.ROTATE, ["flush", "flush", "sync", "rotate", "flush", "sync", "close"]),
])
def test_fsync_policies(policy: FsyncPolicy, expected: list[str]) -> None:
    sink = ListSink()
    batch = records()
    size = len(b"\n".join(encode_json(r) for r in batch)) + 1
    reporter = JsonLinesReporter(sink, Rotation(max_bytes=2 * size), fsync=policy)
    for _ in range(3):
        reporter.write(batch)
    reporter.close()
    assert sink.calls == expected


def test_age_rotation_needs_a_clock() -> None:
    with pytest.raises(ValueError, match="clock"):
        JsonLinesReporter(ListSink(), Rotation(max_age_s=1))


class QueueFull:
    """What librdkafka puts in a refused batch member's ``_error``."""

    def code(self) -> int:
        return QUEUE_FULL


class ListProducer:
    """Stands in for confluent_kafka.Producer in unit tests; the real broker
    is exercised by tests/integration. ``full`` makes produce() refuse that
    many times (librdkafka's queue full), -1 for ever; ``room`` lets only that
    many more messages in."""

    def __init__(self, full: int = 0, room: int | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []
        self.pending: list[Callable[[Any, Any], None]] = []
        self.full = full
        self.room = room
        self.polls = 0
        self.batch_calls = 0
        self.closed = False

    def _refuse(self) -> bool:
        if self.full:
            self.full -= 1 if self.full > 0 else 0
            return True
        if self.room is not None:
            if self.room == 0:
                return True
            self.room -= 1
        return False

    def produce(self, topic: str, *, value: bytes, key: bytes | None,
                headers: list[tuple[str, bytes]] | None,
                on_delivery: Callable[[Any, Any], None]) -> None:
        if self._refuse():
            raise BufferError("queue full")
        self.sent.append((topic, key, value, headers))
        self.pending.append(on_delivery)

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], *,
                      on_delivery: Callable[[Any, Any], None]) -> int:
        self.batch_calls += 1
        queued = 0
        refusing = bool(self.full) and self._refuse()  # a full queue refuses the whole batch
        for message in messages:
            if refusing or self._refuse():
                message["_error"] = QueueFull()
                continue
            self.sent.append((topic, message.get("key"), message["value"], None))
            self.pending.append(on_delivery)
            queued += 1
        return queued

    def poll(self, timeout: float) -> int:
        self.polls += 1
        served, self.pending = self.pending, []
        for callback in served:
            callback(None, None)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return 0

    def purge(self) -> None:
        purged, self.pending = self.pending, []
        for callback in purged:
            callback(QueueFull(), None)

    def close(self) -> None:
        self.closed = True

    def __len__(self) -> int:
        return len(self.pending)


SIP = KafkaRouting("sip", headers=True, node="node1", task="t1")
SIP_NO_HEADERS = KafkaRouting("sip", headers=False)


@pytest.mark.parametrize("routing", [SIP, SIP_NO_HEADERS])
def test_kafka_keys_by_call_id_and_polls_once_per_batch(routing: KafkaRouting) -> None:
    producer = ListProducer()
    reporter = KafkaReporter(producer, routing, time.monotonic)
    batch = records()
    reporter.write(batch)
    assert [key for _topic, key, _value, _h in producer.sent] == [r.key for r in batch]
    assert all(topic == "sip" for topic, _k, _v, _h in producer.sent)
    assert producer.polls == 1
    assert producer.batch_calls == (0 if routing.headers else 1)
    assert (reporter.stats.received, reporter.stats.produced, reporter.stats.delivered) == (2, 2, 2)


def test_headers_name_node_task_kind_and_schema() -> None:
    producer = ListProducer()
    KafkaReporter(producer, SIP, time.monotonic).write(records()[:1])
    (_topic, _key, _value, headers), = producer.sent
    assert headers == [("node", b"node1"), ("task", b"t1"), ("kind", b"sip"),
                       ("schema", str(RECORD_SCHEMA_VERSION).encode())]


def test_topic_per_kind_and_the_key_choices() -> None:
    call = CallSummary("c1", raw("10.0.0.1"), raw("10.0.0.2"), None, None, 0, None, None, None, None, None,
                       "timeout")
    sip = records()[0]
    cases: list[tuple[KeyChoice, list[bytes | None]]] = [
        (KeyChoice.CALL_ID, [sip.key, b"c1"]), (KeyChoice.FLOW, [sip.flow_key, b"c1"]),
                             (KeyChoice.NONE, [None, None])]
    for choice, expected in cases:
        producer = ListProducer()
        reporter = KafkaReporter(producer, KafkaRouting("otus", per_kind=True, key=choice, headers=False),
                                 time.monotonic)
        reporter.write([sip, call])
        topics_and_keys = [(t, k) for t, k, _v, _h in producer.sent]
        assert topics_and_keys == list(zip(["otus.sip", "otus.call"], expected, strict=True))
    assert sip.flow_key == b"10.0.0.1:5060-10.0.0.2:5060"


@pytest.mark.parametrize("routing", [SIP, SIP_NO_HEADERS])
def test_a_full_producer_queue_never_blocks_and_loses_nothing(routing: KafkaRouting) -> None:
    producer = ListProducer(full=3)
    reporter = KafkaReporter(producer, routing, time.monotonic)
    batch = records()
    started = time.monotonic()
    reporter.write(batch)                      # refused: waits in the backlog
    assert time.monotonic() - started < 0.1
    assert (producer.sent, reporter.stats.backlog, reporter.stats.queue_full) == ([], 2, 1)
    reporter.write([])                         # refused again
    reporter.write([])                         # and again
    reporter.write([])                         # room: both go, in order
    assert [key for _t, key, _v, _h in producer.sent] == [r.key for r in batch]
    assert (reporter.stats.backlog, reporter.stats.queue_full, reporter.stats.dropped) == (0, 3, 0)


def test_a_partly_refused_batch_keeps_the_refused_tail_in_order() -> None:
    producer = ListProducer(room=3)
    reporter = KafkaReporter(producer, SIP_NO_HEADERS, time.monotonic)
    many = numbered(7)
    reporter.write(many)
    assert [k for _t, k, _v, _h in producer.sent] == [b"c0", b"c1", b"c2"]
    assert (reporter.stats.backlog, reporter.stats.produced, reporter.stats.queue_full) == (4, 3, 1)
    producer.room = None
    reporter.write([])
    assert [k for _t, k, _v, _h in producer.sent] == [r.key for r in many]
    s = reporter.stats
    assert (s.received, s.delivered, s.backlog, s.in_flight, s.dropped, s.failed) == (7, 7, 0, 0, 0, 0)


def numbered(count: int) -> list[SipRecord]:
    many = []
    for n in range(count):
        record = records()[0]
        record.message.call_id = f"c{n}"
        many.append(record)
    return many


@pytest.mark.parametrize(("policy", "kept"), [(OverflowPolicy.DROP_OLDEST, [2, 3, 4]),
                                              (OverflowPolicy.DROP_NEWEST, [0, 1, 2])])
@pytest.mark.parametrize("routing", [SIP, SIP_NO_HEADERS])
def test_the_backlog_is_bounded_and_every_drop_counted(policy: OverflowPolicy, kept: list[int],
                                                       routing: KafkaRouting) -> None:
    producer = ListProducer(full=-1)
    reporter = KafkaReporter(producer, routing, time.monotonic, BacklogLimits(max_records=3, policy=policy))
    reporter.write(numbered(5))
    assert (reporter.stats.dropped, reporter.stats.backlog) == (2, 3)
    producer.full = 0
    reporter.write([])
    assert [key for _t, key, _v, _h in producer.sent] == [f"c{n}".encode() for n in kept]
    s = reporter.stats
    assert s.received == s.delivered + s.dropped + s.failed + s.backlog + s.in_flight


def test_flush_gives_up_at_its_deadline_and_reports_what_is_left() -> None:
    reporter = KafkaReporter(ListProducer(full=-1), SIP, time.monotonic)
    reporter.write(records())
    started = time.monotonic()
    assert reporter.flush(0.3) == 2
    assert 0.25 < time.monotonic() - started < 1.0


def test_librdkafka_statistics_give_the_resends() -> None:
    reporter = KafkaReporter(ListProducer(), SIP, time.monotonic)
    reporter.client_stats(json.dumps({"brokers": {"a": {"txretries": 3}, "b": {"txretries": 4}}}))
    assert reporter.stats.retried == 7
    reporter.client_stats("not json")
    assert reporter.stats.retried == 7


def test_a_record_is_encoded_once_into_bytes_of_its_own_size() -> None:
    """Every output gets the same bytes; and they are a copy of exact size. Regression:
    orjson's bytes sit in a block sized for its buffer (16 kB for a 600-byte record),
    which a record kept in a lagging output's queue held on to."""
    record = records()[0]
    data = encode_json(record)
    assert encode_json(record) is data and json.loads(data) == record.to_dict()
    assert len(data) > 512, "a block of glibc's malloc, not of Python's small-object allocator"
    usable = ctypes.CDLL(None).malloc_usable_size(ctypes.c_void_p(id(data)))
    assert usable < len(data) + 128, usable
