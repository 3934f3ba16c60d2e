"""The kernel → user event record; mirrors ``bpf/otus_event.h`` field by field.

``EVENT_FIELDS`` lists the C struct's fields in order with their C types;
``tests/unit/test_event_contract.py`` parses the header and fails on any
difference, so change both files together.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from userspace.errors import Malformed, Truncated


class Direction(IntEnum):
    INGRESS = 0
    EGRESS = 1


class Kind(IntEnum):
    SIP = 1


class Counter(IntEnum):
    """Per-CPU counter slots; the array index is ``direction * MAX + counter``."""

    SEEN = 0
    NOT_IP = 1
    TRUNCATED = 2
    NOT_UDP_TCP = 3
    MATCHED = 4
    SUBMITTED = 5
    SUBMIT_FAILED = 6
    LOAD_FAILED = 7
    MAX = 8


# (name, C type, array length or 0) in struct order.
EVENT_FIELDS: tuple[tuple[str, str, int], ...] = (
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
    ("pad", "__u8", 6),
)

_STRUCT_CODES = {"__u8": "B", "__u16": "H", "__u32": "I", "__u64": "Q"}


def _format(fields: tuple[tuple[str, str, int], ...]) -> str:
    # "=": host byte order and no implicit padding, as the header promises.
    codes = []
    for name, ctype, count in fields:
        code = _STRUCT_CODES[ctype]
        if name == "pad":
            codes.append(f"{count}x")
        else:
            codes.append(f"{count}{code}" if count else code)
    return "=" + "".join(codes)


EVENT_HEADER = struct.Struct(_format(EVENT_FIELDS))


@dataclass(frozen=True, slots=True)
class Event:
    """One packet the kernel sent up: its header fields and the frame bytes."""

    ts_ns: int
    ifindex: int
    orig_len: int
    cap_len: int
    flow_hash: int
    l3_offset: int
    l4_offset: int
    payload_offset: int
    direction: Direction
    kind: int
    l4_proto: int
    flags: int
    frame: bytes


def decode_event(buf: bytes) -> Event:
    """Split a ring record into its header and frame; no copy of the frame
    beyond the one slice."""
    size = EVENT_HEADER.size
    if len(buf) < size:
        raise Truncated("event", 0, f"{len(buf)} bytes, header needs {size}")
    (ts_ns, ifindex, orig_len, cap_len, flow_hash, l3, l4, payload,
     direction, kind, l4_proto, flags) = EVENT_HEADER.unpack_from(buf)
    if len(buf) < size + cap_len:
        raise Truncated("event", size, f"cap_len {cap_len} exceeds record")
    if direction > Direction.EGRESS:
        raise Malformed("event", 30, f"direction {direction}")
    return Event(ts_ns, ifindex, orig_len, cap_len, flow_hash, l3, l4, payload,
                 Direction(direction), kind, l4_proto, flags,
                 bytes(buf[size:size + cap_len]))
