"""IP fragment reassembly, IPv4 (RFC 791, RFC 815) and IPv6 (RFC 8200 §4.5).

Sans-IO: ``feed(fragment, now_ns)`` returns the whole datagram when its last
missing piece arrives, else None; every other outcome is counted in
``stats``. Time arrives with the fragments: expired state is reclaimed as
time moves, from the front of one queue per IP version (a fixed timeout per
version makes arrival order deadline order), amortised O(1) per fragment.

Overlaps follow RFC 5722 for both versions: exact duplicates are accepted
(retransmissions), overlaps with the same bytes are merged, overlaps with
different bytes discard the datagram and every later fragment of it until
its deadline. Caps on datagrams per source, datagrams in total and bytes
buffered evict the oldest state of the same source first, so a flood from
one source evicts itself rather than other senders' datagrams.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

# RFC 791 §3.1 / RFC 8200 §4.5: a datagram is at most 65,535 bytes past its
# fixed header; anything claiming more is an attack (ping of death).
MAX_DATAGRAM = 65_535
# Non-last fragments carry multiples of 8 bytes (RFC 791 §3.2, RFC 8200 §4.5).
FRAGMENT_UNIT = 8
NS = 1_000_000_000

Key = tuple[int, bytes, bytes, int, int, bytes]  # version, src, dst, protocol (0 for v6), id, tunnel


@dataclass(frozen=True, slots=True)
class ReassemblyLimits:
    """Each field's ``range`` is what a config may set it to (otus_ebpf.control.config)."""

    # RFC 791 leaves it to the host; Linux uses 30 s
    timeout_v4_s: float = field(default=30.0, metadata={"range": (0.001, 3600)})
    timeout_v6_s: float = field(default=60.0, metadata={"range": (0.001, 3600)})  # RFC 8200 §4.5
    # a 65 KB datagram over a 1,280-byte MTU needs 52; 8-byte fragments need 8,192
    max_fragments: int = field(default=64, metadata={"range": (2, 8192)})
    max_per_source: int = field(default=64, metadata={"range": (1, 1 << 20)})  # datagrams from one address
    max_datagrams: int = field(default=8192, metadata={"range": (1, 1 << 22)})  # datagrams in flight
    max_bytes: int = field(default=64 << 20, metadata={"range": (1 << 16, 16 << 30)})  # payload buffered


@dataclass(slots=True)
class ReassemblyStats:
    fragments: int = 0          # fragments fed
    datagrams: int = 0          # datagrams completed from several fragments
    atomic: int = 0             # offset 0 and no more fragments: whole on arrival
    duplicates: int = 0         # fragments already held byte for byte
    overlaps: int = 0           # datagrams discarded for overlapping different bytes
    discarded: int = 0          # fragments of an already discarded datagram
    too_big: int = 0            # fragments reaching past 65,535 bytes
    malformed: int = 0          # bad length, conflicting ends
    timeouts: int = 0           # datagrams expired incomplete
    too_many_fragments: int = 0  # datagrams dropped at max_fragments
    evicted_per_source: int = 0
    evicted_datagrams: int = 0
    evicted_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Fragment:
    """One fragment: ``payload`` is its piece of the fragmentable part, which
    starts ``offset`` bytes into the datagram. ``protocol`` is the IPv4
    protocol or the IPv6 fragment header's next header."""

    version: int
    src: bytes
    dst: bytes
    protocol: int
    ident: int
    offset: int
    more: bool
    payload: bytes
    # The tunnel it came in (userspace.tunnel.Encap.tag), b"" for none: the same
    # addresses and id in two tunnels are two datagrams.
    tunnel: bytes = b""


@dataclass(frozen=True, slots=True)
class Datagram:
    """A reassembled datagram: ``payload`` is the whole fragmentable part
    (for IPv6 possibly starting with extension headers), ``protocol`` says
    what comes first in it."""

    version: int
    src: bytes
    dst: bytes
    protocol: int
    payload: bytes
    fragments: int


class _Outcome(Enum):
    ADDED = 1
    DUPLICATE = 2
    OVERLAP = 3
    MALFORMED = 4


