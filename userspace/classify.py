"""The kernel's classification, in Python, for frames that did not come
through the eBPF programs (AF_PACKET capture, chosen or fallen back to, and replay).

Mirrors ``classify()`` in bpf/otus.c: the same parse (userspace.frame.walk),
the same verdict order (fragments, SIP ports, learned media endpoints, SIP
signature) and the same symmetric hashes, so the event built here is the
event the kernel would have written (tests/kernel/test_parity.py holds them
equal), handed to the pipeline as an object, not as ring bytes. What the
kernel then keeps down — the method drop list and duplicates — a ``Screen``
keeps down, once per frame, after the last classification of it.
Address filters (``Networks``) judge a tunnelled frame's inner addresses here,
as the kernel does; a frame outside any tunnel is left to the caller's socket
filter, unless the caller has none (replay).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from userspace.dedup import Dedup, identity
from userspace.droplist import cseq_method, first_token
from userspace.event import Direction, Event, Flag, Kind
from userspace.frame import DEFAULT_TUNNELS, UDP, Layout, walk
from userspace.sharding import call_id_hash
from userspace.tunnel import TunnelCounts, Tunnels, ip_tunnel, media_protocol

# First bytes of a SIP status line or request (RFC 3261 §7), as the kernel checks them.
SIGNATURES = (b"SIP/2.0 ", b"INVITE ", b"ACK ", b"BYE ", b"CANCEL ", b"OPTIONS ", b"REGISTER",
              b"PRACK ", b"SUBSCRIB", b"NOTIFY ", b"PUBLISH ", b"INFO ", b"REFER ", b"MESSAGE ",
              b"UPDATE ")

# (raw address, port, L4 protocol | the TunnelCode it was announced in << 8): the kernel's flow-map key
MediaKey = tuple[bytes, int, int]


# (first, last) addresses as integers, by address length (4 or 16 bytes)
Ranges = dict[int, tuple[tuple[int, int], ...]]


class Networks:
    """The address filters (--include, --exclude) as the kernel applies them
    (filtered_out in bpf/otus.c): a packet goes when either address is excluded, or
    when an include list of its family is set and neither address is in it. Judged
    here for tunnelled frames only (the inner addresses: the socket filter lets every
    tunnel through), or for every frame with ``plain`` (no socket filter judged them).
    ``filtered`` counts what they kept out (the kernel's FILTERED)."""

    __slots__ = ("exclude", "filtered", "include", "plain")

    def __init__(self, include: Iterable[object], exclude: Iterable[object], plain: bool = False) -> None:
        self.include = _ranges(include)
        self.exclude = _ranges(exclude)
        self.plain = plain
        self.filtered = 0

    @staticmethod
    def of(include: Iterable[object], exclude: Iterable[object], plain: bool = False) -> Networks | None:
        """The filters, or None when there are none."""
        include, exclude = tuple(include), tuple(exclude)
        return Networks(include, exclude, plain) if include or exclude else None

    def out(self, src: bytes, dst: bytes) -> bool:
        """Whether the addresses are filtered out (and counted)."""
        s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        excluded = self.exclude.get(len(src))
        if excluded is not None and (_within(s, excluded) or _within(d, excluded)):
            self.filtered += 1
            return True
        included = self.include.get(len(src))
        if included is not None and not _within(s, included) and not _within(d, included):
            self.filtered += 1
            return True
        return False


def _ranges(networks: Iterable[object]) -> Ranges:
    """ipaddress networks (or what ipaddress.ip_network takes) as integer ranges by address length."""
    found: dict[int, list[tuple[int, int]]] = {}
    for given in networks:
        network = ipaddress.ip_network(str(given))
        first, last = network.network_address, network.broadcast_address
        found.setdefault(len(first.packed), []).append((int(first), int(last)))
    return {size: tuple(sorted(ranges)) for size, ranges in found.items()}


def _within(address: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(first <= address <= last for first, last in ranges)


@dataclass(frozen=True, slots=True)
class Rules:
    sip_ports: frozenset[int]
    signature: bool = False
    shards: int = 1
    media: Mapping[MediaKey, tuple[Kind, int]] = field(default_factory=dict)  # → (kind, shard)
    tunnels: Tunnels = DEFAULT_TUNNELS  # opened one level, as the kernel's --decap
    networks: Networks | None = None  # address filters judged here (Networks), None: none
    counts: TunnelCounts | None = None  # tunnels opened and refused here, as the kernel counts them


_FRAGMENT, _OWNED, _SIGNATURE = int(Flag.FRAGMENT), int(Flag.OWNED), int(Flag.SIGNATURE)
_SIP, _FRAGMENT_KIND = int(Kind.SIP), int(Kind.FRAGMENT)


def mix32(h: int) -> int:
    """murmur3's finaliser, as in bpf/otus.c."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _fold(address: bytes) -> int:
    """XOR of the address's 32-bit words, read in host (little-endian) order as the kernel does."""
    if len(address) == 4:
        return int.from_bytes(address, "little")
    return (int.from_bytes(address[0:4], "little") ^ int.from_bytes(address[4:8], "little")
            ^ int.from_bytes(address[8:12], "little") ^ int.from_bytes(address[12:16], "little"))


def classify_frame(frame: bytes, rules: Rules, direction: int = Direction.INGRESS, ts_ns: int = 0,
                   ifindex: int = 0, orig_len: int | None = None) -> Event | None:
    """The event the kernel would send up for this frame, or None when it would not."""
    p = walk(frame, rules.tunnels, rules.sip_ports, rules.media, rules.counts)
    if p is None:
        return None
    networks = rules.networks
    if networks is not None and (p.encap is not None or networks.plain) \
            and not _ip_tunnel_fragment(p, rules) and networks.out(p.src, p.dst):
        return None
    fold = _fold(p.src) ^ _fold(p.dst)
    shard = mix32(fold) % rules.shards
    kind, flags, flow_hash = _SIP, p.flags, 0
    if flags & _FRAGMENT:
        kind, flow_hash = _FRAGMENT_KIND, mix32(fold ^ p.frag_id ^ (p.proto << 16))
    elif p.sport in rules.sip_ports or p.dport in rules.sip_ports:
        shard, flags, flow_hash = _sip(frame, p, flags, shard, fold, rules.shards)
    else:
        proto = p.proto if p.encap is None else media_protocol(p.proto, p.encap.code)  # its tunnel's only
        media = rules.media.get((p.dst, p.dport, proto)) or rules.media.get((p.src, p.sport, proto))
        if media is not None:  # the owner, the worker that learned it, in flow_hash
            kind, flow_hash = media
            shard, flags = (flow_hash if flow_hash < rules.shards else 0), flags | _OWNED
        elif rules.signature and p.proto == UDP and frame[p.payload:p.payload + 8].startswith(SIGNATURES):
            shard, flags, flow_hash = _sip(frame, p, flags | _SIGNATURE, shard, fold, rules.shards)
        else:
            return None
    return Event(ts_ns, ifindex, len(frame) if orig_len is None else orig_len, len(frame), flow_hash,
                 p.l3, p.l4, p.payload, direction, kind, p.proto, flags, shard, frame)


def _ip_tunnel_fragment(p: Layout, rules: Rules) -> bool:
    """A fragment of an IP tunnel (every fragment names its protocol): the filters judge
    its inner addresses once user space has the datagram whole (Pipeline.opened_rules)."""
    return p.encap is None and bool(p.flags & _FRAGMENT) and ip_tunnel(p.proto, rules.tunnels)


def _sip(frame: bytes, p: Layout, flags: int, shard: int, fold: int, shards: int) -> tuple[int, int, int]:
    """(shard, flags, flow hash) of SIP: a whole UDP datagram goes to the shard of its Call-ID
    (route_by_call_id in the kernel). Only where there is more than one shard to go to: the
    kernel always hashes, for the one-ring dispatcher, but the captures that classify here
    (AF_PACKET, replay) run one pipeline, and the hash costs ~4 µs a message in Python."""
    if p.proto == UDP and shards > 1:
        call_hash = call_id_hash(frame[p.payload:])
        if call_hash is not None:
            return call_hash % shards, flags | _OWNED, call_hash
    return shard, flags, mix32(fold ^ (p.sport ^ p.dport) ^ (p.proto << 16))


class Screen:
    """What the kernel keeps down after a match, for events classified here, in the
    kernel's order (``classify`` and ``copy_up`` in bpf/otus.c): SIP over UDP whose
    method or status code is on the drop list; then a duplicate (dedup on); then a
    response whose CSeq names a dropped method, looked for within the first
    ``snaplen`` bytes of the frame, as the kernel looks in its copy. Counted as the
    kernel counts them (DROPPED_METHOD, DUPLICATE). Call ``admit`` once a frame."""

    def __init__(self, drop_methods: Iterable[str] = (), dedup_window_ns: int | None = None,
                 snaplen: int | None = None) -> None:
        self.methods: frozenset[bytes] = frozenset()
        self.dedup: Dedup | None = None
        self.snaplen = snaplen
        self.dropped_methods = 0
        self.change(drop_methods, dedup_window_ns)

    def change(self, drop_methods: Iterable[str], dedup_window_ns: int | None) -> None:
        """A new drop list and window (None: dedup off); sightings within the window stay."""
        self.methods = frozenset(method.encode("ascii") for method in drop_methods)
        if dedup_window_ns is None:
            self.dedup = None
        elif self.dedup is None:
            self.dedup = Dedup(dedup_window_ns)
        else:
            self.dedup.window_ns = dedup_window_ns

    @property
    def active(self) -> bool:
        return bool(self.methods) or self.dedup is not None

    @property
    def duplicates(self) -> int:
        return 0 if self.dedup is None else self.dedup.duplicates

    def admit(self, event: Event) -> bool:
        """False when the kernel would have kept this event down."""
        frame, start = event.frame, event.payload_offset
        response = False
        if self.methods and event.kind == _SIP and event.l4_proto == UDP:
            found = first_token(frame[start:start + 20])
            if found is not None:
                if found[0] in self.methods:
                    self.dropped_methods += 1
                    return False
                response = found[1]
        if self.dedup is not None:
            key = identity(frame, event.l3_offset, event.l4_offset, start, event.l4_proto, event.flags)
            if key is not None and self.dedup.seen(key, event.ts_ns):
                return False
        if response:
            end = len(frame) if self.snaplen is None else max(start, self.snaplen)  # see dedup.identity
            if cseq_method(frame[start:end]) in self.methods:
                self.dropped_methods += 1
                return False
        return True
