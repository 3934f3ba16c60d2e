"""The one frame parser: Ethernet (802.1Q/QinQ), IPv4, IPv6 with its extension
headers, UDP, TCP. Every source of frames goes through the same two halves:

- ``walk`` finds where each layer starts, as ``parse()`` in bpf/otus.c does,
  with the same limits and the same verdict on what it cannot follow. Live,
  the kernel has walked the frame and sent the offsets in the event header;
  only replay and the AF_PACKET fallback walk in Python (userspace.classify
  then decides what the kernel would have decided).
- ``packet_at`` reads the packet from those offsets: raw addresses, ports,
  the payload bounded by the IP length (Ethernet pads short frames), or the
  IP fragment for the reassembler. It checks what the kernel need not (the
  IP lengths, the TCP data offset) and raises ``Truncated``/``Malformed``
  naming the layer.

So a replayed frame is decoded by exactly the code that decodes a live one.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from userspace.errors import DecodeError, Malformed, Truncated
from userspace.event import Flag
from userspace.reassembly import Datagram, Fragment
from userspace.tunnel import (
    ETH_P_TEB,
    INNER_MAX,
    Encap,
    TunnelCounts,
    Tunnels,
    ip_tunnel,
    open_ip,
    open_udp,
    udp_tunnel,
)


class IPProto(IntEnum):
    TCP = 6
    UDP = 17


ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
VLAN_TPIDS = frozenset((0x8100, 0x88A8))  # 802.1Q, 802.1ad
MAX_VLAN_TAGS = 2  # 802.1ad allows stacking; two tags (QinQ) is what carriers use, and the kernel's limit
IPV4_MIN_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8
TCP_MIN_HEADER_LEN = 20
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_EXTENSIONS = frozenset((0, 43, 60, IPV6_AH))  # hop-by-hop, routing, destination options, AH
# The kernel follows this many extension headers (a verifier-bounded loop); past it a
# packet is not ours, here as there. RFC 8200 §4.1 lists at most one of each, destination
# options twice.
MAX_IPV6_EXTENSIONS = 6
IP_MORE_FRAGMENTS = 0x2000
IP_OFFSET_MASK = 0x1FFF
UDP, TCP = int(IPProto.UDP), int(IPProto.TCP)
# Flags as plain ints: IntFlag arithmetic builds an enum object per operation.
_FRAGMENT, _IPV6, _VLAN, _INNER = int(Flag.FRAGMENT), int(Flag.IPV6), int(Flag.VLAN), int(Flag.INNER)
_IP_TUNNELS = frozenset((4, 41, 47))  # IP-in-IP, IPv6-in-IP, GRE (userspace.tunnel)
# Every kind opened, on the IANA ports: the kernel's default (--decap).
DEFAULT_TUNNELS = Tunnels()

_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_TCP_SEQ = struct.Struct("!I")
_IPV6_FRAG = struct.Struct("!BBHI")


FlowKey = tuple[bytes, int, bytes, int]  # raw source, source port, raw destination, destination port


@dataclass(slots=True)
class Packet:
    """A UDP or TCP packet: raw addresses (4 or 16 bytes), ``payload`` the L4
    payload. Treat it as immutable; not frozen for the per-packet cost (see
    ``userspace.event.Event``)."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    transport: int  # IPProto.UDP or IPProto.TCP
    payload: bytes
    tcp_seq: int = 0
    tcp_flags: int = 0


@dataclass(slots=True)
class Layout:
    """Where a frame's layers start and what classification needs from them,
    as the kernel finds it. ``frag_id`` is the fragment id read in host
    (little-endian) order, as the kernel hashes it."""

    flags: int = 0
    l3: int = 0
    l4: int = 0
    payload: int = 0
    proto: int = 0
    src: bytes = b""
    dst: bytes = b""
    sport: int = 0
    dport: int = 0
    frag_id: int = 0
    frag_off: int = 0  # the fragment's offset field as on the wire (IPv6: with its M bit)
    non_first: bool = False
    encap: Encap | None = None  # the tunnel it came in (flags has INNER), or None


