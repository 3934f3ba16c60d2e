"""Build the confluent-kafka producer and check the broker before capture starts."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from confluent_kafka import KafkaException, Producer

from otus_ebpf.errors import SetupError

BROKER_CHECK_TIMEOUT_S = 5.0
_log = logging.getLogger("otus_ebpf.kafka")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    brokers: str
    topic: str = "otus.sip"
    linger_ms: int = 20
    batch_messages: int = 10_000
    compression: str = "lz4"
    # librdkafka holds at most this much; our own bounded backlog holds the rest.
    queue_kbytes: int = 64 << 10
    # How long librdkafka retries one message before reporting it failed.
    message_timeout_ms: int = 300_000


def make_producer(settings: KafkaSettings) -> Producer:
    """A batching, idempotent producer; raises SetupError if the broker does not answer."""
    producer = Producer({
        "bootstrap.servers": settings.brokers,
        "client.id": f"otus-ebpf@{socket.gethostname()}",
        "linger.ms": settings.linger_ms,
        "batch.num.messages": settings.batch_messages,
        "compression.type": settings.compression,
        "enable.idempotence": True,   # retries after an outage never duplicate
        "delivery.report.only.error": True,  # KafkaReporter counts the rest
        "acks": "all",
        "queue.buffering.max.kbytes": settings.queue_kbytes,
        "message.timeout.ms": settings.message_timeout_ms,
        "logger": _log,
    })
    try:
        producer.list_topics(timeout=BROKER_CHECK_TIMEOUT_S)
    except KafkaException as exc:
        raise SetupError(
            f"kafka broker {settings.brokers} unreachable: {exc.args[0].str()}"
        ) from None
    return producer
