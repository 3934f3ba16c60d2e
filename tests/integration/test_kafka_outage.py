"""The Kafka reporter through a real broker outage: the tansu process is
stopped (SIGSTOP) for 20 s while records keep coming, then continued.
Nothing raises, what the backlog held is delivered once, what it could not
hold is counted as dropped, and received = delivered + dropped + failed
exactly. And a broker that is not there at start is waited for.

Why stopped and continued rather than killed and restarted: tansu keeps its
state in memory, and librdkafka's idempotent producer, finding its producer
id unknown to the new process, bumps its epoch locally and retries; tansu
rejects that with UnknownProducerId for ever (seen with debug=eos). A Kafka
broker keeps producer state across restarts, so the stopped process is the
faithful stand-in; reconnecting to a listener that was refusing
connections is what the second test covers."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otus_ebpf.outputs.kafka_producer import KafkaSettings, open_kafka_reporter
from tests.support.broker import Broker, free_port, start_broker
from tests.support.records import numbered_sip_records
from userspace.reporters.kafka import BacklogLimits, KafkaReporter, KafkaRouting

TOPIC = "sip"
PARTITIONS = 3
CHUNK = 250          # records per write, every TICK_S: 5,000 records/s
TICK_S = 0.05
OUTAGE_S = 20.0
BACKLOG = 20_000     # records the reporter may hold while the broker is away
# librdkafka's own queue, kept small so the reporter's backlog and its bound matter.
QUEUE_KB = 1024


class Feed:
    """Writes numbered records at a steady rate, as the capture loop would."""

    def __init__(self, reporter: KafkaReporter, total: int) -> None:
        self.reporter = reporter
        self.records = numbered_sip_records(total, calls=1_000)
        self.sent = 0

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.sent < len(self.records):
            self.reporter.write(self.records[self.sent:self.sent + CHUNK])
            self.sent += CHUNK
            time.sleep(TICK_S)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Broker]]:
    """Every broker a test starts, stopped at the end whatever happens."""
    started: list[Broker] = []
    try:
        yield started
    finally:
        for broker in started:
            broker.process.stop()


def cseqs(broker: Broker, expected: int) -> list[int]:
    consumed = broker.consume(TOPIC, expected=expected, timeout=120)
    return [json.loads(m.value)["cseq"] for m in consumed]


def test_a_20_s_outage_delivers_the_backlog_once_and_counts_every_drop(
    brokers: list[Broker], tmp_path: Path
) -> None:
    brokers.append(start_broker(tmp_path / "tansu-1.log"))
    first = brokers[0]
    first.create_topic(TOPIC, PARTITIONS)
    reporter = open_kafka_reporter(KafkaSettings(first.address, queue_kbytes=QUEUE_KB), KafkaRouting(TOPIC),
                                   BacklogLimits(max_records=BACKLOG), time.monotonic)
    feed = Feed(reporter, total=200_000)

    feed.run_for(3.0)
    assert reporter.flush(30) == 0
    before = reporter.stats.delivered
    assert before == feed.sent > 0 and reporter.stats.dropped == 0

    first.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        feed.run_for(OUTAGE_S)  # the broker is away: writes go on, never block
        assert time.monotonic() - started < OUTAGE_S + 2.0, "writes blocked during the outage"
        during = reporter.stats
        assert during.backlog == BACKLOG and during.dropped > 0, during
    finally:
        first.process.send_signal(signal.SIGCONT)
    feed.run_for(5.0)
    assert reporter.flush(120) == 0, reporter.stats

    s = reporter.stats
    assert s.received == feed.sent
    assert s.received == s.delivered + s.dropped + s.failed, s
    assert s.failed == 0 and s.backlog == 0 and s.in_flight == 0, s
    consumed = cseqs(first, expected=s.delivered)
    assert len(consumed) == s.delivered, "every delivered record is in the topic"
    assert len(set(consumed)) == len(consumed), "and none twice"
    assert set(range(before)) <= set(consumed), "including all from before the outage"


def test_an_unreachable_broker_at_start_can_be_waited_for(brokers: list[Broker], tmp_path: Path) -> None:
    port = free_port(None)
    settings = KafkaSettings(f"127.0.0.1:{port}", queue_kbytes=QUEUE_KB, start_anyway=True)
    reporter = open_kafka_reporter(settings, KafkaRouting(TOPIC), BacklogLimits(max_records=BACKLOG),
                                   time.monotonic)
    feed = Feed(reporter, total=40_000)
    feed.run_for(2.0)
    assert reporter.stats.delivered == 0 and reporter.stats.received == feed.sent

    brokers.append(start_broker(tmp_path / "tansu.log", port=port))
    brokers[0].create_topic(TOPIC, PARTITIONS, exist_ok=True)  # the waiting producer may ask for it first
    assert reporter.flush(120) == 0, reporter.stats
    s = reporter.stats
    assert s.delivered == s.received == feed.sent and s.dropped == s.failed == 0, s
    assert sorted(cseqs(brokers[0], expected=feed.sent)) == list(range(feed.sent))
