"""Small builders for frames and ring records, so tests state only what matters."""

from __future__ import annotations

import ipaddress
import socket
import struct

from userspace.classify import Rules, classify_frame, mix32
from userspace.event import EVENT_HEADER, Direction, Kind
from userspace.frame import walk

UDP, TCP = 17, 6
V6 = 0x86DD  # the IPv6 ethertype
RTP_PAYLOAD = bytes(12) + b"\xaa" * 160  # RTP header + 20 ms of G.711
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
MAC_C = bytes.fromhex("020000000003")  # a router's ports, for a packet's copy one hop later
MAC_D = bytes.fromhex("020000000004")


def udp(payload: bytes, sport: int = 5060, dport: int = 5060) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(payload: bytes, sport: int = 5060, dport: int = 5060, seq: int = 1, flags: int = 0x18,
        options: bytes = b"") -> bytes:
    data_offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, data_offset << 4, flags, 65535, 0, 0) \
        + options + payload


def ipv4(l4: bytes, proto: int = UDP, src: str = "10.0.0.1", dst: str = "10.0.0.2",
         frag: int = 0, options: bytes = b"", ident: int = 1, ttl: int = 64, tos: int = 0) -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(l4), ident, frag, ttl, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + options + l4


def ipv6(l4: bytes, proto: int = UDP, src: str = "fd00::1", dst: str = "fd00::2", flow_label: int = 0,
         hop_limit: int = 64, traffic_class: int = 0) -> bytes:
    first = 6 << 28 | traffic_class << 20 | flow_label
    return struct.pack("!IHBB16s16s", first, len(l4), proto, hop_limit,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + l4


def ipv4_checksum(header: bytes) -> int:
    """RFC 791's header checksum: the ones' complement of the ones' complement sum."""
    total = sum(int(word) for word in struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def next_hop(frame: bytes, vlans: tuple[int, ...] = (), macs: tuple[bytes, bytes] = (MAC_C, MAC_D)) -> bytes:
    """The same IP packet as a router forwards it: TTL (IPv4, its header checksum
    recomputed) or hop limit (IPv6) one less, other MACs, ``vlans`` for tags."""
    layout = walk(frame)
    assert layout is not None, "an IP frame"
    packet = bytearray(frame[layout.l3:])
    if packet[0] >> 4 == 4:
        packet[8] -= 1
        ihl = (packet[0] & 0x0F) * 4
        packet[10:12] = b"\0\0"
        packet[10:12] = ipv4_checksum(bytes(packet[:ihl])).to_bytes(2, "big")
        ethertype = 0x0800
    else:
        packet[7] -= 1
        ethertype = V6
    return ethernet(bytes(packet), ethertype, vlans, macs)


def with_checksum(frame: bytes) -> bytes:
    """An IPv4 frame with its header checksum filled in (the builders leave 0)."""
    layout = walk(frame)
    assert layout is not None and frame[layout.l3] >> 4 == 4
    ihl = (frame[layout.l3] & 0x0F) * 4
    header = bytearray(frame[layout.l3:layout.l3 + ihl])
    header[10:12] = b"\0\0"
    header[10:12] = ipv4_checksum(bytes(header)).to_bytes(2, "big")
    return frame[:layout.l3] + bytes(header) + frame[layout.l3 + ihl:]


def ethernet(l3: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = (),
             macs: tuple[bytes, bytes] = (MAC_B, MAC_A)) -> bytes:
    """``macs``: (destination, source)."""
    tags = b""
    tpids = [0x88A8] * (len(vlans) - 1) + [0x8100] if vlans else []
    for tpid, vid in zip(tpids, vlans, strict=True):
        tags += struct.pack("!HH", tpid, vid)
    return macs[0] + macs[1] + tags + struct.pack("!H", ethertype) + l3


_EVERY_PORT = Rules(frozenset(range(65536)))


def ring_record(frame: bytes, direction: Direction = Direction.INGRESS, ts_ns: int = 1_000,
                ifindex: int = 2, kind: Kind = Kind.SIP, shard: int = 0) -> bytes:
    """The record the kernel would write for this frame: offsets, protocol and
    flags as its parser finds them (userspace.classify mirrors it); zeros for
    frames it would not parse."""
    c = classify_frame(frame, _EVERY_PORT)
    if c is None:
        header = EVENT_HEADER.pack(ts_ns, ifindex, len(frame), len(frame), 0, 0, 0, 0, direction, kind, 0, 0,
                                   shard, 0)
    else:
        header = EVENT_HEADER.pack(ts_ns, ifindex, len(frame), len(frame), c.flow_hash, c.l3_offset,
                                   c.l4_offset, c.payload_offset, direction, kind, c.l4_proto, c.flags, shard,
                                   0)
    return header + frame


HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTS, ICMP = 0, 43, 44, 51, 60, 1


def ipv6_ext(next_header: int, units: int = 0) -> bytes:
    """A hop-by-hop / routing / destination-options header of (units + 1) * 8 bytes."""
    size = (units + 1) * 8
    return bytes([next_header, units, 1, size - 4]) + b"\0" * (size - 4)  # one PadN option


def ipv6_ah(next_header: int, icv_len: int = 12) -> bytes:
    """An authentication header: its length counts 4-byte units minus 2 (RFC 4302 §2.2)."""
    size = 12 + icv_len
    return bytes([next_header, size // 4 - 2]) + b"\0" * (size - 2)


def ipv6_fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset // 8) << 3 | int(more), ident)


def ipv6_chain(payload: bytes, first_header: int, src: str = "fd00::1", dst: str = "fd00::2") -> bytes:
    """An IPv6 header whose next-header field is ``first_header``; ``payload``
    holds the extension headers and whatever follows them."""
    return ipv6(payload, proto=first_header, src=src, dst=dst)


def raw(address: str) -> bytes:
    """The raw form of an IP literal, as the pipeline carries addresses."""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def conversation_shard(src: str, dst: str, shards: int) -> int:
    """The shard of a conversation without a Call-ID: the kernel XOR-folds the raw
    addresses read as host-order words, then mixes (userspace.classify mirrors it)."""
    fold = 0
    for address in (src, dst):
        raw = ipaddress.ip_address(address).packed.ljust(16, b"\0")
        for i in range(0, 16, 4):
            fold ^= int.from_bytes(raw[i:i + 4], "little")
    return mix32(fold) % shards
