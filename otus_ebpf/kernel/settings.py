"""What the kernel programs are asked to do, and the limits of their maps:
the settings loader.py loads them with and maps.py writes into them."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from enum import Enum

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel import abi
from otus_ebpf.kernel.abi import Network
from userspace.calls import CallLimits
from userspace.classify import Networks, Rules
from userspace.droplist import token_problem
from userspace.tunnel import ALL_KINDS, GENEVE_PORT, VXLAN_PORT, TunnelKind, Tunnels, mirror_ranges

DEFAULT_SIP_PORTS = (5060, 5061)
DEFAULT_SNAPLEN = 2048
# Bounds: the sample lives in a per-CPU map value (32 KiB limit) and a frame
# above a jumbo MTU cannot arrive in one piece anyway.
MIN_SNAPLEN, MAX_SNAPLEN = 64, 9216
# RTP needs its 12-byte header (plus CSRCs and an extension, RFC 3550 §5.1);
# RTCP reports fit in a few hundred bytes.
DEFAULT_MEDIA_SNAPLEN = 64
# A ring's memory per shard, MiB: at 20,000 SIP messages/s of ~700 bytes, about
# five seconds of a burst the parser is not keeping up with (docs/CONFIG.md).
DEFAULT_RING_MB = 64
MAX_SHARDS = abi.MAX_SHARDS  # worker processes, each with its ring (OTUS_MAX_SHARDS)
# The method drop list: the kernel's drop_methods map holds this many tokens of at most
# this many bytes (OTUS_MAX_DROP_METHODS, OTUS_DROP_TOKEN_LEN); userspace.droplist checks them.
MAX_DROP_METHODS = abi.MAX_DROP_METHODS
# Duplicate suppression's window: long enough for copies of one packet taken a few hops
# apart, well under SIP's T1 (500 ms, RFC 3261 §17.1.1.1) so that retransmissions stay.
DEFAULT_DEDUP_WINDOW_MS = 50
MAX_DEDUP_WINDOW_MS = 10_000
PAGE_SIZE = resource.getpagesize()
# Networks the kernel's LPM tries hold per address family (bpf/otus.c): include and
# exclude each, and the trusted mirrors.
MAX_NETWORKS = 4096
MAX_MIRRORS = 1024


# SIP over TLS: RFC 3261 §19.1.2's port for sips. WebRTC edges (wss) add theirs.
DEFAULT_TLS_PORTS = (5061,)
MAX_COMM = 15  # a process name as the kernel keeps it: 16 bytes with its NUL (TASK_COMM_LEN)
MAX_COMMS = 64  # process names the kernel's tls_comms map holds (bpf/otus_tls.c)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """SIP over TLS read as plaintext at local processes' TLS library (bpf/otus_tls.c)."""

    library: str | None = None  # None: the system's libssl.so.3
    pids: tuple[int, ...] = ()  # probed processes; none: every process using the library
    comms: tuple[str, ...] = ()  # process names whose plaintext goes up; none: every one
    ports: tuple[int, ...] = DEFAULT_TLS_PORTS

    def validate(self) -> None:
        if (names := len(set(self.comms))) > MAX_COMMS:
            raise SetupError(f"{names} TLS process names: the kernel holds at most {MAX_COMMS}")
        long = [c for c in self.comms if len(c.encode()) > MAX_COMM]
        if long:
            raise SetupError(f"TLS process names longer than the kernel keeps ({MAX_COMM} bytes): {long}")
        if not self.ports or any(not 0 < p < 65536 for p in self.ports):
            raise SetupError(f"TLS ports must be 1..65535, got {list(self.ports)}")


class MediaMode(Enum):
    STATS = "stats"      # the kernel keeps each RTP stream's statistics; RTP is not copied up
    PACKETS = "packets"  # every RTP packet goes up (media in pcap outputs)
    OFF = "off"          # no media is learned or measured


