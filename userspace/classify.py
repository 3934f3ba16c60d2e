"""The kernel's classification, in Python, for frames that did not come
through the eBPF programs (the AF_PACKET fallback, and later replays).

Mirrors ``classify()`` in bpf/otus.c: the same parse (802.1Q/QinQ, IPv4,
IPv6 extension chain, UDP/TCP), the same verdict order (fragments, SIP
ports, learned media endpoints, SIP signature) and the same symmetric
hashes, so an event built here is the event the kernel would have written.
Address filters are left to the caller's socket filter.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from userspace.event import EVENT_HEADER, Direction, Flag, Kind
from userspace.sharding import call_id_hash

_VLAN_TPIDS = (0x8100, 0x88A8)
_IPV6_EXTENSIONS = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH
_IPV6_FRAGMENT = 44
_MAX_VLAN_TAGS = 2
_MAX_IPV6_EXTENSIONS = 6
_UDP, _TCP = 17, 6
# First bytes of a SIP status line or request (RFC 3261 §7), as the kernel checks them.
SIGNATURES = (b"SIP/2.0 ", b"INVITE ", b"ACK ", b"BYE ", b"CANCEL ", b"OPTIONS ", b"REGISTER",
              b"PRACK ", b"SUBSCRIB", b"NOTIFY ", b"PUBLISH ", b"INFO ", b"REFER ", b"MESSAGE ",
              b"UPDATE ")

Endpoint = tuple[bytes, int, int]  # (raw address, port, L4 protocol)


@dataclass(frozen=True, slots=True)
class Rules:
    sip_ports: frozenset[int]
    signature: bool = False
    shards: int = 1
    media: Mapping[Endpoint, tuple[Kind, int]] = field(default_factory=dict)  # → (kind, shard)


@dataclass(frozen=True, slots=True)
class Classified:
    kind: Kind
    flags: Flag
    shard: int
    flow_hash: int
    l3_offset: int
    l4_offset: int
    payload_offset: int
    l4_proto: int


_NO_FLAGS = Flag(0)


@dataclass(slots=True)
class _Parsed:
    flags: Flag = _NO_FLAGS
    src: bytes = b""
    dst: bytes = b""
    frag_id: int = 0
    non_first: bool = False
    l3: int = 0
    l4: int = 0
    payload: int = 0
    proto: int = 0
    sport: int = 0
    dport: int = 0


def mix32(h: int) -> int:
    """murmur3's finaliser, as in bpf/otus.c."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _fold(address: bytes) -> int:
    """XOR of the address's 32-bit words, read in host (little-endian) order as the kernel does."""
    raw = address.ljust(16, b"\0")
    return (int.from_bytes(raw[0:4], "little") ^ int.from_bytes(raw[4:8], "little")
            ^ int.from_bytes(raw[8:12], "little") ^ int.from_bytes(raw[12:16], "little"))


def _parse(frame: bytes) -> _Parsed | None:
    p = _Parsed()
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    offset = 14
    for _ in range(_MAX_VLAN_TAGS):
        if ethertype not in _VLAN_TPIDS:
            break
        if len(frame) < offset + 4:
            return None
        p.flags |= Flag.VLAN
        ethertype = int.from_bytes(frame[offset + 2:offset + 4], "big")
        offset += 4
    p.l3 = offset
    if ethertype == 0x0800:
        offset = _parse_ipv4(frame, offset, p)
    elif ethertype == 0x86DD:
        offset = _parse_ipv6(frame, offset, p)
    else:
        return None
    if offset < 0 or p.non_first:
        return None if offset < 0 else p
    return _parse_l4(frame, offset, p)


def _parse_ipv4(frame: bytes, offset: int, p: _Parsed) -> int:
    if len(frame) < offset + 20 or frame[offset] >> 4 != 4 or frame[offset] & 0x0F < 5:
        return -1
    frag = int.from_bytes(frame[offset + 6:offset + 8], "big")
    p.proto, p.src, p.dst = frame[offset + 9], frame[offset + 12:offset + 16], frame[offset + 16:offset + 20]
    if frag & 0x3FFF:
        p.flags |= Flag.FRAGMENT
        p.frag_id = int.from_bytes(frame[offset + 4:offset + 6], "little")  # raw, as the kernel reads it
        p.non_first = bool(frag & 0x1FFF)
    return offset + (frame[offset] & 0x0F) * 4


