"""The operator's end of the fleet: send a signed command and gather the
answers (``otus-ebpf fleet send``), and read the nodes' heartbeats
(``otus-ebpf fleet status``)."""

from __future__ import annotations

import contextlib
import math
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
FUTURE_SKEW_MS = 60_000  # a heartbeat dated further ahead than this is not believed


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


def _consumer(brokers: str, security: dict[str, str] | None) -> Consumer:
    return Consumer({"bootstrap.servers": brokers, "group.id": f"otus-ebpf-cli-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest", **(security or {})})


@contextlib.contextmanager
def _reading(brokers: str, topic: str,
             security: dict[str, str] | None) -> Iterator[tuple[Consumer, list[TopicPartition]]]:
    try:
        consumer = _consumer(brokers, security)
    except KafkaException as exc:
        raise SetupError(f"kafka settings rejected: {exc}") from None
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
         command_topic: str, response_topic: str, expect: int | None = None,
         security: dict[str, str] | None = None) -> list[Answer]:
    """Send one command; the answers that come within ``timeout_s`` (or as soon as
    ``expect`` nodes have answered, signed)."""
    request_id = uuid.uuid4().hex
    with _reading(brokers, response_topic, security) as (consumer, partitions):
        ends = [TopicPartition(tp.topic, tp.partition, _end(consumer, tp)) for tp in partitions]
        consumer.assign(ends)  # answers from now on
        message = envelope.command(request_id, time.time_ns() // 1_000_000, target, cmd, args, key)
        producer = Producer({"bootstrap.servers": brokers, "message.timeout.ms": int(timeout_s * 1000),
                             **(security or {})})
        producer.produce(command_topic, key=request_id.encode(), value=envelope.encode(message))
        if producer.flush(timeout_s) > 0:
            raise SetupError(f"the command could not be sent to {brokers} within {timeout_s:g} s")
        return _answers(consumer, request_id, key, time.monotonic() + timeout_s, expect)


def _answers(consumer: Consumer, request_id: str, key: bytes, deadline: float,
             expect: int | None) -> list[Answer]:
    answers: dict[str, Answer] = {}  # by node: a signed answer is never replaced by an unsigned one
    def enough() -> bool:
        return expect is not None and sum(a.verified for a in answers.values()) >= expect

    while time.monotonic() < deadline and not enough():
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        body = envelope.decode(message.value())
        if isinstance(body, str) or body.get("id") != request_id or body.get("kind") != "answer" \
                or not isinstance(body.get("node"), str):
            continue
        answer = Answer(body["node"], body, envelope.signed_by(body, key))
        if answer.verified or not answers.get(answer.node, answer).verified:
            answers[answer.node] = answer
    return sorted(answers.values(), key=lambda a: a.node)


def fleet_status(brokers: str, status_topic: str, key: bytes | None, since_s: float,
                 security: dict[str, str] | None = None) -> list[NodeStatus]:
    """The latest heartbeat of each node heard from in the last ``since_s`` seconds.
    With a key, heartbeats not signed with it are left out (anyone who can write the
    topic could hide a stopped node behind one); a heartbeat from the future (past
    FUTURE_SKEW_MS) too."""
    now_ms = time.time_ns() // 1_000_000
    beats: dict[str, dict[str, tuple[dict[str, Any], bool | None]]] = {}  # node -> instance -> latest
    with _reading(brokers, status_topic, security) as (consumer, partitions):
        since = now_ms - int(since_s * 1000)
        starts = consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, since) for tp in partitions], BROKER_TIMEOUT_S)
        ends = {tp.partition: _end(consumer, tp) for tp in partitions}
        # No message since then: offsets_for_times gives -1, and there is nothing to read there.
        for start in starts:
            end = ends[start.partition]
            start.offset = start.offset if 0 <= start.offset < end else end
        consumer.assign(starts)
        unread = {start.partition: ends[start.partition] for start in starts
                  if start.offset < ends[start.partition]}
        for beat in _read_to(consumer, unread):
            verified = None if key is None else envelope.signed_by(beat, key)
            node, ts_ms, instance = beat.get("node"), beat.get("ts_ms"), str(beat.get("instance", ""))
            if verified is False or not isinstance(node, str) or not isinstance(ts_ms, int) \
                    or not since <= ts_ms <= now_ms + FUTURE_SKEW_MS:
                continue
            seen = beats.setdefault(node, {})
            if instance not in seen or seen[instance][0]["ts_ms"] < ts_ms:
                seen[instance] = (beat, verified)
    return [_status(node, instances, now_ms) for node, instances in sorted(beats.items())]


def _read_to(consumer: Consumer, ends: dict[int, int]) -> Iterator[dict[str, Any]]:
    """Every heartbeat up to the ends the partitions had when reading began; SetupError
    when the broker does not deliver them within BROKER_TIMEOUT_S (a partial view would
    show nodes as missing or stale that are not)."""
    left = set(ends)
    deadline = time.monotonic() + BROKER_TIMEOUT_S
    while left:
        if time.monotonic() > deadline:
            raise SetupError(f"the status topic was not read to its end within {BROKER_TIMEOUT_S:g} s")
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None and offset >= ends.get(partition, 0) - 1:
            left.discard(partition)
        body = envelope.decode(message.value())
        if not isinstance(body, str) and body.get("kind") == "heartbeat":
            yield body


def _status(node: str, instances: dict[str, tuple[dict[str, Any], bool | None]], now_ms: int) -> NodeStatus:
    beat, verified = max(instances.values(), key=lambda bv: int(bv[0]["ts_ms"]))
    state, age_s = _state_of(beat, now_ms)
    if sum(_state_of(b, now_ms)[0] == "running" for b, _v in instances.values()) > 1:
        state = "conflict"  # two daemons calling themselves one node: both take its commands
    return NodeStatus(node, age_s, state, beat, verified)


def _state_of(beat: dict[str, Any], now_ms: int) -> tuple[str, float]:
    age_s = max(0.0, (now_ms - int(beat["ts_ms"])) / 1000)
    every = _finite(beat.get("interval_ms"), 10_000.0) / 1000
    overdue = age_s > STALE_BEATS * min(max(every, 0.1), 86_400.0)
    said = beat.get("state")
    if said == STOPPED:
        return STOPPED, age_s
    return ("stale" if overdue else said if said == "running" else "?"), age_s


def _finite(value: Any, otherwise: float) -> float:
    """A number a heartbeat gave, when it is one a clock can use."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return otherwise
    try:
        number = float(value)
    except OverflowError:  # an integer of a thousand digits
        return otherwise
    return number if math.isfinite(number) else otherwise
