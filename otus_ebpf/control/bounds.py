"""The ranges numeric settings may take, one place for the config checker
and the command line: a value outside its range, not finite, or written with
other than ASCII digits is refused with a one-line error before anything
starts, so that whatever validates can also be loaded and reloaded."""

from __future__ import annotations

import math
from dataclasses import dataclass

from otus_ebpf.kernel.settings import MAX_SHARDS, MAX_SNAPLEN, MIN_SNAPLEN
from userspace.calls import CallLimits
from userspace.numbers import is_ascii_digits


@dataclass(frozen=True, slots=True)
class Bound:
    low: float
    high: float

    def describe(self) -> str:
        return f"between {_shown(self.low)} and {_shown(self.high)}"


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


PORT = Bound(1, 65_535)
RING_MB = Bound(1, 1024)                     # MiB a shard's ring, a power of two
WORKERS = Bound(1, MAX_SHARDS)               # ring shards declared in bpf/otus.c
SNAPLEN = Bound(MIN_SNAPLEN, MAX_SNAPLEN)     # a per-CPU map value; a jumbo frame
SNAPLEN_MEDIA = Bound(0, MAX_SNAPLEN)
STATS_INTERVAL_S = Bound(0.1, 86_400)
ROTATE_MB = Bound(0.001, 1 << 20)            # up to 1 TiB a file
ROTATE_AGE_S = Bound(1, 366 * 86_400)
QUEUE_RECORDS = Bound(1, 10_000_000)
KAFKA_LINGER_MS = Bound(0, 900_000)          # librdkafka's own limit
KAFKA_BATCH = Bound(1, 1_000_000)            # librdkafka: batch.num.messages
KAFKA_QUEUE_KB = Bound(1, 2_147_483_647)     # librdkafka: queue.buffering.max.kbytes
KAFKA_BACKLOG_MB = Bound(1, 1 << 20)
HEP_CAPTURE_ID = Bound(0, (1 << 32) - 1)     # a 32-bit chunk
REPLAY_SPEED = Bound(0.001, 1_000_000)
RTP_REPORT_INTERVAL_S = Bound(*CallLimits.__dataclass_fields__["rtp_report_interval_s"].metadata["range"])


def parse_int(text: str, bound: Bound) -> int:
    """A whole number in ``bound``; ValueError with the reason otherwise."""
    value = text.strip().removeprefix("-")
    if not is_ascii_digits(value):
        raise ValueError(f"must be a whole number, not {text!r}")
    number = int(text.strip())
    if not bound.low <= number <= bound.high:
        raise ValueError(f"must be {bound.describe()}, not {number}")
    return number


def parse_float(text: str, bound: Bound) -> float:
    """A finite number in ``bound``; ValueError with the reason otherwise."""
    try:
        number = float(text) if text.isascii() else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"must be a number, not {text!r}")
    if not bound.low <= number <= bound.high:
        raise ValueError(f"must be {bound.describe()}, not {text}")
    return number