def walk(frame: bytes, tunnels: Tunnels = DEFAULT_TUNNELS, sip_ports: frozenset[int] = frozenset(),
         media: Mapping[tuple[bytes, int, int], object] | None = None,
         counts: TunnelCounts | None = None) -> Layout | None:
    """The layers of a frame, or None where the kernel would pass it by (not IP,
    cut short, or not UDP/TCP); every fragment is kept, as in the kernel. A tunnel
    whose kind is on is opened, one level (bpf/otus.c "Tunnels"): the layout is
    then the inner packet's, flagged INNER, with its ``encap``. A UDP datagram on a
    ``sip_ports`` port or to or from a learned ``media`` endpoint is not a tunnel,
    whatever its port: the kernel's match takes SIP and media first. ``counts``: the
    tunnels opened and refused, counted as the kernel counts them (DECAP_*)."""
    layout = Layout()
    offset = _walk_ethernet(frame, 0, layout)
    if offset < 0:
        return None
    if layout.non_first:
        return layout
    if layout.proto in _IP_TUNNELS:  # the kernel's parse stops here (OTHER_L4)
        if not ip_tunnel(layout.proto, tunnels):
            return None
        if layout.flags & _FRAGMENT:  # a first fragment: opened once its datagram is whole
            layout.l4 = layout.payload = offset
            return layout
        if not _trusted(layout.src, tunnels, counts):
            return None
        encap = open_ip(frame, offset, layout.proto, tunnels, layout.src, layout.dst, counts)
        return _walk_inner(frame, encap, tunnels, counts)
    if _walk_l4(frame, offset, layout) is None:
        return None
    if layout.proto == UDP and not layout.flags & _FRAGMENT:
        kind = udp_tunnel(layout.dport, tunnels)
        if kind is not None and not _ours(layout, sip_ports, media):
            if not _trusted(layout.src, tunnels, counts):
                return None  # the kernel's verdict: no match, before any signature test
            encap = open_udp(frame, layout.payload, kind, layout.src, layout.dst, counts)
            return _walk_inner(frame, encap, tunnels, counts)
    return layout


def _trusted(src: bytes, tunnels: Tunnels, counts: TunnelCounts | None) -> bool:
    """Whether a tunnel from ``src`` is opened (Tunnels.mirrors); if not, counted."""
    if tunnels.trusted(src):  # no mirrors set: any source
        return True
    if counts is not None:
        counts.untrusted += 1
    return False


def _ours(layout: Layout, sip_ports: frozenset[int],
          media: Mapping[tuple[bytes, int, int], object] | None) -> bool:
    """SIP by its ports, or learned media (a non-tunnelled flow's key: protocol alone)."""
    if layout.sport in sip_ports or layout.dport in sip_ports:
        return True
    return media is not None and ((layout.dst, layout.dport, UDP) in media
                                  or (layout.src, layout.sport, UDP) in media)


def _walk_inner(frame: bytes, encap: Encap | None, tunnels: Tunnels,
                counts: TunnelCounts | None) -> Layout | None:
    """The inner packet of an opened tunnel, walked as a frame is; a tunnel in it
    is not opened (one level: counted, as the kernel's DECAP_NESTED)."""
    if encap is None:
        return None
    if encap.inner > INNER_MAX or encap.inner >= len(frame):
        if counts is not None:
            counts.bad += 1
        return None
    layout = Layout(flags=_INNER, encap=encap)
    offset = encap.inner
    if encap.proto == ETH_P_TEB:
        offset = _walk_ethernet(frame, offset, layout)
    else:
        offset = _walk_ip(frame, offset, encap.proto, layout)
    if offset < 0:
        return None
    if layout.non_first:
        return layout
    if _walk_l4(frame, offset, layout) is None:
        if counts is not None and layout.proto in _IP_TUNNELS:
            counts.nested += 1
        return None
    if layout.proto == UDP and not layout.flags & _FRAGMENT and layout.dport in tunnels.ports:
        if counts is not None:
            counts.nested += 1
        return None
    return layout


def _walk_ethernet(frame: bytes, offset: int, layout: Layout) -> int:
    """An Ethernet header at ``offset``, its tags and its IP header: where L4 starts, or -1."""
    if len(frame) < offset + ETH_HEADER_LEN:
        return -1
    ethertype = (frame[offset + 12] << 8) | frame[offset + 13]
    offset += ETH_HEADER_LEN
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in VLAN_TPIDS:
            break
        if len(frame) < offset + VLAN_TAG_LEN:
            return -1
        layout.flags |= _VLAN
        ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
        offset += VLAN_TAG_LEN
    return _walk_ip(frame, offset, ethertype, layout)


