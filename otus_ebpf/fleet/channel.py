"""The daemon's end of the fleet: commands taken from the command topic and
answered on the response topic, heartbeats on the status topic.

Each node reads every partition of the command topic itself (assigned, not
subscribed: no group rebalance can stall a node or hand its partitions to
another), with its offsets kept in a group of its own, ``otus-ebpf.NODE``,
committed after each command: a restarted node goes on where it stopped, a
new one starts ``max_age`` back (older commands would be stale anyway). The
request ids taken are kept in the state directory too, so a command run
just before a crash is not run again when its offset was not yet committed.
A broker outage only delays: librdkafka reconnects, the partitions are
looked up again every few seconds, and answers and heartbeats wait in the
producer's queue (bounded; what overflows is counted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from otus_ebpf import __version__, logs
from otus_ebpf.errors import SetupError
from otus_ebpf.fleet import envelope
from otus_ebpf.fleet.envelope import Command, Judge, Verdict
from otus_ebpf.fleet.settings import FleetSettings

# The verbs that change nothing: all a read-only node takes.
READ_ONLY_VERBS = frozenset({"list", "status", "stats", "samples"})
POLL_S = 0.5
PARTITIONS_EVERY_S = 5.0     # how often the command topic's partitions are looked up again
QUEUE_MESSAGES = 10_000      # answers and heartbeats waiting for the broker
MESSAGE_TIMEOUT_MS = 300_000  # after which librdkafka gives one up (counted)
CLOSE_FLUSH_S = 5.0
JOIN_S = 10.0                # a thread stuck in librdkafka must not hold the daemon's stop
CONSUMER_QUEUE_KB = 16 << 10  # commands fetched ahead: a flood of 1 MiB messages stays bounded
LOG_EVERY_S = 30.0           # the same complaint (a broker away, a refused command) at most this often
STOPPED = "stopped"

Answerer = Callable[[dict[str, Any], str], dict[str, Any]]  # (request, origin) -> {"ok": ...}
StateReader = Callable[[], dict[str, Any]]


class _Throttle(logging.Filter):
    """One line per kind of complaint every LOG_EVERY_S: a broker away for an hour, or a
    flood of refused commands, must not fill the journal (the counters count them all)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, int], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return _log.isEnabledFor(logging.DEBUG)
        kind = (" ".join(record.getMessage().split()[:2]), record.levelno)  # e.g. "fleet: unsigned:"
        now = time.monotonic()
        if now - self._last.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            return False
        if len(self._last) > 1_000:
            self._last.clear()
        self._last[kind] = now
        return True


