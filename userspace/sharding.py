"""Which worker owns a SIP message: the one its Call-ID hashes to.

Every message of a dialog, and the dialog's media, must meet in one worker
(docs/SHARDING.md). The kernel routes a whole SIP datagram by its Call-ID
(``call_id_hash`` in bpf/otus.c) and marks it ``Flag.OWNED``; what it
cannot route — SIP over TCP, fragmented datagrams, a Call-ID past its scan —
lands on its conversation's worker, which frames the message and, when the
Call-ID belongs to another worker, hands it over (``HandOff``).

``call_id_hash`` here is the kernel's scan, byte for byte: the same header
forms, the same bounds, the same hash, so a message routed by either side
reaches the same owner.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from userspace.errors import Malformed, Truncated
from userspace.event import EVENT_HEADER, Direction, Kind
from userspace.frame import IPProto
from userspace.tls import TLS, WSS, Process
from userspace.tunnel import CODES, Encap
from userspace.websocket import WS

CALL_ID_SCAN = 384      # payload bytes the kernel looks through (OTUS_CALLID_SCAN)
CALL_ID_HASHED = 128    # value bytes hashed at most (OTUS_CALLID_HASHED)
CALL_ID_BLANKS = 8      # blanks allowed after the colon (OTUS_CALLID_BLANKS)
_FNV_OFFSET = 2166136261
_FNV_PRIME = 16777619
# A header line named Call-ID or i (any case), its colon right after the name.
_CALL_ID_LINE = re.compile(rb"\n(?:call-id|i):", re.IGNORECASE)
_BLANKS = b" \t"
_VALUE_END = re.compile(rb"[\r\n \t]")


def fnv1a(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def call_id_hash(payload: bytes, scan: int | None = CALL_ID_SCAN) -> int | None:
    """The hash the kernel gives this SIP payload, or None where it gives none:
    no Call-ID line before the blank line, more than 8 blanks, an empty value,
    or a value the first ``scan`` bytes (or the payload) cut short of 128 bytes.
    ``scan=None`` looks through the whole header: the same first line, so the
    same hash wherever the kernel finds one, and a hash where it stopped short."""
    window = payload if scan is None else payload[:scan]
    match = _CALL_ID_LINE.search(window, 0, header_end(window))
    if match is None:
        return None
    start = match.end()
    value = start
    while value < len(window) and window[value] in _BLANKS:
        value += 1
        if value - start > CALL_ID_BLANKS:
            return None
    end = _VALUE_END.search(window, value, value + CALL_ID_HASHED)
    if end is not None:
        stop = end.start()
    elif len(window) - value >= CALL_ID_HASHED:
        stop = value + CALL_ID_HASHED
    else:
        return None  # cut: the rest of the value is past what was looked at
    return fnv1a(window[value:stop]) if stop > value else None


def header_end(window: bytes) -> int:
    """Where a header line can no longer start, as the kernel's scans stop: the first
    LF followed by CR or LF. A line match includes that LF, so a search ends just after it."""
    ends = [i for i in (window.find(b"\n\r"), window.find(b"\n\n")) if i >= 0]
    return min(ends) + 1 if ends else len(window)


def owner_of(payload: bytes, workers: int) -> int | None:
    """The worker that owns this message, or None when its Call-ID cannot be told
    (it then stays where it is). The whole header is looked through: a Call-ID
    past the kernel's scan (several Vias and a Record-Route put it there) must
    still reach the owner of the dialog's shorter messages."""
    h = call_id_hash(payload, scan=None)
    return None if h is None else h % workers


@dataclass(frozen=True, slots=True)
class HandOff:
    """A SIP message framed in one worker, for the worker that owns its Call-ID:
    what the record needs of the packets it came in, and the message."""

    ts_ns: int
    ifindex: int
    direction: int  # a Direction
    transport: int  # an IPProto, or WS
    src: bytes  # raw addresses
    sport: int
    dst: bytes
    dport: int
    fragments: int
    vlans: tuple[int, ...]
    message: bytes
    encap: Encap | None = None  # the tunnel it came in
    process: Process | None = None  # the local process it was read at, as TLS plaintext


