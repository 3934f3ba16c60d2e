"""Fan-out: a slow or failing output never holds up the capture or the other
outputs, and whatever an output cannot take reaches the fallback or a counter."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence

import pytest

from otus_ebpf.outputs.fanout import Fallback, QueuedReporter
from tests.support.records import numbered_sip_records
from tests.support.sinks import ListSink
from tests.unit.test_reporters import ListProducer
from userspace.records import Record, SipRecord
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.kafka import BacklogLimits, KafkaReporter, KafkaRouting


class SlowReporter:
    """Takes ``delay`` seconds per batch until released."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.records: list[Record] = []
        self.release = threading.Event()
        self.closed = False

    def write(self, records: Sequence[Record]) -> None:
        if records and not self.release.is_set():
            time.sleep(self.delay)
        self.records += records

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FailingReporter(SlowReporter):
    def write(self, records: Sequence[Record]) -> None:
        if records:
            raise OSError(28, "No space left on device")


def fallback() -> tuple[Fallback, ListSink]:
    sink = ListSink()
    return Fallback(JsonLinesReporter(sink)), sink


def cseqs_in(sink: ListSink) -> list[int]:
    return [json.loads(line)["cseq"] for f in sink.files for line in f.splitlines()]


def test_a_slow_output_holds_up_neither_the_capture_nor_a_fast_one() -> None:
    slow, fast = SlowReporter(0.2), SlowReporter(0.0)
    outputs = [QueuedReporter("slow", slow), QueuedReporter("fast", fast)]
    records = numbered_sip_records(50, 5)
    try:
        started = time.monotonic()
        for i in range(0, 50, 5):
            for output in outputs:
                output.write(records[i:i + 5])
        assert time.monotonic() - started < 0.1, "the capture thread waited"
        assert outputs[1].drain(2.0, time.monotonic)
        assert len(fast.records) == 50 and len(slow.records) < 50
        slow.release.set()
        assert outputs[0].flush(5.0, time.monotonic) == 0
        assert slow.records == records
    finally:
        for output in outputs:
            output.close()
    assert slow.closed and fast.closed


def test_a_full_queue_hands_its_oldest_batches_to_the_fallback() -> None:
    slow = SlowReporter(0.3)
    spare, sink = fallback()
    output = QueuedReporter("slow", slow, spare, max_records=10)
    records = numbered_sip_records(50, 5)
    try:
        for i in range(0, 50, 5):
            output.write(records[i:i + 5])
        slow.release.set()
        assert output.flush(5.0, time.monotonic) == 0
    finally:
        output.close()
    s = output.stats
    assert s.overflow > 0 and s.overflow == s.to_fallback == spare.records
    assert s.written + s.overflow == 50
    written = [r.message.cseq for r in slow.records if isinstance(r, SipRecord)]
    assert sorted(cseqs_in(sink) + written) == list(range(50))


def test_a_failing_output_loses_nothing_and_says_so_once(logged: pytest.LogCaptureFixture) -> None:
    spare, sink = fallback()
    output = QueuedReporter("disk", FailingReporter(0), spare)
    records = numbered_sip_records(20, 5)
    try:
        for i in range(0, 20, 5):
            output.write(records[i:i + 5])
        assert output.drain(2.0, time.monotonic)
    finally:
        output.close()
    assert (output.stats.failed, output.stats.to_fallback, output.stats.written) == (20, 20, 0)
    assert cseqs_in(sink) == list(range(20))
    assert logged.record_tuples == [("otus_ebpf.outputs.fanout", logging.WARNING,
                                     "disk: OSError: [Errno 28] No space left on device")]


def test_records_kafka_drops_go_to_the_fallback_as_json() -> None:
    spare, sink = fallback()
    kafka = KafkaReporter(ListProducer(full=-1), KafkaRouting("sip"), time.monotonic,
                          BacklogLimits(max_records=3), spill=spare.take_encoded)
    kafka.write(numbered_sip_records(5, 5))
    assert (kafka.stats.dropped, kafka.stats.spilled, kafka.stats.backlog) == (2, 2, 3)
    assert cseqs_in(sink) == [0, 1]  # drop-oldest: the two oldest
