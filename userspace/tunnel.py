"""One level of decapsulation: VXLAN (RFC 7348), Geneve (RFC 8926), GRE
(RFC 2784 with RFC 2890's key and sequence), ERSPAN type II and III inside
GRE, and IPv4/IPv6 inside IPv4/IPv6. The Python mirror of bpf/otus.c's
"Tunnels" section, with its limits and its refusals: a tunnel the kernel
refuses (a header cut short, VXLAN without its I flag, GRE with routing or a
version, an ERSPAN or Geneve version it does not know) is refused here, and
a tunnel inside a tunnel is not opened.

``open_tunnel`` reads the tunnel header where the outer parse stopped and
says where the inner packet starts, the tunnel's kind and id, and the outer
addresses; userspace.frame.walk parses the inner packet from there. Live,
the kernel sends only the inner offsets (flag INNER) and ``encapsulation``
(userspace.frame) walks the outer headers again, for the rare tunnelled
record.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, IntEnum

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_P_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame inside
ETH_P_ERSPAN2 = 0x88BE
ETH_P_ERSPAN3 = 0x22EB
GRE, IPIP, IPV6_IN_IP = 47, 4, 41  # IP protocol numbers of the IP tunnels
GRE_C, GRE_R, GRE_K, GRE_S, GRE_VERSION = 0x8000, 0x4000, 0x2000, 0x1000, 0x0007
VXLAN_I = 0x08
VXLAN_PORT = 4789  # IANA, RFC 7348 §5
GENEVE_PORT = 6081  # IANA, RFC 8926 §3.3
# The inner packet starts within this many bytes of the frame (OTUS_INNER_MAX):
# past it the kernel refuses the tunnel, and so does this.
INNER_MAX = 1024


class TunnelKind(Enum):
    """The kinds ``--decap`` names."""

    VXLAN = "vxlan"
    GENEVE = "geneve"
    GRE = "gre"
    ERSPAN = "erspan"
    IPIP = "ipip"


ALL_KINDS = frozenset(TunnelKind)


class TunnelCode(IntEnum):
    """A tunnel kind as the kernel's flow key holds it (OTUS_TUNNEL_*): media announced
    inside a tunnel is matched inside that kind of tunnel only."""

    VXLAN = 1
    GENEVE = 2
    GRE = 3
    ERSPAN = 4
    IPIP = 5


# The flow key's family byte holds the code above the family (OTUS_FLOW_TUNNEL_SHIFT).
FLOW_TUNNEL_SHIFT = 4
# The Python media key's protocol holds it above the 8-bit protocol number (userspace.classify).
MEDIA_TUNNEL_SHIFT = 8
CODES = {kind: TunnelCode[kind.name] for kind in TunnelKind}


def media_protocol(proto: int, tunnel: int) -> int:
    """The protocol part of a learned endpoint's key (userspace.classify.MediaKey): the
    L4 protocol, and above it the TunnelCode it was announced in (0: none)."""
    return proto | tunnel << MEDIA_TUNNEL_SHIFT


# One prefix length of the trusted mirrors: (address size, prefix length, the prefixes'
# leading bits as integers). A /0 keeps the empty prefix, 0, which every address has.
MirrorPrefixes = tuple[int, int, frozenset[int]]


@dataclass(frozen=True, slots=True)
class Tunnels:
    """What is opened: the kinds on, and the UDP ports of VXLAN and Geneve."""

    kinds: frozenset[TunnelKind] = ALL_KINDS
    vxlan_ports: frozenset[int] = frozenset((VXLAN_PORT,))
    geneve_ports: frozenset[int] = frozenset((GENEVE_PORT,))
    # The sources tunnels are opened from, by prefix length (mirror_ranges); empty: any
    # source. As the kernel's mirrors_v4 / mirrors_v6 tries.
    mirrors: tuple[MirrorPrefixes, ...] = ()

    @property
    def ports(self) -> frozenset[int]:
        """Every tunnel port: inside a tunnel, any of them is a tunnel not opened."""
        return self.vxlan_ports | self.geneve_ports

    def trusted(self, src: bytes) -> bool:
        """Whether a tunnel from this outer source (raw address) is opened: one set
        lookup per prefix length in use, whatever the number of mirrors."""
        if not self.mirrors:
            return True
        size, address = len(src), int.from_bytes(src, "big")
        bits = 8 * size
        return any(s == size and address >> (bits - length) in prefixes
                   for s, length, prefixes in self.mirrors)


def mirror_ranges(networks: Iterable[object]) -> tuple[MirrorPrefixes, ...]:
    """Networks (ipaddress ones, or what ipaddress.ip_network takes) as Tunnels.mirrors,
    grouped by address size and prefix length, longest first."""
    by_length: dict[tuple[int, int], set[int]] = {}
    for given in networks:
        network = ipaddress.ip_network(str(given), strict=False)
        size, length = len(network.network_address.packed), network.prefixlen
        by_length.setdefault((size, length), set()).add(
            int(network.network_address) >> (8 * size - length))
    return tuple((size, length, frozenset(prefixes))
                 for (size, length), prefixes in sorted(by_length.items(), key=lambda item: -item[0][1]))


@dataclass(frozen=True, slots=True)
class Encap:
    """A tunnel a packet came in: its kind, its id (VXLAN or Geneve VNI, GRE key,
    ERSPAN session id; None without one), the outer raw addresses, and where the
    inner packet starts and what it starts with (an Ethernet type; ETH_P_TEB: an
    Ethernet header)."""

    kind: TunnelKind
    id: int | None
    src: bytes
    dst: bytes
    inner: int = field(default=0, compare=False)
    proto: int = field(default=0, compare=False)

    @property
    def code(self) -> int:
        """The kind as flow keys carry it (TunnelCode)."""
        return int(CODES[self.kind])

    @property
    def tag(self) -> bytes:
        """The tunnel as a key part (IP reassembly): kind, id and outer addresses."""
        return f"{self.kind.value}:{self.id}:".encode() + self.src + self.dst


def udp_tunnel(dport: int, tunnels: Tunnels) -> TunnelKind | None:
    """The kind a UDP destination port opens, Geneve first (as the kernel's bits)."""
    if dport in tunnels.geneve_ports and TunnelKind.GENEVE in tunnels.kinds:
        return TunnelKind.GENEVE
    if dport in tunnels.vxlan_ports and TunnelKind.VXLAN in tunnels.kinds:
        return TunnelKind.VXLAN
    return None


def ip_tunnel(proto: int, tunnels: Tunnels) -> bool:
    """Whether an IP protocol is a tunnel whose kind is on (GRE carries GRE's and ERSPAN's)."""
    if proto == GRE:
        return TunnelKind.GRE in tunnels.kinds or TunnelKind.ERSPAN in tunnels.kinds
    return proto in (IPIP, IPV6_IN_IP) and TunnelKind.IPIP in tunnels.kinds


@dataclass(slots=True)
class TunnelCounts:
    """Tunnels the Python walk opened, by kind, and refused: the kernel's DECAP_* counters
    for the captures that classify in user space (AF_PACKET, replay)."""

    opened: dict[str, int] = field(default_factory=lambda: dict.fromkeys((k.value for k in TunnelKind), 0))
    bad: int = 0     # a tunnel header that cannot be followed (DECAP_BAD)
    nested: int = 0  # a tunnel inside a tunnel, not opened (DECAP_NESTED)
    untrusted: int = 0  # a tunnel from a source outside the mirrors, not opened (DECAP_UNTRUSTED)

    def counters(self) -> dict[str, int]:
        """As the kernel's counters are named (decap_vxlan .. decap_ipip, decap_bad, ...)."""
        return {**{f"decap_{kind}": n for kind, n in self.opened.items()}, "decap_bad": self.bad,
                "decap_nested": self.nested, "decap_untrusted": self.untrusted}


def open_udp(frame: bytes, start: int, kind: TunnelKind, src: bytes, dst: bytes,
             counts: TunnelCounts | None = None) -> Encap | None:
    """VXLAN or Geneve whose header starts at ``start`` (the outer UDP payload);
    None for a header refused (counted in ``counts``, as the kernel counts it)."""
    encap = _open_udp(frame, start, kind, src, dst)
    if counts is not None:
        if encap is None:
            counts.bad += 1
        else:
            counts.opened[kind.value] += 1
    return encap


def _open_udp(frame: bytes, start: int, kind: TunnelKind, src: bytes, dst: bytes) -> Encap | None:
    if len(frame) < start + 8:
        return None
    vni = int.from_bytes(frame[start + 4:start + 7], "big")
    if kind is TunnelKind.GENEVE:
        if frame[start] >> 6:  # RFC 8926 §3.4: version 0
            return None
        proto = (frame[start + 2] << 8) | frame[start + 3]
        return Encap(kind, vni, src, dst, start + 8 + (frame[start] & 0x3F) * 4, proto)
    if not frame[start] & VXLAN_I:
        return None
    return Encap(kind, vni, src, dst, start + 8, ETH_P_TEB)


def open_ip(frame: bytes, start: int, proto: int, tunnels: Tunnels, src: bytes, dst: bytes,
            counts: TunnelCounts | None = None) -> Encap | None:
    """GRE, ERSPAN or IP-in-IP whose header (or inner packet) starts at ``start``; None for
    a kind that is off, or a header refused (counted in ``counts``, as the kernel counts it)."""
    encap = _open_ip(frame, start, proto, tunnels, src, dst)
    if encap is _KIND_OFF:
        return None
    if counts is not None:
        if encap is None:
            counts.bad += 1
        else:
            counts.opened[encap.kind.value] += 1
    return encap


def _open_ip(frame: bytes, start: int, proto: int, tunnels: Tunnels, src: bytes, dst: bytes) -> Encap | None:
    """open_ip's work; _KIND_OFF for GRE carrying a kind that is off."""
    if proto == IPIP:
        return Encap(TunnelKind.IPIP, None, src, dst, start, ETH_P_IP)
    if proto == IPV6_IN_IP:
        return Encap(TunnelKind.IPIP, None, src, dst, start, ETH_P_IPV6)
    if len(frame) < start + 4:
        return None
    flags, ethertype = (frame[start] << 8) | frame[start + 1], (frame[start + 2] << 8) | frame[start + 3]
    if flags & (GRE_R | GRE_VERSION):
        return None
    key_at = start + 4 + (4 if flags & GRE_C else 0)
    end = key_at + (4 if flags & GRE_K else 0) + (4 if flags & GRE_S else 0)
    if ethertype in (ETH_P_ERSPAN2, ETH_P_ERSPAN3):
        if TunnelKind.ERSPAN not in tunnels.kinds:
            return _KIND_OFF
        return _open_erspan(frame, end, ethertype, src, dst)
    if TunnelKind.GRE not in tunnels.kinds:
        return _KIND_OFF
    key = None
    if flags & GRE_K and len(frame) >= key_at + 4:
        key = int.from_bytes(frame[key_at:key_at + 4], "big")
    return Encap(TunnelKind.GRE, key, src, dst, end, ethertype)


# A GRE packet whose kind (GRE's own, or ERSPAN's) is off: not a tunnel, not refused.
_KIND_OFF = Encap(TunnelKind.GRE, None, b"", b"")


def _open_erspan(frame: bytes, start: int, ethertype: int, src: bytes, dst: bytes) -> Encap | None:
    """ERSPAN II (8 bytes, version 1) or III (12, version 2; 8 more with its O bit, frame type 0)."""
    if len(frame) < start + 12:  # the kernel reads 12 bytes for either type
        return None
    version, session = frame[start] >> 4, ((frame[start + 2] << 8) | frame[start + 3]) & 0x3FF
    if ethertype == ETH_P_ERSPAN2:
        if version != 1:
            return None
        return Encap(TunnelKind.ERSPAN, session, src, dst, start + 8, ETH_P_TEB)
    # bytes 10-11: P(1) frame type(5) hardware id(6) D(1) Gra(2) O(1)
    if version != 2 or (frame[start + 10] >> 2) & 0x1F:
        return None
    return Encap(TunnelKind.ERSPAN, session, src, dst, start + 12 + (frame[start + 11] & 1) * 8, ETH_P_TEB)
