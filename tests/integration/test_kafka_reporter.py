"""The Kafka reporter against a real broker (tansu): 100,000 records produced
and consumed back exactly once, keyed by Call-ID, one partition per call."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from otus_ebpf.outputs.kafka_producer import KafkaSettings, open_kafka_reporter
from tests.support.broker import Broker, start_broker
from tests.support.records import numbered_sip_records
from userspace.reporters.kafka import BacklogLimits, KafkaRouting

RECORDS = 100_000
CALLS = 2_000
PARTITIONS = 6


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    the_broker = start_broker(tmp_path / "tansu.log")
    try:
        yield the_broker
    finally:
        the_broker.process.stop()


@pytest.mark.parametrize("headers", [False, True], ids=["batched", "with-headers"])
def test_100000_records_arrive_exactly_once_keyed_by_call_id(broker: Broker, headers: bool) -> None:
    broker.create_topic("sip", PARTITIONS)
    routing = KafkaRouting("sip", headers=headers, node="n1", task="t1")
    reporter = open_kafka_reporter(KafkaSettings(broker.address), routing, BacklogLimits(), time.monotonic)
    records = numbered_sip_records(RECORDS, CALLS)
    for i in range(0, RECORDS, 1000):
        reporter.write(records[i:i + 1000])
    assert reporter.flush(60) == 0
    assert (reporter.stats.produced, reporter.stats.delivered, reporter.stats.failed) == (RECORDS, RECORDS, 0)

    consumed = broker.consume_all("sip", expected=RECORDS, timeout=120)
    assert len(consumed) == RECORDS
    seen = sorted(json.loads(value)["cseq"] for _key, value, _partition in consumed)
    assert seen == list(range(RECORDS)), "each record exactly once"
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for key, value, partition in consumed:
        assert key.decode() == json.loads(value)["call_id"]
        partitions[key].add(partition)
    assert len(partitions) == CALLS
    assert all(len(p) == 1 for p in partitions.values()), "all records of a call on one partition"
    assert len(set().union(*partitions.values())) == PARTITIONS, "calls spread over the partitions"
