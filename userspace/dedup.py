"""Duplicate suppression: the same packet captured twice (a mirror port fed
from both sides of a router, two SPAN sessions, a bond and its member) goes
up once.

A packet's identity is what a copy of it one hop later still has, from the
network header on: no L2 (VLAN tags and MACs differ between copies), no TTL,
hop limit, TOS/traffic class, IPv4 checksum or options.

- IPv4: source, destination, id, fragment field, total length, protocol.
- IPv6: source, destination, flow label, payload length, upper protocol, and a
  fragment header's id and offset field.
- Then, unless the packet is a non-first fragment (which has no L4 header):
  UDP's header, or TCP's ports, sequence and acknowledgement numbers, data
  offset, flags, window and checksum; and the first ``DEDUP_PREFIX`` bytes of
  the L4 payload within the IP length. The L4 checksum stands for the bytes
  past the prefix (a decoy with a genuine packet's first bytes and another
  tail is another packet, unless the receiver would take it for the same).

A copy within ``window_ns`` of the first sighting is a duplicate; the first
sighting is not moved by its copies. ``duplicate()`` in bpf/otus.c keeps the
same identity as a 64-bit digest in a direct-mapped table of ``DEDUP_ENTRIES``
slots, where a later packet can take a slot before its holder's copy arrives
(counted there as DEDUP_DISPLACED; that copy then goes up). Here identities are
kept exactly, so two different packets never meet (in the kernel, about one
chance in 2**64 per pair) and none is displaced before ``DEDUP_ENTRIES`` are
held: where the two differ, the kernel sends up a copy this would drop. Time
arrives with the packet: capture time in replay, the socket's time with
AF_PACKET.
"""

from __future__ import annotations

from collections import deque

from userspace.event import Flag
from userspace.frame import IPV6_AH, IPV6_EXTENSIONS, IPV6_FRAGMENT, MAX_IPV6_EXTENSIONS, UDP

DEDUP_PREFIX = 128      # OTUS_DEDUP_PREFIX: L4 payload bytes in a packet's identity
DEDUP_ENTRIES = 65_536  # OTUS_DEDUP_ENTRIES: the kernel's slots; identities held here at most
_IPV6, _FRAGMENT = int(Flag.IPV6), int(Flag.FRAGMENT)
_UDP_KEPT, _TCP_KEPT = 8, 18  # L4 header bytes, the checksum included


def identity(frame: bytes, l3: int, l4: int, payload: int, proto: int, flags: int) -> bytes | None:
    """The identity of a packet the kernel's parser has walked (the event's offsets;
    ``l4`` 0 for a non-first fragment); None when the frame ends inside the L4 bytes
    it would keep (the first fragment of a tunnel can): never a duplicate, as in the
    kernel's digest_l4."""
    if flags & _IPV6:
        ip_end = l3 + 40 + ((frame[l3 + 4] << 8) | frame[l3 + 5])
        head = (frame[l3 + 8:l3 + 40] + bytes((frame[l3 + 1] & 0x0F, proto, flags & (_IPV6 | _FRAGMENT)))
                + frame[l3 + 2:l3 + 6])
        if flags & _FRAGMENT:
            head += _ipv6_fragment(frame, l3)
    else:
        ip_end = l3 + ((frame[l3 + 2] << 8) | frame[l3 + 3])
        # total length, id, fragment field; the protocol (past the TTL); the addresses
        head = (frame[l3 + 2:l3 + 8] + frame[l3 + 9:l3 + 10] + frame[l3 + 12:l3 + 20]
                + bytes((flags & _FRAGMENT,)))
    if not l4:
        return head
    kept = _UDP_KEPT if proto == UDP else _TCP_KEPT
    if len(frame) < l4 + kept:
        return None
    # Never an end before the start (an IP length shorter than its headers): mypyc's
    # compiled bytes slice raises SystemError there where Python gives b"".
    end = max(payload, min(len(frame), ip_end, payload + DEDUP_PREFIX))
    return head + frame[l4:l4 + kept] + frame[payload:end]


def _ipv6_fragment(frame: bytes, l3: int) -> bytes:
    """The fragment header's offset field and id, found from the event's network offset
    (rare enough to walk the extension headers again). From ``l3``, not from the frame's
    start: walking the frame again would need the tunnels the capture opens (a fragment
    inside VXLAN on a port not the default one read as none, and two datagrams shared
    an identity)."""
    next_header, offset = frame[l3 + 6], l3 + 40
    for _ in range(MAX_IPV6_EXTENSIONS):
        if next_header == IPV6_FRAGMENT:
            # as on the wire: the offset field (big-endian), then the id
            return frame[offset + 2:offset + 8] if len(frame) >= offset + 8 else b""
        if next_header not in IPV6_EXTENSIONS or len(frame) < offset + 2:
            return b""
        units = frame[offset + 1]
        length = (units + 2) * 4 if next_header == IPV6_AH else (units + 1) * 8  # AH: 4-byte units
        next_header, offset = frame[offset], offset + length
    return b""


class Dedup:
    """First sightings within the window, oldest first; at most ``max_entries``
    (past that the oldest go first)."""

    def __init__(self, window_ns: int, max_entries: int = DEDUP_ENTRIES) -> None:
        self.window_ns = window_ns
        self.duplicates = 0
        self._max = max_entries
        self._first: dict[bytes, int] = {}
        self._order: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._first)

    def seen(self, key: bytes, ts_ns: int) -> bool:
        """True (and counted) when ``key`` was first seen less than the window before ``ts_ns``."""
        first = self._first.get(key)
        if first is not None and ts_ns - first < self.window_ns:
            self.duplicates += 1
            return True
        self._forget(ts_ns - self.window_ns)
        self._first[key] = ts_ns
        self._order.append((ts_ns, key))
        return False

    def _forget(self, before: int) -> None:
        """Sightings at or before ``before`` can no longer make a duplicate; past the
        limit, the oldest go anyway. The limit holds the queue, not only the map: a
        frame stamped in the future (time going back in a merged capture) stops the
        expiry at the front while keys seen again keep adding to the back."""
        first, order = self._first, self._order
        while order and (order[0][0] <= before or len(order) >= self._max):
            ts_ns, key = order.popleft()
            if first.get(key) == ts_ns:  # not seen again since
                del first[key]