_log = logs.get(__name__)
_refusals = logs.get(f"{__name__}.refused")
_refusals.addFilter(_Throttle())
_librdkafka = logs.get(f"{__name__}.librdkafka")
_librdkafka.addFilter(_Throttle())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FleetChannel:
    """Started by ``start()``, stopped by ``close()`` (a last heartbeat says
    "stopped", then the queue is flushed for a few seconds)."""

    def __init__(self, settings: FleetSettings, answer: Answerer, state: StateReader,
                 clock: Callable[[], int] = _now_ms) -> None:
        self.settings = settings
        self._answer = answer
        self._state = state
        self._clock = clock
        self._judge = Judge(settings.node, settings.groups, settings.key, int(settings.max_age_s * 1000),
                            settings.read_only, READ_ONLY_VERBS, _read_taken(settings.taken_file))
        self._stop = threading.Event()
        self._counts_lock = threading.Lock()
        self.commands: Counter[str] = Counter()   # by Verdict value
        self.sent: Counter[str] = Counter()       # answers/heartbeats: queued, delivered, failed, overflow
        self.started_ms = clock()
        self.instance = uuid.uuid4().hex  # tells two daemons calling themselves one node apart
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._threads: list[threading.Thread] = []
        self._assigned: list[TopicPartition] = []
        self._started = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        base = {"bootstrap.servers": s.brokers, "client.id": f"otus-ebpf@{socket.gethostname()}",
                "logger": _librdkafka, **s.security}
        try:
            self._producer = Producer({**base, "queue.buffering.max.messages": QUEUE_MESSAGES,
                                       "message.timeout.ms": MESSAGE_TIMEOUT_MS, "linger.ms": 5})
            self._consumer = Consumer({**base, "group.id": f"otus-ebpf.{s.node}",
                                       "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                       "fetch.max.bytes": 4 * envelope.MAX_COMMAND_BYTES,
                                       "queued.max.messages.kbytes": CONSUMER_QUEUE_KB,
                                       "topic.metadata.refresh.interval.ms": int(PARTITIONS_EVERY_S * 1000)})
        except KafkaException as exc:
            self._close_clients()
            raise SetupError(f"control.kafka: settings rejected: {exc}") from None
        self._started = True
        for target, name in ((self._take_commands, "fleet-commands"), (self._beat, "fleet-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        _log.info(f"fleet: node {s.node} on {s.brokers}, commands from {s.command_topic}"
                  f"{' (read-only)' if s.read_only else ''}")

    def close(self) -> None:
        """Stop taking commands, say "stopped", give the queue a few seconds; safe to
        call more than once, and after a start that failed."""
        self._stop.set()
        for thread in self._threads:
            thread.join(JOIN_S)
        if self._started and self._producer is not None:
            with contextlib.suppress(Exception):  # the last heartbeat is a courtesy, the stop is not
                self._heartbeat(STOPPED)
            self._producer.flush(CLOSE_FLUSH_S)
        self._started = False
        self._close_clients()

    def _close_clients(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self._consumer.close()
            self._consumer = None
        self._producer = None  # librdkafka's threads end with the last reference

    def figures(self) -> dict[str, dict[str, int]]:
        with self._counts_lock:
            return {"commands": dict(self.commands), "sent": dict(self.sent)}

    # -- commands ----------------------------------------------------------------

    def _take_commands(self) -> None:
        next_lookup = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_lookup:
                    next_lookup = time.monotonic() + PARTITIONS_EVERY_S
                    self._assign()
                message = self._consumer.poll(POLL_S) if self._consumer is not None else None
                if message is not None:
                    self._take(message)
            except Exception as exc:  # the channel must outlive any one command or broker hiccup
                _log.error(f"fleet: {type(exc).__name__}: {exc}", exc_info=_log.isEnabledFor(logging.DEBUG))
                self._stop.wait(POLL_S)

    def _assign(self) -> None:
        """Every partition of the command topic, from the node's committed offsets."""
        consumer, topic = self._consumer, self.settings.command_topic
        assert consumer is not None
        try:
            metadata = consumer.list_topics(topic, timeout=POLL_S)
        except KafkaException:
            return  # the broker is away: the next lookup tries again
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return
        partitions = sorted(found.partitions)
        if [tp.partition for tp in self._assigned] == partitions:
            return
        wanted = [TopicPartition(topic, p) for p in partitions]
        try:
            committed = consumer.committed(wanted, timeout=2 * POLL_S)
            since = self._clock() - int(self.settings.max_age_s * 1000)
            fresh = consumer.offsets_for_times([TopicPartition(topic, p, since) for p in partitions],
                                               timeout=2 * POLL_S)
        except KafkaException:
            return
        # A partition with no committed offset (a new node, a broker that lost them) starts max_age back.
        starts = [c if c.offset >= 0 else f for c, f in zip(committed, fresh, strict=True)]
        consumer.assign(starts)
        self._assigned = starts
        _log.debug(f"fleet: reading {topic} partitions {partitions}")

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                _log.debug(f"fleet: consumer: {error}")
            return
        try:
            self._judged(message.value())
        finally:  # whatever happened to it, a command is read once
            with contextlib.suppress(KafkaException, RuntimeError):
                assert self._consumer is not None
                self._consumer.commit(message=message, asynchronous=True)

    def _judged(self, value: bytes | None) -> None:
        judged = self._judge.judge(value, self._clock())
        with self._counts_lock:
            self.commands[judged.verdict.value] += 1
        command = judged.command
        if judged.verdict in (Verdict.ACCEPTED, Verdict.READ_ONLY):
            self._keep_taken()
        if judged.verdict is Verdict.ACCEPTED:
            assert command is not None
            _log.info(f"fleet: {command.cmd} from request {command.id}")
            self._respond(command, self._answer({**command.args, "cmd": command.cmd}, f"kafka {command.id}"))
        elif judged.verdict not in (Verdict.OTHERS, Verdict.REPLAYED):
            _refusals.warning(f"fleet: {judged.verdict.value}: a command refused ({judged.why}); "
                              "otus_fleet_commands_total counts them all")
            if command is not None:
                self._respond(command, {"ok": False, "error": judged.why})

    def _keep_taken(self) -> None:
        path = self.settings.taken_file
        if path is None:
            return
        try:
            _write_atomically(path, json.dumps(self._judge.taken()).encode())
        except OSError as exc:
            _log.warning(f"fleet: cannot keep the request ids taken in {path}: {exc.strerror}; "
                         "a restart may run a just-taken command again")

    def _respond(self, command: Command, body: dict[str, Any]) -> None:
        s = self.settings
        try:
            signed = envelope.answer(command, s.node, self._clock(), body, s.key)
        except ValueError:  # a NaN among the figures: JSON cannot carry it, nor can a signature cover it
            refusal = {"ok": False, "error": "the answer holds a value JSON cannot carry"}
            signed = envelope.answer(command, s.node, self._clock(), refusal, s.key)
        self._send(s.response_topic, command.id, signed)

    # -- heartbeats -----------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._heartbeat("running")
            except Exception as exc:  # a state reader's bug must not end the heartbeats
                _log.error(f"fleet: heartbeat: {type(exc).__name__}: {exc}")
            self._stop.wait(self.settings.heartbeat_s)

    def _heartbeat(self, state: str) -> None:
        s = self.settings
        now = self._clock()
        beat = {"v": envelope.FORMAT, "kind": "heartbeat", "node": s.node, "groups": list(s.groups),
                "instance": self.instance, "host": socket.gethostname(),
                "version": __version__, "ts_ms": now, "started_ms": self.started_ms,
                "uptime_ms": now - self.started_ms, "interval_ms": round(s.heartbeat_s * 1000),
                "state": state, "read_only": s.read_only, "fleet": self.figures(),
                **({} if state == STOPPED else self._state())}
        self._send(s.status_topic, s.node, envelope.sign(beat, s.key))

    def _send(self, topic: str, key: str, message: dict[str, Any]) -> None:
        producer = self._producer
        assert producer is not None
        try:
            producer.produce(topic, key=key.encode(), value=envelope.encode(message),
                             on_delivery=self._delivered)
            outcome = "queued"
        except BufferError:
            outcome = "overflow"
        except KafkaException as exc:
            _log.debug(f"fleet: produce to {topic}: {exc}")
            outcome = "failed"
        with self._counts_lock:
            self.sent[outcome] += 1
        producer.poll(0)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        with self._counts_lock:
            self.sent["failed" if error is not None else "delivered"] += 1


def _read_taken(path: str | None) -> dict[str, int]:
    """The request ids a previous run took; none when there is no such file or it is damaged."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as file:
            data = json.loads(file.read(4 * envelope.MAX_SEEN * (envelope.MAX_ID_LENGTH + 24)))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
