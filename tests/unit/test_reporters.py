from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sip_samples import INVITE, OK_200
from userspace.pipeline import Pipeline
from userspace.records import SipRecord
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.kafka import KafkaReporter


def records() -> list[SipRecord]:
    frames = [ethernet(ipv4(udp(m))) for m in (INVITE, OK_200)]
    out = Pipeline({}, 0).process([ring_record(f) for f in frames])
    return [r for r in out if isinstance(r, SipRecord)]


def test_jsonl_writes_one_line_per_record() -> None:
    sink = io.BytesIO()
    reporter = JsonLinesReporter(sink)
    reporter.write(records())
    reporter.write([])
    lines = sink.getvalue().decode().splitlines()
    assert [json.loads(line)["method"] for line in lines] == ["INVITE", None]
    assert json.loads(lines[1])["status"] == 200
    assert json.loads(lines[0])["schema"] == 1
    assert reporter.stats.written == 2


class ListProducer:
    """Stands in for confluent_kafka.Producer in unit tests; the real broker
    is exercised by tests/integration."""

    def __init__(self, full_times: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.pending: list[Callable[[Any, Any], None]] = []
        self.full_times = full_times
        self.polls = 0

    def produce(self, topic: str, *, value: bytes, key: bytes,
                on_delivery: Callable[[Any, Any], None]) -> None:
        if self.full_times:
            self.full_times -= 1
            raise BufferError("queue full")
        self.sent.append((topic, key, value))
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        served, self.pending = self.pending, []
        for callback in served:
            callback(None, None)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return 0


def test_kafka_keys_by_call_id_and_polls_once_per_batch() -> None:
    producer = ListProducer()
    reporter = KafkaReporter(producer, "sip")
    batch = records()
    reporter.write(batch)
    assert [key for _topic, key, _value in producer.sent] == [r.key for r in batch]
    assert all(topic == "sip" for topic, _k, _v in producer.sent)
    assert producer.polls == 1
    assert (reporter.stats.produced, reporter.stats.delivered) == (2, 2)


def test_kafka_waits_out_a_full_queue_without_losing_records() -> None:
    producer = ListProducer(full_times=3)
    reporter = KafkaReporter(producer, "sip")
    reporter.write(records())
    assert len(producer.sent) == 2
    assert reporter.stats.queue_full == 3