class _Pending:
    __slots__ = ("bytes", "count", "covered", "deadline", "key", "pieces", "poisoned", "protocol", "total")

    def __init__(self, key: Key, deadline: int) -> None:
        self.key = key
        self.deadline = deadline
        self.pieces: list[tuple[int, int, bytes]] = []  # sorted by start, never overlapping
        self.total: int | None = None  # known once the last fragment arrives
        self.covered = 0
        self.bytes = 0  # buffered, for the global cap
        self.count = 0
        self.protocol = key[3]
        self.poisoned = False

    def add(self, start: int, end: int, data: bytes, more: bool) -> _Outcome:
        if not more:
            if (self.total is not None and self.total != end) or (self.pieces and self.pieces[-1][1] > end):
                return _Outcome.MALFORMED
            self.total = end
        elif self.total is not None and end > self.total:
            return _Outcome.MALFORMED
        if start == end:
            return _Outcome.ADDED  # zero-length: legal, covers nothing
        pieces = self.pieces
        first = len(pieces)
        last = -1
        for index, (s, e, _d) in enumerate(pieces):
            if e <= start:
                continue
            if s >= end:
                first = min(first, index)
                break
            first = min(first, index)
            last = index
        if last < 0:  # the common case: no overlap
            pieces.insert(first, (start, end, data))
            self.covered += end - start
            return _Outcome.ADDED
        return self._overlap(first, last, start, end, data)

    def _overlap(self, first: int, last: int, start: int, end: int, data: bytes) -> _Outcome:
        pieces = self.pieces
        for s, e, d in pieces[first:last + 1]:
            lo, hi = max(s, start), min(e, end)
            if d[lo - s:hi - s] != data[lo - start:hi - start]:
                return _Outcome.OVERLAP
        union_start, union_end = min(pieces[first][0], start), max(pieces[last][1], end)
        if (union_start, union_end) == (pieces[first][0], pieces[last][1]) and first == last:
            return _Outcome.DUPLICATE
        merged = bytearray(union_end - union_start)
        merged[start - union_start:end - union_start] = data
        for s, e, d in pieces[first:last + 1]:
            merged[s - union_start:e - union_start] = d
            self.covered -= e - s
        pieces[first:last + 1] = [(union_start, union_end, bytes(merged))]
        self.covered += union_end - union_start
        return _Outcome.ADDED

    @property
    def complete(self) -> bool:
        # Non-overlapping pieces inside [0, total) that add up to total tile it.
        return self.total is not None and self.covered == self.total

    def assemble(self) -> bytes:
        return b"".join(d for _s, _e, d in self.pieces)