def _parse_ipv6(frame: bytes, offset: int, p: _Parsed) -> int:
    if len(frame) < offset + 40 or frame[offset] >> 4 != 6:
        return -1
    p.flags |= Flag.IPV6
    p.src, p.dst = frame[offset + 8:offset + 24], frame[offset + 24:offset + 40]
    next_header, offset = frame[offset + 6], offset + 40
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if next_header == _IPV6_FRAGMENT:
            if len(frame) < offset + 8:
                return -1
            p.flags |= Flag.FRAGMENT
            p.frag_id = int.from_bytes(frame[offset + 4:offset + 8], "little")
            p.non_first = bool(int.from_bytes(frame[offset + 2:offset + 4], "big") & 0xFFF8)
            next_header, offset = frame[offset], offset + 8
        elif next_header in _IPV6_EXTENSIONS:
            if len(frame) < offset + 2:
                return -1
            units = frame[offset + 1]
            length = (units + 2) * 4 if next_header == 51 else (units + 1) * 8
            next_header, offset = frame[offset], offset + length
        else:
            break
        if p.non_first:
            break
    p.proto = next_header
    return offset


def _parse_l4(frame: bytes, offset: int, p: _Parsed) -> _Parsed | None:
    p.l4 = offset
    if p.proto == _UDP and len(frame) >= offset + 8:
        p.sport, p.dport = struct.unpack_from("!HH", frame, offset)
        p.payload = offset + 8
        return p
    if p.proto == _TCP and len(frame) >= offset + 20 and frame[offset + 12] >> 4 >= 5:
        p.sport, p.dport = struct.unpack_from("!HH", frame, offset)
        p.payload = offset + (frame[offset + 12] >> 4) * 4
        return p
    return None


def classify_frame(frame: bytes, rules: Rules) -> Classified | None:
    """How the kernel would classify this frame, or None when it would not send it up."""
    p = _parse(frame)
    if p is None:
        return None
    fold = _fold(p.src) ^ _fold(p.dst)
    shard = mix32(fold) % rules.shards
    if p.flags & Flag.FRAGMENT:
        flow_hash = mix32(fold ^ p.frag_id ^ (p.proto << 16))
        return Classified(Kind.FRAGMENT, p.flags, shard, flow_hash, p.l3, p.l4, p.payload, p.proto)
    flow_hash = mix32(fold ^ (p.sport ^ p.dport) ^ (p.proto << 16))
    if p.sport in rules.sip_ports or p.dport in rules.sip_ports:
        return _sip(frame, p, p.flags, shard, flow_hash, rules.shards)
    media = rules.media.get((p.dst, p.dport, p.proto)) or rules.media.get((p.src, p.sport, p.proto))
    if media is not None:  # the owner, the worker that learned it, in flow_hash
        kind, media_shard = media
        ring = media_shard if media_shard < rules.shards else 0
        return Classified(kind, p.flags | Flag.OWNED, ring, media_shard, p.l3, p.l4,
                          p.payload, p.proto)
    if rules.signature and p.proto == _UDP and frame[p.payload:p.payload + 8].startswith(SIGNATURES):
        return _sip(frame, p, p.flags | Flag.SIGNATURE, shard, flow_hash, rules.shards)
    return None


def _sip(frame: bytes, p: _Parsed, flags: Flag, shard: int, flow_hash: int, shards: int) -> Classified:
    """A whole UDP datagram goes to the shard of its Call-ID (route_by_call_id in the kernel).
    Only where there is more than one shard to go to: the kernel always hashes, for the
    one-ring dispatcher, but the captures that classify here (AF_PACKET, replay) run one
    pipeline, and the hash costs ~4 µs a message in Python."""
    if p.proto == _UDP and shards > 1:
        call_hash = call_id_hash(frame[p.payload:])
        if call_hash is not None:
            return Classified(Kind.SIP, flags | Flag.OWNED, call_hash % shards, call_hash, p.l3, p.l4,
                              p.payload, p.proto)
    return Classified(Kind.SIP, flags, shard, flow_hash, p.l3, p.l4, p.payload, p.proto)


def encode_event(frame: bytes, c: Classified, direction: Direction, ts_ns: int, ifindex: int,
                 orig_len: int) -> bytes:
    """The ring record the kernel would have written for this frame."""
    return EVENT_HEADER.pack(ts_ns, ifindex, orig_len, len(frame), c.flow_hash, c.l3_offset, c.l4_offset,
                             c.payload_offset, direction, c.kind, c.l4_proto, c.flags, c.shard, 0) + frame
