"""Tunnelled frames for tests: VXLAN, Geneve, GRE, ERSPAN II/III, IP-in-IP,
each around an inner frame or packet built with tests.support.frames."""

from __future__ import annotations

import socket
import struct

from tests.support.frames import FRAGMENT, MAC_C, MAC_D, UDP, V6, ethernet, ipv4, ipv6, ipv6_fragment, udp
from tests.support.sip_samples import INVITE

GRE_PROTO, IPIP_PROTO, IPV6_IN_IP_PROTO = 47, 4, 41
TEB, ERSPAN2, ERSPAN3 = 0x6558, 0x88BE, 0x22EB
OUTER_SRC, OUTER_DST = "192.0.2.1", "192.0.2.2"  # the mirror (a switch) and the agent


def inner_sip(payload: bytes = INVITE, vlans: tuple[int, ...] = (), src: str = "10.1.0.1",
              dst: str = "10.1.0.2") -> bytes:
    """The mirrored frame: SIP over UDP between two phones, Ethernet, perhaps tagged."""
    return ethernet(ipv4(udp(payload, 5070, 5060), src=src, dst=dst), vlans=vlans)


def outer(l4: bytes, proto: int = UDP, v6: bool = False) -> bytes:
    """The frame that carries a tunnel, from the mirror to the agent."""
    if v6:
        return ethernet(ipv6(l4, proto=proto, src="2001:db8::1", dst="2001:db8::2"), ethertype=V6,
                        macs=(MAC_D, MAC_C))
    return ethernet(ipv4(l4, proto=proto, src=OUTER_SRC, dst=OUTER_DST), macs=(MAC_D, MAC_C))


def vxlan(inner: bytes, vni: int = 100, flags: int = 0x08, port: int = 4789, v6: bool = False) -> bytes:
    """RFC 7348 §5: flags (I = 0x08), 24 reserved bits, the VNI, 8 reserved bits."""
    header = struct.pack("!B3xI", flags, vni << 8)
    return outer(udp(header + inner, 49152, port), v6=v6)


def geneve(inner: bytes, vni: int = 200, options: bytes = b"", proto: int = TEB, version: int = 0,
           opt_words: int | None = None) -> bytes:
    """RFC 8926 §3.4: version and option length (4-byte words), flags, protocol type, VNI."""
    words = len(options) // 4 if opt_words is None else opt_words
    header = struct.pack("!BBHI", version << 6 | words, 0, proto, vni << 8) + options
    return outer(udp(header + inner, 49152, 6081))


def gre(inner: bytes, proto: int = TEB, key: int | None = None, seq: int | None = None, csum: bool = False,
        extra_flags: int = 0, v6: bool = False) -> bytes:
    """RFC 2784 with RFC 2890's key and sequence number."""
    flags = extra_flags | (0x8000 if csum else 0) | (0x2000 if key is not None else 0) \
        | (0x1000 if seq is not None else 0)
    header = struct.pack("!HH", flags, proto)
    if csum:
        header += b"\0\0\0\0"
    if key is not None:
        header += struct.pack("!I", key)
    if seq is not None:
        header += struct.pack("!I", seq)
    return outer(header + inner, GRE_PROTO, v6=v6)


def erspan2(inner: bytes, session: int = 7, version: int = 1, seq: int = 1) -> bytes:
    """ERSPAN type II: GRE with a sequence number, then ver(4) VLAN(12), COS/En/T and
    the 10-bit session id, reserved and index."""
    header = struct.pack("!HHI", version << 12 | 10, session & 0x3FF, 0)
    return gre(header + inner, ERSPAN2, seq=seq)


def erspan3(inner: bytes, session: int = 9, platform: bool = False, frame_type: int = 0) -> bytes:
    """ERSPAN type III: ver(4)=2 VLAN(12), COS/BSO/T and the session id, a timestamp,
    SGT, then P/FT/HW ID/D/Gra/O; with O, an 8-byte platform subheader."""
    header = struct.pack("!HHIHH", 2 << 12, session & 0x3FF, 12345, 0, frame_type << 10 | int(platform))
    if platform:
        header += bytes(8)
    return gre(header + inner, ERSPAN3, seq=1)


def ipip(inner_packet: bytes, inner_v6: bool = False, v6: bool = False) -> bytes:
    """An IP packet inside IPv4 or IPv6 (protocol 4 for IPv4 inside, 41 for IPv6)."""
    return outer(inner_packet, IPV6_IN_IP_PROTO if inner_v6 else IPIP_PROTO, v6=v6)


def underlay_fragments(frame: bytes, at: int = 96, ident: int = 4242) -> list[bytes]:
    """A tunnel frame (outer IPv4 or IPv6, as ``outer`` builds it) as the underlay's two
    fragments when it does not fit the path: the outer datagram's payload split at
    ``at`` bytes (a multiple of 8)."""
    macs, body = (frame[:6], frame[6:12]), frame[14:]
    if body[0] >> 4 == 4:
        proto, l4 = body[9], body[20:]
        src, dst = (socket.inet_ntoa(body[12:16]), socket.inet_ntoa(body[16:20]))
        return [ethernet(ipv4(l4[:at], proto=proto, src=src, dst=dst, ident=ident, frag=0x2000), macs=macs),
                ethernet(ipv4(l4[at:], proto=proto, src=src, dst=dst, ident=ident, frag=at // 8), macs=macs)]
    proto, l4 = body[6], body[40:]
    src, dst = socket.inet_ntop(socket.AF_INET6, body[8:24]), socket.inet_ntop(socket.AF_INET6, body[24:40])
    return [ethernet(ipv6(ipv6_fragment(proto, 0, True, ident) + l4[:at], proto=FRAGMENT, src=src, dst=dst),
                     ethertype=V6, macs=macs),
            ethernet(ipv6(ipv6_fragment(proto, at, False, ident) + l4[at:], proto=FRAGMENT, src=src, dst=dst),
                     ethertype=V6, macs=macs)]


def from_source(frame: bytes, src: str) -> bytes:
    """A tunnel frame (outer IPv4, checksums zero) sent by another host than the mirror."""
    return frame[:26] + socket.inet_aton(src) + frame[30:]