# ts, ifindex, direction, transport, ports, fragments, address and VLAN counts; then
# the tunnel: its TunnelCode (0: none), whether it has an id, the id, its outer address size;
# then the process (TLS): its pid (0: none) and the length of its name
_HANDOFF = struct.Struct("=QIBBHHHBBBBBIBIB")
_KINDS = {int(code): kind for kind, code in CODES.items()}


def encode_handoff(h: HandOff) -> bytes:
    src, dst, encap = h.src, h.dst, h.encap
    vlans = struct.pack(f"={len(h.vlans)}H", *h.vlans)
    if encap is None:
        tunnel, outer = (0, 0, 0, 0), b""
    else:
        tunnel = (encap.code, encap.id is not None, encap.id or 0, len(encap.src))
        outer = encap.src + encap.dst
    comm = b"" if h.process is None else h.process.comm.encode()[:_MAX_COMM]
    pid = 0 if h.process is None else h.process.pid
    return _HANDOFF.pack(h.ts_ns, h.ifindex, h.direction, h.transport, h.sport, h.dport,
                         min(h.fragments, 0xFFFF), len(src), len(dst), len(h.vlans), *tunnel, pid,
                         len(comm)) + src + dst + vlans + outer + comm + h.message


def handoff_record(h: HandOff) -> bytes:
    """The hand-off as a ring record of kind HANDOFF, so that it travels and is read
    like any event (its frame is the encoded hand-off)."""
    body = encode_handoff(h)
    return EVENT_HEADER.pack(h.ts_ns, h.ifindex, len(body), len(body), 0, 0, 0, 0, h.direction, Kind.HANDOFF,
                             h.transport, 0, 0, 0) + body


def decode_handoff(raw: bytes) -> HandOff:
    if len(raw) < _HANDOFF.size:
        raise Truncated("handoff", 0, f"{len(raw)} bytes")
    ts_ns, ifindex, direction, transport, sport, dport, fragments, n_src, n_dst, n_vlans, \
        tunnel, has_id, tunnel_id, n_outer, pid, n_comm = _HANDOFF.unpack_from(raw)
    at = _HANDOFF.size
    if len(raw) < at + n_src + n_dst + 2 * n_vlans + 2 * n_outer + n_comm:
        raise Truncated("handoff", at, "addresses")
    if n_comm > _MAX_COMM or (n_comm and not pid):
        raise Malformed("handoff", 28, f"process {pid} with a name of {n_comm} bytes")
    if n_src not in _ADDRESS_SIZES or n_dst != n_src:
        raise Malformed("handoff", 13, f"address sizes {n_src}, {n_dst}")
    if (tunnel not in _KINDS and (tunnel or n_outer)) or (tunnel and n_outer not in _ADDRESS_SIZES):
        raise Malformed("handoff", 23, f"tunnel {tunnel}, outer address size {n_outer}")
    src = raw[at:at + n_src]
    at += n_src
    dst = raw[at:at + n_dst]
    at += n_dst
    vlans = struct.unpack_from(f"={n_vlans}H", raw, at)
    at += 2 * n_vlans
    encap = None
    if tunnel:
        encap = Encap(_KINDS[tunnel], tunnel_id if has_id else None, raw[at:at + n_outer],
                      raw[at + n_outer:at + 2 * n_outer])
        at += 2 * n_outer
    process = None
    if pid:
        process = Process(pid, raw[at:at + n_comm].decode("utf-8", "replace"))
        at += n_comm
    if direction > Direction.EGRESS or transport not in _TRANSPORTS:
        raise Malformed("handoff", 12, f"direction {direction}, transport {transport}")
    return HandOff(ts_ns, ifindex, direction, transport, src, sport, dst, dport,
                   fragments, vlans, raw[at:], encap, process)


_TRANSPORTS = frozenset((*IPProto, WS, TLS, WSS))
_MAX_COMM = 64  # bytes of a process name: 15 of the kernel's comm, each \xNN when not UTF-8
_ADDRESS_SIZES = (4, 16)