def _walk_ip(frame: bytes, offset: int, ethertype: int, layout: Layout) -> int:
    """The IP header (Ethernet type ``ethertype``) at ``offset``: where L4 starts, or -1."""
    layout.l3 = offset
    if ethertype == 0x0800:
        return _walk_ipv4(frame, offset, layout)
    if ethertype == 0x86DD:
        return _walk_ipv6(frame, offset, layout)
    return -1


def _walk_ipv4(frame: bytes, offset: int, layout: Layout) -> int:
    if len(frame) < offset + IPV4_MIN_HEADER_LEN or frame[offset] >> 4 != 4 or frame[offset] & 0x0F < 5:
        return -1
    frag = (frame[offset + 6] << 8) | frame[offset + 7]
    layout.proto = frame[offset + 9]
    layout.src, layout.dst = frame[offset + 12:offset + 16], frame[offset + 16:offset + 20]
    if frag & (IP_MORE_FRAGMENTS | IP_OFFSET_MASK):
        layout.flags |= _FRAGMENT
        layout.frag_id = frame[offset + 4] | (frame[offset + 5] << 8)  # raw, as the kernel reads it
        layout.frag_off = frag
        layout.non_first = bool(frag & IP_OFFSET_MASK)
    return offset + (frame[offset] & 0x0F) * 4


def _walk_ipv6(frame: bytes, offset: int, layout: Layout) -> int:
    if len(frame) < offset + IPV6_HEADER_LEN or frame[offset] >> 4 != 6:
        return -1
    layout.flags |= _IPV6
    layout.src, layout.dst = frame[offset + 8:offset + 24], frame[offset + 24:offset + 40]
    next_header, offset = frame[offset + 6], offset + IPV6_HEADER_LEN
    for _ in range(MAX_IPV6_EXTENSIONS):
        if next_header == IPV6_FRAGMENT:
            if len(frame) < offset + 8:
                return -1
            layout.flags |= _FRAGMENT
            layout.frag_id = int.from_bytes(frame[offset + 4:offset + 8], "little")
            layout.frag_off = (frame[offset + 2] << 8) | frame[offset + 3]
            layout.non_first = bool(layout.frag_off & 0xFFF8)
            next_header, offset = frame[offset], offset + 8
        elif next_header in IPV6_EXTENSIONS:
            if len(frame) < offset + 2:
                return -1
            units = frame[offset + 1]
            next_header, offset = frame[offset], offset + _extension_length(next_header, units)
        else:
            break
        if layout.non_first:
            break
    layout.proto = next_header
    return offset


def _extension_length(next_header: int, units: int) -> int:
    """RFC 4302 counts AH in 4-byte units less two; the others in 8-byte units less one."""
    return (units + 2) * 4 if next_header == IPV6_AH else (units + 1) * 8


def encapsulation(frame: bytes, tunnels: Tunnels = DEFAULT_TUNNELS) -> Encap | None:
    """The tunnel of a frame the kernel flagged INNER, its outer headers walked again
    (rare: only tunnelled records need it)."""
    layout = walk(frame, tunnels)
    return None if layout is None else layout.encap


def _walk_l4(frame: bytes, offset: int, layout: Layout) -> Layout | None:
    layout.l4 = offset
    proto = layout.proto
    if proto == UDP and len(frame) >= offset + UDP_HEADER_LEN:
        layout.sport, layout.dport = _PORTS.unpack_from(frame, offset)
        layout.payload = offset + UDP_HEADER_LEN
        return layout
    if proto == TCP and len(frame) >= offset + TCP_MIN_HEADER_LEN and frame[offset + 12] >> 4 >= 5:
        layout.sport, layout.dport = _PORTS.unpack_from(frame, offset)
        layout.payload = offset + (frame[offset + 12] >> 4) * 4
        return layout
    return None


