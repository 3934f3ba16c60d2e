"""RTP streams the kernel measures: their map layout, mirroring
``bpf/otus_event.h`` (struct otus_stream_key, struct otus_stream), and how a
snapshot of one becomes the ``RtpStream`` that reports it.

The kernel runs the same algorithm as ``userspace.rtp`` (RFC 3550 A.1, A.3,
A.8) on every packet of a learned flow and sends up only each stream's first
packet (``Flag.STREAM``). User space registers the stream from that packet,
reads the state of all streams every report interval (``StreamSource.read_all``)
and the state of a call's streams when the call ends (``read``), then
deletes them. The reading is the caller's I/O; this module is bytes in,
streams out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntFlag
from typing import Protocol

from userspace.event import StructFields, field_offset, struct_format
from userspace.rtp import DEFAULT_CLOCK_RATE, Formats, RtpStream, clock_of, is_event

MAX_CLOCKS = 8          # OTUS_MAX_CLOCKS: payload types per flow whose clock the kernel is told
NO_TYPE = 255           # OTUS_NO_TYPE
JITTER_ONE = 1 << 16    # the kernel's jitter is fixed point: units x 65536
SEQ_MOD = 1 << 16
TYPE_SLOTS = 4          # payload types counted per stream; more go to other_types

STREAM_KEY_FIELDS: StructFields = (
    ("saddr", "__u8", 16),
    ("daddr", "__u8", 16),
    ("sport", "__u16", 0),
    ("dport", "__u16", 0),
    ("ssrc", "__u32", 0),
    ("owner", "__u32", 0),
    ("family", "__u8", 0),
    ("worker", "__u8", 0),
    ("pad", "__u8", 2),
)
STREAM_FIELDS: StructFields = (
    ("lock", "bpf_spin_lock", 0),
    ("packets", "__u32", 0),
    ("bytes", "__u64", 0),
    ("first_ns", "__u64", 0),
    ("last_ns", "__u64", 0),
    ("last_arrival_ns", "__u64", 0),
    ("jitter", "__u64", 0),
    ("recent_lo", "__u64", 0),
    ("recent_hi", "__u64", 0),
    ("cycles", "__u32", 0),
    ("expected_before", "__u32", 0),
    ("reordered", "__u32", 0),
    ("duplicates", "__u32", 0),
    ("stray", "__u32", 0),
    ("clock_rate", "__u32", 0),
    ("last_timestamp", "__u32", 0),
    ("event_timestamp", "__u32", 0),
    ("event_packets", "__u32", 0),
    ("events", "__u32", 0),
    ("base_seq", "__u16", 0),
    ("max_seq", "__u16", 0),
    ("bad_seq", "__u16", 0),
    ("audio_type", "__u8", 0),
    ("state", "__u8", 0),
    ("types", "__u8", 4),
    ("type_packets", "__u32", 4),
    ("other_types", "__u32", 0),
)
STREAM_KEY = struct.Struct(struct_format(STREAM_KEY_FIELDS))
STREAM = struct.Struct(struct_format(STREAM_FIELDS))
WORKER_OFFSET = field_offset(STREAM_KEY_FIELDS, "worker")
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")
_PACKETS_OFFSET = field_offset(STREAM_FIELDS, "packets")
_FIRST_NS_OFFSET = field_offset(STREAM_FIELDS, "first_ns")


class StreamState(IntFlag):
    """Bits of otus_stream.state."""

    BAD_SEQ = 1
    ARRIVAL = 2
    EVENT = 4


Clocks = tuple[tuple[int, int], ...]  # (payload type, clock; 0: telephone-event)


class StreamSource(Protocol):
    """The kernel's streams map, as a worker reads it (otus_ebpf.kernel.streams)."""

    def read_all(self, worker: int | None) -> Iterable[tuple[bytes, bytes]]:
        """Every (key, value) in the map whose key names ``worker`` (None: every one)."""
        ...

    def read(self, keys: list[bytes]) -> list[bytes | None]:
        """These streams' values; None for one that is gone."""
        ...

    def delete(self, keys: list[bytes]) -> None: ...


def clock_table(formats: Formats) -> Clocks:
    """What the kernel must know of an SDP's payload types: the ones whose RTP clock
    is not the default, and telephone-events (clock 0). Every other type runs at
    the default clock, as the static ones do. At most MAX_CLOCKS, events first:
    counting an event as audio would put it in the jitter."""
    events, clocks = [], []
    for payload_type, codec in formats.items():
        if not 0 <= payload_type < 128:
            continue
        if is_event(codec):
            events.append((payload_type, 0))
        elif (clock := clock_of(codec)) != DEFAULT_CLOCK_RATE:
            clocks.append((payload_type, clock))
    return tuple(sorted(events) + sorted(clocks))[:MAX_CLOCKS]


def stream_key(src: bytes, sport: int, dst: bytes, dport: int, ssrc: int, owner: int, worker: int) -> bytes:
    """The kernel's key of a stream; ``src``/``dst`` are raw addresses (4 or 16 bytes)."""
    return STREAM_KEY.pack(src.ljust(16, b"\0"), dst.ljust(16, b"\0"), sport, dport, ssrc, owner,
                           4 if len(src) == 4 else 6, worker)


def key_worker(key: bytes) -> int:
    return key[WORKER_OFFSET]


def first_arrival(value: bytes) -> int:
    """When the kernel began the stream (monotonic ns), without decoding the rest."""
    return int(_U64.unpack_from(value, _FIRST_NS_OFFSET)[0])


def packets_of(value: bytes) -> int:
    return int(_U32.unpack_from(value, _PACKETS_OFFSET)[0])


def apply_snapshot(stream: RtpStream, value: bytes) -> None:
    """The kernel's state of the stream becomes the stream's: it counted every packet."""
    (packets, bytes_, first_ns, last_ns, last_arrival_ns, jitter, recent_lo, recent_hi, cycles,
     expected_before, reordered, duplicates, stray, clock_rate, last_timestamp, event_timestamp,
     event_packets, events, base_seq, max_seq, bad_seq, audio_type, state, types,
     *rest) = STREAM.unpack(value)
    type_packets, other_types = rest[:TYPE_SLOTS], rest[TYPE_SLOTS]
    flags = StreamState(state)
    stream.packets, stream.bytes = packets, bytes_
    stream.first_ns = first_ns
    stream.last_ns = max(last_ns, first_ns)
    stream.base_seq, stream.max_seq, stream.cycles = base_seq, max_seq, cycles * SEQ_MOD
    stream.reordered, stream.duplicates, stream.stray = reordered, duplicates, stray
    stream.jitter = jitter / JITTER_ONE
    stream.clock_rate = clock_rate or DEFAULT_CLOCK_RATE
    stream.by_type = {types[i]: n for i, n in enumerate(type_packets) if n}
    stream.other_types = other_types
    stream.event_packets, stream.events = event_packets, events
    stream._last_arrival_ns = last_arrival_ns if flags & StreamState.ARRIVAL else -1
    stream._last_timestamp = last_timestamp
    stream._audio_type = -1 if audio_type == NO_TYPE else audio_type
    stream._event_timestamp = event_timestamp if flags & StreamState.EVENT else -1
    stream._recent = recent_lo | recent_hi << 64
    stream._bad_seq = bad_seq if flags & StreamState.BAD_SEQ else -1
    stream._expected_before = expected_before