class Reassembler:
    def __init__(self, limits: ReassemblyLimits | None = None) -> None:
        self.limits = limits or ReassemblyLimits()
        self.stats = ReassemblyStats()
        self._timeouts = {4: int(self.limits.timeout_v4_s * NS), 6: int(self.limits.timeout_v6_s * NS)}
        self._queues: dict[int, OrderedDict[Key, _Pending]] = {4: OrderedDict(), 6: OrderedDict()}
        self._by_source: dict[bytes, OrderedDict[Key, None]] = {}
        self._bytes = 0

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def in_flight(self) -> int:
        return len(self._queues[4]) + len(self._queues[6])

    def feed(self, fragment: Fragment, now_ns: int) -> Datagram | None:
        stats = self.stats
        stats.fragments += 1
        self.expire(now_ns)
        start, more, payload = fragment.offset, fragment.more, fragment.payload
        end = start + len(payload)
        if start == 0 and not more:
            stats.atomic += 1
            return Datagram(fragment.version, fragment.src, fragment.dst, fragment.protocol, payload, 1)
        key: Key = (fragment.version, fragment.src, fragment.dst,
                    fragment.protocol if fragment.version == 4 else 0, fragment.ident, fragment.tunnel)
        if end > MAX_DATAGRAM:
            stats.too_big += 1
            self._poison(key, now_ns, fragment.version)
            return None
        if more and len(payload) % FRAGMENT_UNIT:
            stats.malformed += 1
            return None
        pending = self._queues[fragment.version].get(key) or self._create(key, now_ns)
        if pending.poisoned:
            stats.discarded += 1
            return None
        if pending.count >= self.limits.max_fragments:
            stats.too_many_fragments += 1
            self._poison(key, now_ns, fragment.version)
            return None
        return self._add(pending, fragment, start, end)

    def _add(self, pending: _Pending, fragment: Fragment, start: int, end: int) -> Datagram | None:
        stats = self.stats
        covered_before = pending.covered
        outcome = pending.add(start, end, fragment.payload, fragment.more)
        if outcome is _Outcome.DUPLICATE:
            stats.duplicates += 1
            return None
        if outcome is not _Outcome.ADDED:
            if outcome is _Outcome.OVERLAP:
                stats.overlaps += 1
            else:
                stats.malformed += 1
            self._poison(pending.key, None, fragment.version)
            return None
        pending.count += 1
        if start == 0 and fragment.version == 6:
            pending.protocol = fragment.protocol  # the first fragment's next header counts
        grown = pending.covered - covered_before
        pending.bytes += grown
        self._bytes += grown
        if pending.complete:
            self._remove(pending)
            stats.datagrams += 1
            key = pending.key
            return Datagram(key[0], key[1], key[2], pending.protocol, pending.assemble(), pending.count)
        self._enforce_byte_cap(pending)
        return None

    def expire(self, now_ns: int) -> int:
        """Drop incomplete datagrams whose deadline has passed; return how many."""
        expired = 0
        for queue in self._queues.values():
            while queue:
                pending = next(iter(queue.values()))
                if pending.deadline > now_ns:
                    break
                self._remove(pending)
                if not pending.poisoned:
                    expired += 1
        self.stats.timeouts += expired
        return expired

    def _create(self, key: Key, now_ns: int) -> _Pending:
        """New state, within the caps: the same source's oldest goes first."""
        source = key[1]
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.limits.max_per_source:
            self._evict(self._pending(next(iter(mine))))
            self.stats.evicted_per_source += 1
        if self.in_flight >= self.limits.max_datagrams:
            self._evict(self._victim(source, exclude=None))
            self.stats.evicted_datagrams += 1
        pending = _Pending(key, now_ns + self._timeouts[key[0]])
        self._queues[key[0]][key] = pending
        self._by_source.setdefault(source, OrderedDict())[key] = None
        return pending

    def _enforce_byte_cap(self, current: _Pending) -> None:
        while self._bytes > self.limits.max_bytes:
            victim = self._victim(current.key[1], exclude=current.key)
            if victim is None:
                victim = current  # it alone is over the cap
            self._evict(victim)
            self.stats.evicted_bytes += 1
            if victim is current:
                return

    def _victim(self, source: bytes, exclude: Key | None) -> _Pending | None:
        """The same source's oldest datagram, else the oldest of all (never ``exclude``)."""
        for key in self._by_source.get(source, ()):
            if key != exclude:
                return self._pending(key)
        oldest: _Pending | None = None
        for queue in self._queues.values():
            for pending in queue.values():
                if pending.key != exclude:
                    if oldest is None or pending.deadline < oldest.deadline:
                        oldest = pending
                    break
        return oldest

    def _pending(self, key: Key) -> _Pending:
        return self._queues[key[0]][key]

    def _evict(self, pending: _Pending | None) -> None:
        if pending is not None:
            self._remove(pending)

    def _poison(self, key: Key, now_ns: int | None, version: int) -> None:
        """Discard the datagram's pieces but remember its key until its deadline,
        so its remaining fragments are discarded too (RFC 5722 §4). The
        tombstone counts against the caps like any other state."""
        pending = self._queues[version].get(key)
        if pending is None:
            if now_ns is None:
                return
            pending = self._create(key, now_ns)
        self._bytes -= pending.bytes
        pending.bytes = 0
        pending.pieces = []
        pending.poisoned = True

    def _remove(self, pending: _Pending) -> None:
        key = pending.key
        del self._queues[key[0]][key]
        mine = self._by_source[key[1]]
        del mine[key]
        if not mine:
            del self._by_source[key[1]]
        self._bytes -= pending.bytes
