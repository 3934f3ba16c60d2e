"""Small builders for frames and ring records, so tests state only what matters."""

from __future__ import annotations

import socket
import struct

from userspace.event import EVENT_HEADER, Direction, Kind

UDP, TCP = 17, 6
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def udp(payload: bytes, sport: int = 5060, dport: int = 5060) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(payload: bytes, sport: int = 5060, dport: int = 5060, seq: int = 1, flags: int = 0x18,
        options: bytes = b"") -> bytes:
    data_offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, data_offset << 4, flags, 65535, 0, 0) \
        + options + payload


def ipv4(l4: bytes, proto: int = UDP, src: str = "10.0.0.1", dst: str = "10.0.0.2",
         frag: int = 0, options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 1, frag, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + options + l4


def ipv6(l4: bytes, proto: int = UDP, src: str = "fd00::1", dst: str = "fd00::2") -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + l4


def ethernet(l3: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b""
    tpids = [0x88A8] * (len(vlans) - 1) + [0x8100] if vlans else []
    for tpid, vid in zip(tpids, vlans, strict=True):
        tags += struct.pack("!HH", tpid, vid)
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + l3


def ring_record(frame: bytes, direction: Direction = Direction.INGRESS, ts_ns: int = 1_000,
                ifindex: int = 2, kind: Kind = Kind.SIP) -> bytes:
    header = EVENT_HEADER.pack(ts_ns, ifindex, len(frame), len(frame), 0xABCD, 14, 34, 42,
                               direction, kind, UDP, 0)
    return header + frame
