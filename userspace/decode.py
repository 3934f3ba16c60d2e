"""Frame → packet: Ethernet (802.1Q/QinQ), IPv4, IPv6, UDP, TCP.

Stateless functions over bytes; every read is bounds-checked and a short or
broken header raises ``Truncated``/``Malformed`` naming the layer and offset.
IPv6 extension headers and fragments belong to the reassembly issue: here a
packet that is not plain UDP/TCP is reported as such, not guessed at.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from userspace.errors import Malformed, Truncated


class EtherType(IntEnum):
    IPV4 = 0x0800
    IPV6 = 0x86DD
    VLAN = 0x8100
    QINQ = 0x88A8


class IPProto(IntEnum):
    TCP = 6
    UDP = 17


ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
# 802.1ad allows stacking; two tags (QinQ) is what carriers use in practice.
MAX_VLAN_TAGS = 2
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8
TCP_MIN_HEADER_LEN = 20
IP_MORE_FRAGMENTS = 0x2000
IP_OFFSET_MASK = 0x1FFF

_U16 = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded UDP or TCP packet; ``payload`` is the L4 payload."""

    src: str
    dst: str
    sport: int
    dport: int
    transport: IPProto
    payload: bytes
    tcp_seq: int = 0
    tcp_flags: int = 0


def decode_ethernet(frame: bytes) -> tuple[int, int]:
    """Return (ethertype, offset of the L3 header), skipping VLAN tags."""
    if len(frame) < ETH_HEADER_LEN:
        raise Truncated("ethernet", 0, f"{len(frame)} bytes")
    ethertype = _U16.unpack_from(frame, 12)[0]
    offset = ETH_HEADER_LEN
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in (EtherType.VLAN, EtherType.QINQ):
            break
        if len(frame) < offset + VLAN_TAG_LEN:
            raise Truncated("vlan", offset, "tag cut short")
        ethertype = _U16.unpack_from(frame, offset + 2)[0]
        offset += VLAN_TAG_LEN
    return ethertype, offset


def decode_frame(frame: bytes) -> Packet:
    """Decode an Ethernet frame down to its UDP/TCP payload."""
    ethertype, offset = decode_ethernet(frame)
    if ethertype == EtherType.IPV4:
        return _decode_ipv4(frame, offset)
    if ethertype == EtherType.IPV6:
        return _decode_ipv6(frame, offset)
    raise Malformed("ethernet", 12, f"ethertype 0x{ethertype:04x} is not IP")


def _decode_ipv4(frame: bytes, offset: int) -> Packet:
    if len(frame) < offset + 20:
        raise Truncated("ipv4", offset, "header cut short")
    (ver_ihl, _tos, total_len, _ident, frag, _ttl, proto, _csum,
     src, dst) = _IPV4.unpack_from(frame, offset)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < 20:
        raise Malformed("ipv4", offset, f"version/ihl byte 0x{ver_ihl:02x}")
    if frag & (IP_MORE_FRAGMENTS | IP_OFFSET_MASK):
        raise Malformed("ipv4", offset + 6, "fragment (reassembly not wired yet)")
    # total_len bounds the packet: Ethernet may pad short frames.
    end = min(len(frame), offset + total_len)
    return _decode_l4(frame, offset + header_len, end, proto,
                      socket.inet_ntop(socket.AF_INET, src),
                      socket.inet_ntop(socket.AF_INET, dst))


def _decode_ipv6(frame: bytes, offset: int) -> Packet:
    if len(frame) < offset + IPV6_HEADER_LEN:
        raise Truncated("ipv6", offset, "header cut short")
    ver_tc_flow, payload_len, next_header, _hops, src, dst = _IPV6.unpack_from(frame, offset)
    if ver_tc_flow >> 28 != 6:
        raise Malformed("ipv6", offset, "version is not 6")
    start = offset + IPV6_HEADER_LEN
    end = min(len(frame), start + payload_len)
    return _decode_l4(frame, start, end, next_header,
                      socket.inet_ntop(socket.AF_INET6, src),
                      socket.inet_ntop(socket.AF_INET6, dst))


def _decode_l4(frame: bytes, offset: int, end: int, proto: int, src: str, dst: str) -> Packet:
    if proto == IPProto.UDP:
        if end < offset + UDP_HEADER_LEN:
            raise Truncated("udp", offset, "header cut short")
        sport, dport = _PORTS.unpack_from(frame, offset)
        return Packet(src, dst, sport, dport, IPProto.UDP,
                      frame[offset + UDP_HEADER_LEN:end])
    if proto == IPProto.TCP:
        if end < offset + TCP_MIN_HEADER_LEN:
            raise Truncated("tcp", offset, "header cut short")
        sport, dport, seq, _ack, data_off, flags = _TCP.unpack_from(frame, offset)
        header_len = (data_off >> 4) * 4
        if header_len < TCP_MIN_HEADER_LEN or end < offset + header_len:
            raise Malformed("tcp", offset + 12, f"data offset {header_len}")
        return Packet(src, dst, sport, dport, IPProto.TCP,
                      frame[offset + header_len:end], seq, flags)
    raise Malformed("ip", offset, f"protocol {proto} is not UDP or TCP")