def packet_at(frame: bytes, l3: int, l4: int, flags: int, proto: int) -> Packet | Fragment:
    """The packet (or IP fragment) whose network header starts at ``l3`` and, unless
    it is a fragment, whose transport header starts at ``l4``: the offsets the
    kernel sent, or ``walk``'s."""
    if flags & _IPV6:
        if len(frame) < l3 + IPV6_HEADER_LEN:
            raise Truncated("ipv6", l3, "header cut short")
        if frame[l3] >> 4 != 6:
            raise Malformed("ipv6", l3, "version is not 6")
        end = min(len(frame), l3 + IPV6_HEADER_LEN + ((frame[l3 + 4] << 8) | frame[l3 + 5]))
        src, dst = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
        if flags & _FRAGMENT:
            return _ipv6_fragment(frame, l3 + IPV6_HEADER_LEN, end, frame[l3 + 6], src, dst)
        header_end = l3 + IPV6_HEADER_LEN
    else:
        if len(frame) < l3 + IPV4_MIN_HEADER_LEN:
            raise Truncated("ipv4", l3, "header cut short")
        ver_ihl = frame[l3]
        header_len = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != 4 or header_len < IPV4_MIN_HEADER_LEN:
            raise Malformed("ipv4", l3, f"version/ihl byte 0x{ver_ihl:02x}")
        total_len = (frame[l3 + 2] << 8) | frame[l3 + 3]
        end = min(len(frame), l3 + total_len)  # Ethernet may pad short frames
        if end < l3 + header_len:
            raise Truncated("ipv4", l3, f"total length {total_len} < header {header_len}")
        src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
        frag = (frame[l3 + 6] << 8) | frame[l3 + 7]
        if frag & (IP_MORE_FRAGMENTS | IP_OFFSET_MASK):
            return Fragment(4, src, dst, frame[l3 + 9], (frame[l3 + 4] << 8) | frame[l3 + 5],
                            (frag & IP_OFFSET_MASK) * 8, bool(frag & IP_MORE_FRAGMENTS),
                            frame[l3 + header_len:end])
        header_end = l3 + header_len
    if l4 < header_end:  # the kernel never sends this: a damaged record, not read in the IP header
        raise Malformed("ip", l4, f"transport offset {l4} inside the network header")
    return _l4(frame, l4, end, proto, src, dst)


def _skip_extensions(buf: bytes, offset: int, end: int, next_header: int) -> tuple[int, int]:
    """(next header, its offset) past the extension headers (not a fragment header) at ``offset``."""
    for _ in range(MAX_IPV6_EXTENSIONS):
        if next_header == IPV6_FRAGMENT or next_header not in IPV6_EXTENSIONS:
            return next_header, offset
        if end < offset + 2:
            raise Truncated("ipv6-extension", offset, "header cut short")
        next_header, offset = buf[offset], offset + _extension_length(next_header, buf[offset + 1])
    raise Malformed("ipv6", offset, f"more than {MAX_IPV6_EXTENSIONS} extension headers")


def _ipv6_fragment(frame: bytes, offset: int, end: int, next_header: int, src: bytes,
                   dst: bytes) -> Fragment:
    """The fragment header after the extension headers before it (rare: walked again)."""
    next_header, offset = _skip_extensions(frame, offset, end, next_header)
    if next_header != IPV6_FRAGMENT:
        raise Malformed("ipv6", offset, "no fragment header where the capture saw one")
    if end < offset + 8:
        raise Truncated("ipv6-fragment", offset, "header cut short")
    following, _reserved, frag_field, ident = _IPV6_FRAG.unpack_from(frame, offset)
    return Fragment(6, src, dst, following, ident, frag_field & 0xFFF8, bool(frag_field & 1),
                    frame[offset + 8:end])


def decode_datagram(datagram: Datagram) -> Packet:
    """A reassembled datagram's fragmentable part down to UDP/TCP."""
    payload, protocol, offset = datagram.payload, datagram.protocol, 0
    if datagram.version == 6:
        protocol, offset = _skip_extensions(payload, 0, len(payload), protocol)
        if protocol == IPV6_FRAGMENT:
            raise Malformed("ipv6", offset, "fragment header inside a reassembled datagram")
    return _l4(payload, offset, len(payload), protocol, datagram.src, datagram.dst)


