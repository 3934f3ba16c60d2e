"""Frame → packet or fragment: Ethernet (802.1Q/QinQ), IPv4, IPv6 with its
extension headers, UDP, TCP.

Stateless functions over bytes; every read is bounds-checked and a short or
broken header raises ``Truncated``/``Malformed`` naming the layer and offset.
A fragment comes back as a ``reassembly.Fragment`` for the reassembler;
``decode_datagram`` decodes what the reassembler gives back.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from userspace.errors import Malformed, Truncated
from userspace.reassembly import Datagram, Fragment


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
IPV6_FRAGMENT = 44
IPV6_AH = 51
# Hop-by-hop, routing, destination options, AH (RFC 8200 §4, RFC 4302).
IPV6_EXTENSIONS = frozenset((0, 43, 60, IPV6_AH))
# More extension headers than this is not a real packet (RFC 8200 §4.1 lists
# at most one of each, destination options twice).
MAX_IPV6_EXTENSIONS = 8

_U16 = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")
_IPV6_FRAG = struct.Struct("!BBHI")


@dataclass(slots=True)
class Packet:
    """A decoded UDP or TCP packet; ``payload`` is the L4 payload. Treat it as
    immutable; not frozen for the per-packet cost (see ``userspace.event.Event``)."""

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


def vlan_ids(frame: bytes) -> tuple[int, ...]:
    """The 802.1Q/802.1ad VLAN ids in a frame, outer first (12 bits of each tag)."""
    ids: list[int] = []
    offset = 12
    for _ in range(MAX_VLAN_TAGS):
        if len(frame) < offset + 4 or _U16.unpack_from(frame, offset)[0] not in (EtherType.VLAN,
                                                                                   EtherType.QINQ):
            break
        ids.append(_U16.unpack_from(frame, offset + 2)[0] & 0x0FFF)
        offset += VLAN_TAG_LEN
    return tuple(ids)


def decode_frame(frame: bytes) -> Packet | Fragment:
    """Decode an Ethernet frame down to its UDP/TCP payload, or to the IP
    fragment it carries."""
    ethertype, offset = decode_ethernet(frame)
    if ethertype == EtherType.IPV4:
        return _decode_ipv4(frame, offset)
    if ethertype == EtherType.IPV6:
        return _decode_ipv6(frame, offset)
    raise Malformed("ethernet", 12, f"ethertype 0x{ethertype:04x} is not IP")


def _decode_ipv4(frame: bytes, offset: int) -> Packet | Fragment:
    if len(frame) < offset + 20:
        raise Truncated("ipv4", offset, "header cut short")
    (ver_ihl, _tos, total_len, ident, frag, _ttl, proto, _csum,
     src, dst) = _IPV4.unpack_from(frame, offset)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < 20:
        raise Malformed("ipv4", offset, f"version/ihl byte 0x{ver_ihl:02x}")
    # total_len bounds the packet: Ethernet may pad short frames.
    end = min(len(frame), offset + total_len)
    if end < offset + header_len:
        raise Truncated("ipv4", offset, f"total length {total_len} < header {header_len}")
    if frag & (IP_MORE_FRAGMENTS | IP_OFFSET_MASK):
        return Fragment(4, src, dst, proto, ident, (frag & IP_OFFSET_MASK) * 8,
                        bool(frag & IP_MORE_FRAGMENTS), frame[offset + header_len:end])
    return _decode_l4(frame, offset + header_len, end, proto,
                      socket.inet_ntop(socket.AF_INET, src),
                      socket.inet_ntop(socket.AF_INET, dst))


def _decode_ipv6(frame: bytes, offset: int) -> Packet | Fragment:
    if len(frame) < offset + IPV6_HEADER_LEN:
        raise Truncated("ipv6", offset, "header cut short")
    ver_tc_flow, payload_len, next_header, _hops, src, dst = _IPV6.unpack_from(frame, offset)
    if ver_tc_flow >> 28 != 6:
        raise Malformed("ipv6", offset, "version is not 6")
    start = offset + IPV6_HEADER_LEN
    end = min(len(frame), start + payload_len)
    next_header, start, fragment = _walk_ipv6_extensions(frame, start, end, next_header)
    if fragment is not None:
        ident, frag_offset, more = fragment
        return Fragment(6, src, dst, next_header, ident, frag_offset, more, frame[start:end])
    return _decode_l4(frame, start, end, next_header,
                      socket.inet_ntop(socket.AF_INET6, src),
                      socket.inet_ntop(socket.AF_INET6, dst))


def _walk_ipv6_extensions(buf: bytes, offset: int, end: int,
                          next_header: int) -> tuple[int, int, tuple[int, int, bool] | None]:
    """Skip extension headers up to the upper layer or a fragment header.

    Returns (next header, its offset, (id, fragment offset, more) or None).
    """
    for _ in range(MAX_IPV6_EXTENSIONS):
        if next_header == IPV6_FRAGMENT:
            if end < offset + 8:
                raise Truncated("ipv6-fragment", offset, "header cut short")
            following, _reserved, frag_field, ident = _IPV6_FRAG.unpack_from(buf, offset)
            return following, offset + 8, (ident, frag_field & 0xFFF8, bool(frag_field & 1))
        if next_header not in IPV6_EXTENSIONS:
            return next_header, offset, None
        if end < offset + 2:
            raise Truncated("ipv6-extension", offset, "header cut short")
        units = buf[offset + 1]
        following = buf[offset]
        offset += (units + 2) * 4 if next_header == IPV6_AH else (units + 1) * 8
        next_header = following
    raise Malformed("ipv6", offset, f"more than {MAX_IPV6_EXTENSIONS} extension headers")


def decode_datagram(datagram: Datagram) -> Packet:
    """Decode a reassembled datagram's fragmentable part down to UDP/TCP."""
    payload, protocol = datagram.payload, datagram.protocol
    family = socket.AF_INET if datagram.version == 4 else socket.AF_INET6
    offset = 0
    if datagram.version == 6:
        protocol, offset, nested = _walk_ipv6_extensions(payload, 0, len(payload), protocol)
        if nested is not None:
            raise Malformed("ipv6", offset, "fragment header inside a reassembled datagram")
    return _decode_l4(payload, offset, len(payload), protocol,
                      socket.inet_ntop(family, datagram.src), socket.inet_ntop(family, datagram.dst))


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
