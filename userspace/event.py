"""The kernel → user event record; mirrors ``bpf/otus_event.h`` field by field.

``EVENT_FIELDS`` lists the C struct's fields in order with their C types;
``tests/unit/test_event_contract.py`` parses the header and fails on any
difference, so change both files together.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from userspace.errors import Malformed, Truncated


class Direction(IntEnum):
    INGRESS = 0
    EGRESS = 1


class Kind(IntEnum):
    SIP = 1
    RTP = 2
    RTCP = 3
    FRAGMENT = 4
    HANDOFF = 5  # user space only: a framed SIP message for its Call-ID's owner
    TLS = 6  # plaintext read at a local process's TLS library (userspace.tls)


class Flag(IntFlag):
    FRAGMENT = 1
    IPV6 = 2
    SIGNATURE = 4
    VLAN = 8
    OWNED = 16  # flow_hash names the owner: Call-ID hash (SIP) or learning worker (media)
    STREAM = 32  # the first packet of a stream the kernel measures (userspace.kernel_streams)
    INNER = 64  # inside a tunnel: offsets point into the inner packet (userspace.tunnel)


class Counter(IntEnum):
    """The kernel's counters: indexes into ``struct otus_counters.counts``, one per direction.

    Every packet ends in exactly one verdict (NOT_IP .. DUPLICATE), so the
    verdicts add up to SEEN.
    """

    SEEN = 0
    NOT_IP = 1
    TRUNCATED = 2
    MALFORMED = 3
    OTHER_L4 = 4
    FILTERED = 5
    NO_MATCH = 6
    MATCHED_SIP_PORT = 7
    MATCHED_SIP_SIGNATURE = 8
    MATCHED_RTP = 9
    MATCHED_RTCP = 10
    MATCHED_FRAGMENT = 11
    DROPPED_METHOD = 12  # SIP over UDP of a method or status code on the drop list (or answering one)
    DUPLICATE = 13       # a match seen within the dedup window already
    SUBMITTED = 14
    SUBMIT_FAILED = 15
    LOAD_FAILED = 16
    MEDIA_COUNTED = 17  # learned RTP counted in the kernel's stream statistics, not copied up
    STREAMS_FULL = 18   # RTP of a new stream the full streams map could not hold
    DEDUP_DISPLACED = 19  # a dedup slot taken over while its packet was within the window
    DECAP_VXLAN = 20    # tunnels opened, by kind (one level); the inner packet has its own verdict
    DECAP_GENEVE = 21
    DECAP_GRE = 22
    DECAP_ERSPAN = 23
    DECAP_IPIP = 24
    DECAP_BAD = 25      # a tunnel header refused (cut short, flags or version not followed)
    DECAP_NESTED = 26   # a tunnel inside a tunnel: counted, not opened
    DECAP_UNTRUSTED = 27  # a tunnel from a source outside the trusted mirrors: not opened
    MAX = 28


VERDICTS = tuple(Counter(c) for c in range(Counter.NOT_IP, Counter.DUPLICATE + 1))


StructFields = tuple[tuple[str, str, int], ...]
_STRUCT_CODES = {"__u8": "B", "__u16": "H", "__u32": "I", "__u64": "Q"}
C_SIZES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8, "bpf_spin_lock": 4}
_OPAQUE = frozenset(("pad", "lock"))  # bytes user space skips: padding, a kernel lock


def struct_format(fields: StructFields) -> str:
    """struct format for fields in the header's restricted style.

    "=": host byte order and no implicit padding, as the header promises.
    ``pad`` fields are skipped bytes; other ``__u8`` arrays are byte strings.
    """
    codes = []
    for name, ctype, count in fields:
        if name in _OPAQUE:
            codes.append(f"{(count or 1) * C_SIZES[ctype]}x")
        elif count and ctype == "__u8":
            codes.append(f"{count}s")
        else:
            codes.append(f"{count}{_STRUCT_CODES[ctype]}" if count else _STRUCT_CODES[ctype])
    return "=" + "".join(codes)


def field_offset(fields: StructFields, name: str) -> int:
    """Where a field starts: the size of the fields before it (the header promises no padding)."""
    names = [field for field, _ctype, _count in fields]
    return struct.calcsize(struct_format(fields[:names.index(name)]))


# (name, C type, array length or 0) in struct order.
EVENT_FIELDS: StructFields = (
    ("ts_ns", "__u64", 0),
    ("ifindex", "__u32", 0),
    ("orig_len", "__u32", 0),
    ("cap_len", "__u32", 0),
    ("flow_hash", "__u32", 0),
    ("l3_offset", "__u16", 0),
    ("l4_offset", "__u16", 0),
    ("payload_offset", "__u16", 0),
    ("direction", "__u8", 0),
    ("kind", "__u8", 0),
    ("l4_proto", "__u8", 0),
    ("flags", "__u8", 0),
    ("shard", "__u8", 0),
    ("pad", "__u8", 0),
    ("owner", "__u32", 0),
)

EVENT_HEADER = struct.Struct(struct_format(EVENT_FIELDS))


@dataclass(slots=True)
class Event:
    """One packet the kernel sent up: its header fields and the frame bytes.

    Treat it as immutable; not frozen because a frozen ``__init__`` costs
    ~1 µs more per packet (see ``userspace.sip.SipMessage``)."""

    ts_ns: int
    ifindex: int
    orig_len: int
    cap_len: int
    flow_hash: int
    l3_offset: int
    l4_offset: int
    payload_offset: int
    direction: int  # a Direction; plain ints here, as enum construction costs per packet
    kind: int       # a Kind
    l4_proto: int
    flags: int      # Flag bits
    shard: int
    frame: bytes
    owner: int = 0  # media: the flow's owner tag, part of its streams' kernel key


# What a capture hands the pipeline: a ring record as the kernel wrote it, or the
# event user space built for a frame it classified itself (AF_PACKET, replay).
Captured = bytes | Event


def decode_event(buf: bytes) -> Event:
    """Split a ring record into its header and frame; no copy of the frame
    beyond the one slice."""
    size = EVENT_HEADER.size
    if len(buf) < size:
        raise Truncated("event", 0, f"{len(buf)} bytes, header needs {size}")
    (ts_ns, ifindex, orig_len, cap_len, flow_hash, l3, l4, payload,
     direction, kind, l4_proto, flags, shard, owner) = EVENT_HEADER.unpack_from(buf)
    if len(buf) < size + cap_len:
        raise Truncated("event", size, f"cap_len {cap_len} exceeds record")
    if direction > Direction.EGRESS:
        raise Malformed("event", 30, f"direction {direction}")
    return Event(ts_ns, ifindex, orig_len, cap_len, flow_hash, l3, l4, payload, direction, kind, l4_proto,
                 flags, shard, bytes(buf[size:size + cap_len]), owner)
