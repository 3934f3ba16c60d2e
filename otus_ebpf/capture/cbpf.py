"""Classic BPF for the AF_PACKET fallback, compiled by libpcap from the same
settings the eBPF programs use (SIP ports, signature, fragments, networks).

libpcap is already on the machine (tcpdump depends on it); its compiler
knows every offset trick, so we write the expression, not the bytecode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.settings import KernelSettings
from userspace.tunnel import GRE, IPIP, IPV6_IN_IP, TunnelKind, Tunnels

DLT_EN10MB = 1
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# The first four payload bytes of a SIP status line or request (RFC 3261 §7),
# for --signature: big-endian words as the filter loads them.
SIGNATURE_WORDS = tuple(int.from_bytes(w.encode(), "big") for w in (
    "SIP/", "INVI", "ACK ", "BYE ", "CANC", "OPTI", "REGI", "PRAC", "SUBS", "NOTI", "PUBL", "INFO",
    "REFE", "MESS", "UPDA",
))


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(SockFilter))]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def filter_expression(settings: KernelSettings, media_ranges: Iterable[tuple[int, int]] = ()) -> str:
    """The socket filter for these settings. ``media_ranges`` cover the ports of
    learned RTP/RTCP endpoints (MediaPorts); matching on port ranges keeps the
    program short, and user space checks the exact endpoint (userspace.classify)."""
    ports = " or ".join(f"port {p}" for p in settings.capture_ports)
    alternatives = [f"((udp or tcp) and ({ports}))",
                    "(ip and ip[6:2] & 0x3fff != 0)",  # IPv4 fragment: MF set or offset > 0
                    "(ip6 and ip6[6] == 44)"]           # IPv6 fragment header first
    ranges = list(media_ranges)
    if ranges:
        alternatives.append("(udp and (" + " or ".join(f"port {a}" if a == b else f"portrange {a}-{b}"
                                                      for a, b in ranges) + "))")
    if settings.signature:
        words = " or ".join(f"udp[8:4] == 0x{w:08x}" for w in SIGNATURE_WORDS)
        alternatives.append(f"(udp and ({words}))")
    expression = "(" + " or ".join(alternatives) + ")"
    if settings.include:
        expression += " and (" + " or ".join(f"net {n}" for n in settings.include) + ")"
    if settings.exclude:
        expression += " and not (" + " or ".join(f"net {n}" for n in settings.exclude) + ")"
    tunnels = tunnel_alternatives(settings.tunnels)
    if tunnels:  # the address filters are for the inner packet: user space judges it (classify.Networks)
        expression = "(" + " or ".join([expression, *tunnels]) + ")"
    # Tags still in the frame (no rx VLAN offload) shift every offset.
    return f"({expression}) or (vlan and ({expression})) or (vlan and vlan and ({expression}))"


def tunnel_alternatives(tunnels: Tunnels) -> list[str]:
    """What lets the tunnels whose kind is on through (userspace.tunnel opens them)."""
    found = []
    ports = sorted((tunnels.vxlan_ports if TunnelKind.VXLAN in tunnels.kinds else frozenset())
                   | (tunnels.geneve_ports if TunnelKind.GENEVE in tunnels.kinds else frozenset()))
    if ports:
        found.append("(udp and (" + " or ".join(f"dst port {p}" for p in ports) + "))")
    protos = ([GRE] if tunnels.kinds & {TunnelKind.GRE, TunnelKind.ERSPAN} else []) \
        + ([IPIP, IPV6_IN_IP] if TunnelKind.IPIP in tunnels.kinds else [])
    # ip6 proto reads the first next header only: an IPv6 fragment of one names it after its own
    found += [f"(ip proto {p} or ip6 proto {p} or (ip6 and ip6[6] == 44 and ip6[40] == {p}))" for p in protos]
    return found


# Learned media ports go into the socket filter as at most this many ranges, so
# the program's size does not grow with the calls: a port per call passed the
# classic BPF limit at ~100 calls (SO_ATTACH_FILTER: EINVAL), and libpcap's
# optimiser on a few hundred took minutes and gigabytes. The ranges pass a
# little more UDP than the endpoints learned; user space checks the exact
# endpoint (userspace.classify) and drops the rest.
MAX_MEDIA_RANGES = 32


def port_ranges(ports: Iterable[int], most: int = MAX_MEDIA_RANGES) -> list[tuple[int, int]]:
    """The ports as at most ``most`` inclusive ranges covering all of them, the
    widest gaps between them left out."""
    ordered = sorted(set(ports))
    if not ordered:
        return []
    gaps = sorted(range(1, len(ordered)), key=lambda i: ordered[i] - ordered[i - 1], reverse=True)
    cuts = sorted(gaps[:most - 1])
    ranges, start = [], 0
    for cut in cuts:
        ranges.append((ordered[start], ordered[cut - 1]))
        start = cut
    ranges.append((ordered[start], ordered[-1]))
    return ranges


class MediaPorts:
    """The ports of the learned media endpoints, and at most MAX_MEDIA_RANGES
    ranges covering them for the socket filter. A new port outside the ranges
    widens the nearest one (O(ranges)); the ranges are worked out tight again
    only when the number of ports has doubled or halved since they last were,
    so that sorting every port is paid once per that many changes."""

    def __init__(self, most: int = MAX_MEDIA_RANGES) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._most = most
        self._users: dict[int, int] = {}  # port -> learned endpoints on it
        self._new: set[int] = set()       # ports learned since the last update
        self._tight_at = 0                # ports when the ranges were last made tight

    def learn(self, port: int) -> None:
        users = self._users.get(port, 0)
        self._users[port] = users + 1
        if not users:
            self._new.add(port)

    def forget(self, port: int) -> None:
        users = self._users.get(port, 0) - 1
        if users > 0:
            self._users[port] = users
        else:
            self._users.pop(port, None)

    def update(self) -> bool:
        """Bring the ranges up to the ports; True when they changed."""
        new, self._new = self._new, set()
        count = len(self._users)
        if count == 0:
            changed, self.ranges, self._tight_at = bool(self.ranges), [], 0
            return changed
        if count > 2 * self._tight_at or 2 * count <= self._tight_at:
            tight = port_ranges(self._users, self._most)
            changed, self.ranges, self._tight_at = tight != self.ranges, tight, count
            return changed
        changed = False
        for port in new:
            if port in self._users and not any(low <= port <= high for low, high in self.ranges):
                self._widen(port)
                changed = True
        return changed

    def _widen(self, port: int) -> None:
        if len(self.ranges) < self._most:
            self.ranges = sorted([*self.ranges, (port, port)])
            return
        def distance(i: int) -> int:
            low, high = self.ranges[i]
            return max(low - port, port - high)

        nearest = min(range(len(self.ranges)), key=distance)
        low, high = self.ranges[nearest]
        self.ranges[nearest] = (min(low, port), max(high, port))


def compile_filter(expression: str, snaplen: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions for SO_ATTACH_FILTER."""
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise SetupError("libpcap is missing (install tcpdump, which brings it)")
    pcap = ctypes.CDLL(name)
    pcap.pcap_open_dead.restype = ctypes.c_void_p
    pcap.pcap_geterr.restype = ctypes.c_char_p
    pcap.pcap_geterr.argtypes = [ctypes.c_void_p]
    pcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(BpfProgram), ctypes.c_char_p,
                                  ctypes.c_int, ctypes.c_uint32]
    handle = pcap.pcap_open_dead(DLT_EN10MB, snaplen)
    program = BpfProgram()
    try:
        if pcap.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, PCAP_NETMASK_UNKNOWN):
            raise SetupError(f"cannot compile capture filter: {pcap.pcap_geterr(handle).decode()}")
        insns = [(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[: program.bf_len]]
        pcap.pcap_freecode(ctypes.byref(program))
        return insns
    finally:
        pcap.pcap_close(ctypes.c_void_p(handle))


Instructions = list[tuple[int, int, int, int]]


def socket_filter(instructions: Instructions) -> tuple[SockFprog, ctypes.Array[SockFilter]]:
    """A sock_fprog for setsockopt; keep the array alive while it is used."""
    array = (SockFilter * len(instructions))(*[SockFilter(*i) for i in instructions])
    return SockFprog(len(instructions), ctypes.cast(array, ctypes.POINTER(SockFilter))), array
