"""The operator's end of the fleet: send a signed command and gather the
answers (``otus-ebpf fleet send``), and read the nodes' heartbeats
(``otus-ebpf fleet status``)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from otus_ebpf.errors import SetupError
from otus_ebpf.fleet import envelope
from otus_ebpf.fleet.channel import STOPPED
from otus_ebpf.fleet.envelope import Target

BROKER_TIMEOUT_S = 10.0
STALE_BEATS = 3  # a node is stale when this many heartbeats are overdue


@dataclass(frozen=True, slots=True)
class Answer:
    node: str
    body: dict[str, Any]
    verified: bool  # signed with the key the operator holds


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    age_s: float
    state: str          # running, stopped, or stale (overdue heartbeats)
    beat: dict[str, Any]
    verified: bool | None  # None: no key given to check it


def _consumer(brokers: str) -> Consumer:
    return Consumer({"bootstrap.servers": brokers, "group.id": f"otus-ebpf-cli-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})


@contextlib.contextmanager
def _reading(brokers: str, topic: str) -> Iterator[tuple[Consumer, list[TopicPartition]]]:
    consumer = _consumer(brokers)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=BROKER_TIMEOUT_S)
        except KafkaException as exc:
            raise SetupError(f"kafka broker {brokers} unreachable: {exc}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise SetupError(f"topic {topic} not found on {brokers}")
        yield consumer, [TopicPartition(topic, p) for p in sorted(found.partitions)]
    finally:
        consumer.close()


def _end(consumer: Consumer, partition: TopicPartition) -> int:
    """The offset the next message of the partition will have."""
    try:
        return int(consumer.get_watermark_offsets(partition, BROKER_TIMEOUT_S)[1])
    except KafkaException as exc:
        raise SetupError(f"kafka: cannot read {partition.topic}'s offsets: {exc}") from None


def send(brokers: str, key: bytes, target: Target, cmd: str, args: dict[str, Any], timeout_s: float,
         command_topic: str, response_topic: str, expect: int | None = None) -> list[Answer]:
    """Send one command; the answers that come within ``timeout_s`` (or as soon as
    ``expect`` nodes have answered)."""
    request_id = uuid.uuid4().hex
    with _reading(brokers, response_topic) as (consumer, partitions):
        ends = [TopicPartition(tp.topic, tp.partition, _end(consumer, tp)) for tp in partitions]
        consumer.assign(ends)  # answers from now on
        message = envelope.command(request_id, time.time_ns() // 1_000_000, target, cmd, args, key)
        producer = Producer({"bootstrap.servers": brokers, "message.timeout.ms": int(timeout_s * 1000)})
        producer.produce(command_topic, key=request_id.encode(), value=envelope.encode(message))
        if producer.flush(timeout_s) > 0:
            raise SetupError(f"the command could not be sent to {brokers} within {timeout_s:g} s")
        return _answers(consumer, request_id, key, time.monotonic() + timeout_s, expect)


def _answers(consumer: Consumer, request_id: str, key: bytes, deadline: float,
             expect: int | None) -> list[Answer]:
    answers: dict[str, Answer] = {}
    while time.monotonic() < deadline and (expect is None or len(answers) < expect):
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        body = envelope.decode(message.value())
        if isinstance(body, str) or body.get("id") != request_id or not isinstance(body.get("node"), str):
            continue
        answers[body["node"]] = Answer(body["node"], body, envelope.signed_by(body, key))
    return sorted(answers.values(), key=lambda a: a.node)


def fleet_status(brokers: str, status_topic: str, key: bytes | None, since_s: float) -> list[NodeStatus]:
    """The latest heartbeat of each node heard from in the last ``since_s`` seconds."""
    now_ms = time.time_ns() // 1_000_000
    latest: dict[str, tuple[dict[str, Any], bool | None]] = {}
    with _reading(brokers, status_topic) as (consumer, partitions):
        starts = consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, now_ms - int(since_s * 1000)) for tp in partitions],
            BROKER_TIMEOUT_S)
        ends = {tp.partition: _end(consumer, tp) for tp in partitions}
        # No message since then: offsets_for_times gives -1, and there is nothing to read there.
        for start in starts:
            start.offset = start.offset if start.offset >= 0 else ends[start.partition]
        consumer.assign(starts)
        for beat in _read_to(consumer, ends):
            verified = None if key is None else envelope.signed_by(beat, key)
            node, ts_ms = beat.get("node"), beat.get("ts_ms")
            if not isinstance(node, str) or not isinstance(ts_ms, int) or now_ms - ts_ms > since_s * 1000:
                continue
            if node not in latest or latest[node][0]["ts_ms"] < ts_ms:
                latest[node] = (beat, verified)
    return [_status(node, beat, verified, now_ms) for node, (beat, verified) in sorted(latest.items())]


def _read_to(consumer: Consumer, ends: dict[int, int]) -> Iterator[dict[str, Any]]:
    """Every message up to the ends the partitions had when reading began."""
    left = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + BROKER_TIMEOUT_S
    while left and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None and offset >= ends.get(partition, 0) - 1:
            left.discard(partition)
        body = envelope.decode(message.value())
        if not isinstance(body, str) and body.get("kind") == "heartbeat":
            yield body


def _status(node: str, beat: dict[str, Any], verified: bool | None, now_ms: int) -> NodeStatus:
    age_s = max(0.0, (now_ms - beat["ts_ms"]) / 1000)
    interval = beat.get("interval_s")
    overdue = isinstance(interval, int | float) and age_s > STALE_BEATS * max(float(interval), 0.1)
    state = STOPPED if beat.get("state") == STOPPED else "stale" if overdue else str(beat.get("state", "?"))
    return NodeStatus(node, age_s, state, beat, verified)