@dataclass(frozen=True, slots=True)
class KernelSettings:
    sip_ports: tuple[int, ...] = DEFAULT_SIP_PORTS
    # TCP ports SIP over WebSocket (RFC 7118) is carried on: copied up as SIP ports are,
    # and their streams framed as WebSocket (userspace.websocket). RFC 7118 names no port.
    ws_ports: tuple[int, ...] = ()
    signature: bool = False
    drop_methods: tuple[str, ...] = ()  # request methods and status codes not copied up
    dedup: bool = False
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS
    include: tuple[Network, ...] = ()
    exclude: tuple[Network, ...] = ()
    snaplen: int = DEFAULT_SNAPLEN
    media_snaplen: int = DEFAULT_MEDIA_SNAPLEN
    ring_mb: int = DEFAULT_RING_MB  # per shard, a power of two
    shards: int = 1
    # SIP routed by Call-ID (docs/SHARDING.md): set for worker processes, the only
    # readers that use it; the scan costs 250-380 ns a SIP datagram in the kernel.
    route_by_call_id: bool = False
    # Learned media endpoints the kernel holds: derived from the call limit
    # (AttachOptions.capture), never set on its own.
    max_flows: int = CallLimits().flow_map_entries
    max_streams: int = CallLimits().stream_table_entries  # likewise: RTP streams the kernel measures
    # None: STATS, unless a pcap output wants the media (AttachOptions.capture decides)
    media: MediaMode | None = None
    extra_cflags: tuple[str, ...] = field(default=())
    # Tunnels opened, one level (bpf/otus.c "Tunnels"), and VXLAN's UDP ports
    decap: frozenset[TunnelKind] = ALL_KINDS
    vxlan_ports: tuple[int, ...] = (VXLAN_PORT,)
    mirrors: tuple[Network, ...] = ()  # the sources tunnels are opened from; none: any
    tls: TlsSettings | None = None  # plaintext of SIP over TLS (bpf/otus_tls.c); None: off

    @property
    def tunnels(self) -> Tunnels:
        """The same choice for user space's own walk (AF_PACKET, replay, records)."""
        return Tunnels(self.decap, frozenset(self.vxlan_ports), frozenset((GENEVE_PORT,)),
                       mirror_ranges(self.mirrors))

    @property
    def capture_ports(self) -> tuple[int, ...]:
        """The ports the kernel's sip_ports map holds: SIP's and WebSocket's."""
        return tuple(dict.fromkeys((*self.sip_ports, *self.ws_ports)))

    def opened_rules(self) -> Rules:
        """What the inner packet of a tunnel user space opens (one the underlay fragmented)
        must match, as the kernel's match() would decide it (Pipeline.opened_rules)."""
        return Rules(frozenset(self.capture_ports), self.signature, tunnels=self.tunnels,
                     networks=Networks.of(self.include, self.exclude, plain=True))

    @property
    def ring_bytes(self) -> int:
        """A shard's ring buffer: a power of two and whole pages, as the kernel wants."""
        return self.ring_mb << 20

    def validate(self) -> None:
        if not MIN_SNAPLEN <= self.snaplen <= MAX_SNAPLEN:
            raise SetupError(f"snaplen {self.snaplen} is outside {MIN_SNAPLEN}..{MAX_SNAPLEN}")
        if not 0 <= self.media_snaplen <= self.snaplen:
            raise SetupError(f"media snaplen {self.media_snaplen} is outside 0..{self.snaplen}")
        if self.ring_mb <= 0 or self.ring_mb & (self.ring_mb - 1):
            raise SetupError(f"a ring of {self.ring_mb} MiB: not a power of two")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise SetupError(f"workers must be 1..{MAX_SHARDS}, got {self.shards}")
        bad = [p for p in self.sip_ports if not 0 < p < 65536]
        if bad or not self.sip_ports:
            raise SetupError(f"SIP ports must be 1..65535, got {list(self.sip_ports)}")
        if any(not 0 < p < 65536 for p in self.ws_ports):
            raise SetupError(f"WebSocket ports must be 1..65535, got {list(self.ws_ports)}")
        # Every stream on a WebSocket port is framed as WebSocket, so a SIP-over-TCP connection
        # joined mid-way there would never be read: a port is one or the other.
        if both := sorted(set(self.ws_ports) & set(self.sip_ports)):
            raise SetupError(f"ports {both} are both SIP and WebSocket ports: give each to one only")
        bad = [p for p in self.vxlan_ports if not 0 < p < 65536]
        if bad:
            raise SetupError(f"VXLAN ports must be 1..65535, got {bad}")
        problem = drop_list_problem(self.drop_methods)
        if problem:
            raise SetupError(f"drop methods: {problem}")
        for name, networks, most in (("include", self.include, MAX_NETWORKS),
                                     ("exclude", self.exclude, MAX_NETWORKS),
                                     ("mirrors", self.mirrors, MAX_MIRRORS)):
            for version in (4, 6):
                if (held := sum(1 for n in networks if n.version == version)) > most:
                    raise SetupError(f"{name}: {held} IPv{version} networks, the kernel holds at most {most}")
        if self.tls is not None:
            self.tls.validate()
        if not 1 <= self.dedup_window_ms <= MAX_DEDUP_WINDOW_MS:
            raise SetupError(f"dedup window {self.dedup_window_ms} ms is outside 1..{MAX_DEDUP_WINDOW_MS}")


def drop_list_problem(tokens: tuple[str, ...]) -> str | None:
    """What is wrong with a drop list as a whole (each token is checked where it is
    parsed, by userspace.droplist.token_problem), or None."""
    for token in tokens:
        problem = token_problem(token)
        if problem:
            return problem
    if len(set(tokens)) > MAX_DROP_METHODS:
        return f"{len(set(tokens))} methods and status codes: the kernel holds at most {MAX_DROP_METHODS}"
    return None
