"""Build the confluent-kafka producer and check the broker before capture starts."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from otus_ebpf import logs
from otus_ebpf.errors import SetupError
from userspace.reporters.kafka import BacklogLimits, KafkaReporter, KafkaRouting

BROKER_CHECK_TIMEOUT_S = 5.0
STATISTICS_INTERVAL_MS = 5_000
COMPRESSIONS = ("lz4", "zstd", "snappy", "gzip", "none")
_log = logs.get(__name__)
# librdkafka's own lines. Its notices arrive as INFO: shown only at debug, as the
# operator saw only its warnings and errors before the program had log levels.
_librdkafka = logs.get(f"{__name__}.librdkafka")
_librdkafka.addFilter(lambda record: record.levelno >= logging.WARNING or _log.isEnabledFor(logging.DEBUG))


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """librdkafka's security settings. Secrets stay out of repr, logs and errors."""

    protocol: str = "plaintext"          # plaintext, ssl, sasl_plaintext, sasl_ssl
    sasl_mechanism: str | None = None    # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca: str | None = None            # file paths
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    def client_config(self) -> dict[str, str]:
        config = {"security.protocol": self.protocol}
        optional = {
            "sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password, "ssl.ca.location": self.ssl_ca,
            "ssl.certificate.location": self.ssl_cert, "ssl.key.location": self.ssl_key,
            "ssl.key.password": self.ssl_key_password,
        }
        config.update({name: value for name, value in optional.items() if value is not None})
        return config


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    brokers: str
    linger_ms: int = 20
    batch_messages: int = 10_000
    compression: str = "lz4"
    acks: str = "all"
    idempotence: bool = True   # retries after an outage never duplicate
    # librdkafka holds at most this much; our own bounded backlog holds the rest.
    queue_kbytes: int = 64 << 10
    # How long librdkafka retries one message before reporting it failed.
    message_timeout_ms: int = 300_000
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # An unreachable broker at start: refuse to start (default), or capture
    # anyway and let the backlog fill as in an outage.
    start_anyway: bool = False


def make_producer(settings: KafkaSettings, on_statistics: Callable[[str], None] | None = None) -> Producer:
    """A batching, idempotent producer; raises SetupError if the broker does not
    answer (unless ``start_anyway``, which logs one line instead)."""
    if settings.compression not in COMPRESSIONS:
        choices = ", ".join(COMPRESSIONS)
        raise SetupError(f"kafka compression {settings.compression!r}: choose one of {choices}")
    config: dict[str, Any] = {
        "bootstrap.servers": settings.brokers,
        "client.id": f"otus-ebpf@{socket.gethostname()}",
        "linger.ms": settings.linger_ms,
        "batch.num.messages": settings.batch_messages,
        "compression.type": settings.compression,
        "enable.idempotence": settings.idempotence,
        "delivery.report.only.error": True,  # KafkaReporter counts the rest
        "acks": settings.acks,
        "queue.buffering.max.kbytes": settings.queue_kbytes,
        "message.timeout.ms": settings.message_timeout_ms,
        "logger": _librdkafka,
        **settings.security.client_config(),
    }
    if on_statistics is not None:
        config |= {"statistics.interval.ms": STATISTICS_INTERVAL_MS, "stats_cb": on_statistics}
    try:
        producer = Producer(config)
    except KafkaException as exc:
        raise SetupError(f"kafka settings rejected: {_first_line(exc)}") from None
    try:
        producer.list_topics(timeout=BROKER_CHECK_TIMEOUT_S)
    except KafkaException as exc:
        message = f"kafka broker {settings.brokers} unreachable: {_first_line(exc)}"
        if not settings.start_anyway:
            raise SetupError(message) from None
        _log.warning("%s; capturing anyway, records wait in the backlog", message)
    return producer


def open_kafka_reporter(settings: KafkaSettings, routing: KafkaRouting, limits: BacklogLimits,
                        clock: Callable[[], float],
                        spill: Callable[[Sequence[bytes]], bool] | None = None) -> KafkaReporter:
    """The reporter over a fresh producer, with librdkafka's statistics feeding its counters."""
    reporters: list[KafkaReporter] = []  # the producer exists before its reporter

    def on_statistics(text: str) -> None:
        for reporter in reporters:
            reporter.client_stats(text)

    reporter = KafkaReporter(make_producer(settings, on_statistics), routing, clock, limits, spill)
    reporters.append(reporter)
    return reporter


def _first_line(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    text = error.str() if hasattr(error, "str") else str(error)
    return str(text).splitlines()[0] if text else type(exc).__name__