def tunnel_frame(datagram: Datagram, tunnels: Tunnels, sip_ports: frozenset[int], l2: bytes) -> bytes | None:
    """A reassembled datagram that is a tunnel whose kind is on, as a frame of its own
    for ``walk`` to open: ``l2`` (its last fragment's Ethernet header and tags), an
    unfragmented IP header with the datagram's addresses, and its payload. None for
    any other datagram; a UDP one from or to ``sip_ports`` is SIP, whatever its other
    port (as the kernel's match() decides). The kernel sends a tunnel carried in
    fragments up unopened (an underlay that fragments)."""
    payload, protocol = datagram.payload, datagram.protocol
    first, at = protocol, 0
    if datagram.version == 6:
        try:
            first, at = _skip_extensions(payload, 0, len(payload), protocol)
        except DecodeError:
            return None
    if first == UDP:
        if len(payload) < at + UDP_HEADER_LEN:
            return None
        sport, dport = _PORTS.unpack_from(payload, at)
        if sport in sip_ports or dport in sip_ports or udp_tunnel(dport, tunnels) is None:
            return None
    elif first not in _IP_TUNNELS or not ip_tunnel(first, tunnels):
        return None
    if datagram.version == 4:
        length = min(IPV4_MIN_HEADER_LEN + len(payload), 0xFFFF)
        header = _IPV4_HEADER.pack(0x45, 0, length, 0, 0, 64, protocol, 0, datagram.src, datagram.dst)
        return l2 + header + payload
    header = _IPV6_HEADER.pack(6 << 28, min(len(payload), 0xFFFF), protocol, 64, datagram.src, datagram.dst)
    return l2 + header + payload


_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")


def _l4(buf: bytes, offset: int, end: int, proto: int, src: bytes, dst: bytes) -> Packet:
    if proto == UDP:
        if end < offset + UDP_HEADER_LEN:
            raise Truncated("udp", offset, "header cut short")
        sport, dport = _PORTS.unpack_from(buf, offset)
        return Packet(src, dst, sport, dport, UDP, buf[offset + UDP_HEADER_LEN:end])
    if proto == TCP:
        if end < offset + TCP_MIN_HEADER_LEN:
            raise Truncated("tcp", offset, "header cut short")
        header_len = (buf[offset + 12] >> 4) * 4
        if header_len < TCP_MIN_HEADER_LEN or end < offset + header_len:
            raise Malformed("tcp", offset + 12, f"data offset {header_len}")
        sport, dport = _PORTS.unpack_from(buf, offset)
        return Packet(src, dst, sport, dport, TCP, buf[offset + header_len:end],
                      _TCP_SEQ.unpack_from(buf, offset + 4)[0], buf[offset + 13])
    raise Malformed("ip", offset, f"protocol {proto} is not UDP or TCP")


def decode_frame(frame: bytes) -> Packet | Fragment:
    """A whole frame walked and read: for tools and tests, which have no event."""
    layout = walk(frame)
    if layout is None:
        raise Malformed("frame", 0, "not a UDP or TCP packet, nor an IP fragment, the capture would take")
    return packet_at(frame, layout.l3, layout.l4, layout.flags, layout.proto)


def address_text(raw: bytes) -> str:
    """The printed form of a raw IPv4 or IPv6 address, as inet_ntop gives it. Every
    record prints two, and the same hosts recur: a dict lookup is a fifth of inet_ntop.
    Bounded (addresses come off the wire): emptied when full."""
    text = _PRINTED.get(raw)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_PRINTED) >= _PRINTED_MAX:
            _PRINTED.clear()
        _PRINTED[raw] = text
    return text


_PRINTED: dict[bytes, str] = {}
_PRINTED_MAX = 65_536


def vlan_ids(frame: bytes) -> tuple[int, ...]:
    """The 802.1Q/802.1ad VLAN ids in a frame, outer first (12 bits of each tag)."""
    ids: list[int] = []
    offset = 12
    for _ in range(MAX_VLAN_TAGS):
        if len(frame) < offset + 4 or _U16.unpack_from(frame, offset)[0] not in VLAN_TPIDS:
            break
        ids.append(_U16.unpack_from(frame, offset + 2)[0] & 0x0FFF)
        offset += VLAN_TAG_LEN
    return tuple(ids)
