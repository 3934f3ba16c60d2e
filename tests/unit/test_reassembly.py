"""IP fragment reassembly: properties, RFC edge cases, and adversaries."""

from __future__ import annotations

import itertools
import random

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from userspace.reassembly import MAX_DATAGRAM, NS, Datagram, Fragment, Reassembler, ReassemblyLimits

SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6, DST6 = bytes(15) + b"\1", bytes(15) + b"\2"
UDP = 17
# Random fragmentation down to 8-byte pieces needs more than the default 64.
ROOMY = ReassemblyLimits(max_fragments=MAX_DATAGRAM // 8 + 1)


def cut(data: bytes, points: list[int], version: int = 4, ident: int = 7) -> list[Fragment]:
    """Fragments of ``data`` cut at ``points`` (multiples of 8)."""
    src, dst = (SRC, DST) if version == 4 else (SRC6, DST6)
    bounds = [0, *sorted(set(points)), len(data)]
    return [Fragment(version, src, dst, UDP, ident, start, end < len(data), data[start:end])
            for start, end in itertools.pairwise(bounds) if end > start or start == 0]


def feed_all(reassembler: Reassembler, fragments: list[Fragment], now: int = 0) -> list[Datagram]:
    return [d for f in fragments if (d := reassembler.feed(f, now)) is not None]


@st.composite
def fragmented(draw: st.DrawFn) -> tuple[int, bytes, list[Fragment], list[Fragment]]:
    """(version, datagram, fragments in random order with duplicates before the last one, originals)."""
    version = draw(st.sampled_from([4, 6]))
    size = draw(st.integers(16, MAX_DATAGRAM))
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    units = (size - 1) // 8
    count = draw(st.integers(1, min(units, 80)))
    points = [8 * u for u in draw(st.lists(st.integers(1, units), min_size=count, max_size=count))]
    originals = cut(data, points, version)
    order = draw(st.permutations(originals))
    last = order[-1]
    head = list(order[:-1])
    # A copy of the completing fragment fed before it would just complete the
    # datagram early: duplicates copy the others.
    duplicates = draw(st.lists(st.sampled_from(head), max_size=5)) if head else []
    for duplicate in duplicates:  # anywhere before the fragment that completes it
        head.insert(draw(st.integers(0, len(head))), duplicate)
    return version, data, [*head, last], originals


@settings(max_examples=150, deadline=None)
@given(fragmented())
def test_any_fragmentation_order_and_duplication_gives_back_the_datagram(
    case: tuple[int, bytes, list[Fragment], list[Fragment]]
) -> None:
    version, data, sequence, originals = case
    reassembler = Reassembler(ROOMY)
    (datagram,) = feed_all(reassembler, sequence)
    assert datagram.payload == data
    assert (datagram.version, datagram.protocol, datagram.fragments) == (version, UDP, len(originals))
    assert reassembler.stats.duplicates == len(sequence) - len(originals)
    assert reassembler.in_flight == 0 and reassembler.buffered_bytes == 0


@settings(max_examples=100, deadline=None)
@given(fragmented(), st.data())
def test_an_overlap_with_different_bytes_discards_the_datagram(
    case: tuple[int, bytes, list[Fragment], list[Fragment]], data: st.DataObject
) -> None:
    _version, _data, sequence, _originals = case
    # A forgery of the completing fragment that arrives first is indistinguishable
    # from it; forge one that arrives, with its original, before completion.
    candidates = [f for f in sequence[:-1] if f.payload]
    assume(candidates)
    victim = data.draw(st.sampled_from(candidates))
    flip = data.draw(st.integers(0, len(victim.payload) - 1))
    forged = bytearray(victim.payload)
    forged[flip] ^= 0xFF
    evil = Fragment(victim.version, victim.src, victim.dst, victim.protocol, victim.ident, victim.offset,
                    victim.more, bytes(forged))
    position = data.draw(st.integers(0, len(sequence) - 1))  # before the completing fragment
    reassembler = Reassembler(ROOMY)
    assert feed_all(reassembler, [*sequence[:position], evil, *sequence[position:]]) == []
    assert reassembler.stats.overlaps == 1
    assert reassembler.buffered_bytes == 0


def test_atomic_fragment_is_whole_on_arrival() -> None:
    reassembler = Reassembler()
    (datagram,) = feed_all(reassembler, [Fragment(6, SRC6, DST6, UDP, 1, 0, False, b"abc")])
    assert (datagram.payload, datagram.fragments, reassembler.stats.atomic) == (b"abc", 1, 1)


def test_identical_overlap_is_merged_and_zero_length_middle_fragment_is_fine() -> None:
    data = bytes(range(48))
    fragments = [Fragment(4, SRC, DST, UDP, 9, 0, True, data[:24]),
                 Fragment(4, SRC, DST, UDP, 9, 24, True, b""),
                 Fragment(4, SRC, DST, UDP, 9, 16, True, data[16:32]),   # same bytes as held
                 Fragment(4, SRC, DST, UDP, 9, 32, False, data[32:])]
    (datagram,) = feed_all(Reassembler(), fragments)
    assert datagram.payload == data


def test_teardrop_overlap_discards_this_and_later_fragments() -> None:
    reassembler = Reassembler()
    sequence = [Fragment(4, SRC, DST, UDP, 3, 0, True, b"A" * 24),
                Fragment(4, SRC, DST, UDP, 3, 16, True, b"B" * 8),       # inside the first, other bytes
                Fragment(4, SRC, DST, UDP, 3, 24, False, b"C" * 8)]
    assert feed_all(reassembler, sequence) == []
    assert (reassembler.stats.overlaps, reassembler.stats.discarded) == (1, 1)


def test_past_65535_bytes_is_rejected() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(Fragment(4, SRC, DST, UDP, 4, 65528, False, b"x" * 16), 0) is None
    assert reassembler.feed(Fragment(4, SRC, DST, UDP, 4, 0, True, b"x" * 8), 0) is None
    assert (reassembler.stats.too_big, reassembler.stats.discarded) == (1, 1)


def test_malformed_lengths_and_conflicting_ends() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(Fragment(4, SRC, DST, UDP, 5, 0, True, b"x" * 12), 0) is None  # not 8n
    feed_all(reassembler, [Fragment(4, SRC, DST, UDP, 6, 16, False, b"x" * 8),
                           Fragment(4, SRC, DST, UDP, 6, 32, True, b"x" * 8)])      # past the end
    assert reassembler.stats.malformed == 2


def test_tiny_fragments_complete_until_the_fragment_cap() -> None:
    data = bytes(range(64))
    assert feed_all(Reassembler(), cut(data, list(range(8, 64, 8))))[0].payload == data
    reassembler = Reassembler(ReassemblyLimits(max_fragments=64))
    big = bytes(8 * 200)
    assert feed_all(reassembler, cut(big, list(range(8, len(big), 8)))) == []
    assert reassembler.stats.too_many_fragments == 1
    assert reassembler.stats.discarded == 200 - 65
    assert reassembler.buffered_bytes == 0


def test_incomplete_datagrams_time_out_per_version() -> None:
    reassembler = Reassembler()
    reassembler.feed(Fragment(4, SRC, DST, UDP, 1, 0, True, b"x" * 8), 0)
    reassembler.feed(Fragment(6, SRC6, DST6, UDP, 1, 0, True, b"x" * 8), 0)
    assert reassembler.expire(30 * NS - 1) == 0
    assert reassembler.expire(30 * NS) == 1
    assert reassembler.expire(60 * NS) == 1
    assert (reassembler.stats.timeouts, reassembler.in_flight, reassembler.buffered_bytes) == (2, 0, 0)


def test_one_source_over_its_cap_evicts_its_own_oldest() -> None:
    limits = ReassemblyLimits(max_per_source=4)
    reassembler = Reassembler(limits)
    other = Fragment(4, bytes([10, 0, 0, 9]), DST, UDP, 1, 0, True, b"o" * 8)
    reassembler.feed(other, 0)
    for ident in range(10):
        reassembler.feed(Fragment(4, SRC, DST, UDP, ident, 0, True, b"x" * 8), 0)
    assert reassembler.stats.evicted_per_source == 10 - 4
    (datagram,) = feed_all(reassembler, [Fragment(4, other.src, DST, UDP, 1, 8, False, b"p")])
    assert datagram.payload == b"o" * 8 + b"p"


def test_a_flood_from_many_sources_cannot_starve_a_legitimate_sender() -> None:
    """1,000,000 never-completing fragments from 10,000 sources with random ids;
    one legitimate three-fragment datagram interleaved every 1,000 fragments."""
    limits = ReassemblyLimits(max_per_source=64, max_datagrams=8192, max_bytes=4 << 20)
    reassembler = Reassembler(limits)
    rng = random.Random(1)
    sources = [bytes([10, 1, s >> 8, s & 0xFF]) for s in range(10_000)]
    legit_src = bytes([192, 0, 2, 1])
    flood_payload = b"f" * 1000
    message = rng.randbytes(3000)
    completed, legit_sent, flood_sent, peak_bytes = 0, 0, 0, 0
    pending_legit: list[Fragment] = []
    now = 0
    for i in range(1_000_000):
        now += 1_000  # 1 µs apart: no timeouts during the flood
        if i % 1000 == 0:
            legit_sent += 1
            pending_legit = [Fragment(4, legit_src, DST, UDP, legit_sent, 0, True, message[:1480]),
                             Fragment(4, legit_src, DST, UDP, legit_sent, 1480, True, message[1480:2960]),
                             Fragment(4, legit_src, DST, UDP, legit_sent, 2960, False, message[2960:])]
        if pending_legit and i % 300 == 0:  # legit fragments spread between flood fragments
            done = reassembler.feed(pending_legit.pop(0), now)
            if done is not None:
                assert done.payload == message
                completed += 1
        source = sources[rng.randrange(len(sources))]
        reassembler.feed(Fragment(4, source, DST, UDP, rng.getrandbits(16), 0, True, flood_payload), now)
        flood_sent += 1
        peak_bytes = max(peak_bytes, reassembler.buffered_bytes)
        assert reassembler.in_flight <= limits.max_datagrams
    stats = reassembler.stats
    assert completed == legit_sent
    assert peak_bytes <= limits.max_bytes
    evicted = stats.evicted_per_source + stats.evicted_datagrams + stats.evicted_bytes
    # Each flood fragment opened one datagram (a repeated random id adds a duplicate or
    # overlap instead); each opened datagram is still held or was evicted exactly once.
    opened = flood_sent - stats.duplicates - stats.overlaps - stats.discarded
    assert opened == reassembler.in_flight + evicted
    assert stats.evicted_bytes > 0 and stats.timeouts == 0


def test_total_datagram_cap_counts_each_eviction() -> None:
    reassembler = Reassembler(ReassemblyLimits(max_datagrams=100))
    for source in range(150):
        reassembler.feed(Fragment(4, source.to_bytes(4, "big"), DST, UDP, 1, 0, True, b"x" * 8), 0)
    assert (reassembler.stats.evicted_datagrams, reassembler.in_flight) == (50, 100)


def test_byte_cap_counts_each_eviction_and_is_never_exceeded() -> None:
    reassembler = Reassembler(ReassemblyLimits(max_bytes=10 * 1000))
    for source in range(15):
        reassembler.feed(Fragment(4, source.to_bytes(4, "big"), DST, UDP, 1, 0, True, b"x" * 1000), 0)
        assert reassembler.buffered_bytes <= 10 * 1000
    assert (reassembler.stats.evicted_bytes, reassembler.in_flight) == (5, 10)
