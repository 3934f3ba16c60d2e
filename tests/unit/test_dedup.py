"""userspace.dedup: a packet's identity (what a copy one hop later still has)
and the window it is a duplicate within, on the packets' own times."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.frames import (
    FRAGMENT,
    TCP,
    UDP,
    V6,
    ethernet,
    ipv4,
    ipv6,
    ipv6_chain,
    ipv6_fragment,
    next_hop,
    tcp,
    udp,
    with_checksum,
)
from tests.support.sip_samples import INVITE
from userspace.dedup import DEDUP_PREFIX, Dedup, identity
from userspace.frame import walk

MS = 1_000_000


def key(frame: bytes) -> bytes:
    layout = walk(frame)
    assert layout is not None
    found = identity(frame, layout.l3, layout.l4, layout.payload, layout.proto, layout.flags)
    assert found is not None
    return found


def sip(payload: bytes = INVITE, sport: int = 5070, **ip: Any) -> bytes:
    return with_checksum(ethernet(ipv4(udp(payload, sport, 5060), **ip)))


def sip6(payload: bytes = INVITE, **ip: Any) -> bytes:
    return ethernet(ipv6(udp(payload, 5070, 5060), **ip), ethertype=V6)


def test_a_copy_one_hop_later_has_the_same_identity() -> None:
    frame = sip()
    assert key(next_hop(frame)) == key(frame)                      # TTL, checksum, MACs
    assert key(next_hop(frame, vlans=(10, 20))) == key(frame)      # and QinQ tags
    assert key(sip(tos=0xB8, ttl=2)) == key(frame)                 # a remarked DSCP, any TTL
    assert key(sip6(hop_limit=1, traffic_class=0x2E)) == key(sip6())
    assert key(next_hop(sip6(flow_label=9))) == key(sip6(flow_label=9))


def test_ethernet_padding_is_not_the_packet() -> None:
    short = sip(b"OPTIONS x")
    assert key(short + bytes(20)) == key(short)


@pytest.mark.parametrize("other", [
    sip(ident=2), sip(sport=5071), sip(src="10.0.0.9"), sip(dst="10.0.0.9"),
    sip(INVITE.replace(b"INVITE", b"INVITF", 1)), sip(INVITE + b"x"),
], ids=["ip-id", "port", "source", "destination", "payload-byte", "length"])
def test_what_copies_share_tells_packets_apart(other: bytes) -> None:
    assert key(other) != key(sip())


def test_only_the_payloads_first_bytes_are_looked_at() -> None:
    start = walk(sip())
    assert start is not None
    changed = bytearray(INVITE)
    changed[DEDUP_PREFIX] ^= 1
    assert key(sip(bytes(changed))) == key(sip())
    changed[DEDUP_PREFIX - 1] ^= 1
    assert key(sip(bytes(changed))) != key(sip())


def test_ipv6_flow_labels_fragments_and_tcp_segments_are_told_apart() -> None:
    assert key(sip6(flow_label=1)) != key(sip6(flow_label=2))
    datagram = udp(INVITE, 5070, 5060)
    first = ethernet(ipv4(datagram[:256], frag=0x2000, ident=7))
    second = ethernet(ipv4(datagram[256:512], frag=0x2000 | 32, ident=7))
    third = ethernet(ipv4(datagram[256:512], frag=0x2000 | 64, ident=7))
    assert len({key(first), key(second), key(third)}) == 3
    assert key(next_hop(second)) == key(second)
    v6 = [ethernet(ipv6_chain(ipv6_fragment(UDP, offset, True, 9) + b"x" * 64, FRAGMENT), ethertype=V6)
          for offset in (64, 128)]
    assert key(v6[0]) != key(v6[1]) and key(next_hop(v6[1])) == key(v6[1])
    segments = [ethernet(ipv4(tcp(b"x" * 100, 40000, 5060, seq=seq), proto=TCP)) for seq in (1, 101)]
    assert key(segments[0]) != key(segments[1]) and key(next_hop(segments[0])) == key(segments[0])


def test_a_copy_within_the_window_is_a_duplicate_and_counted() -> None:
    dedup = Dedup(50 * MS)
    assert not dedup.seen(b"p", 1_000 * MS)
    assert dedup.seen(b"p", 1_049 * MS)
    assert not dedup.seen(b"p", 1_050 * MS)  # the window's end: a new original
    assert not dedup.seen(b"q", 1_050 * MS)
    assert dedup.duplicates == 1


def test_the_window_counts_from_the_first_sighting_not_from_its_copies() -> None:
    dedup = Dedup(50 * MS)
    assert [dedup.seen(b"p", t * MS) for t in (0, 40, 60, 90, 115)] == [False, True, False, True, False]


def test_sip_retransmissions_stay_at_the_default_window() -> None:
    dedup = Dedup(50 * MS)
    assert not any(dedup.seen(b"INVITE", t * MS) for t in (0, 500, 1500, 3500))  # T1, 2T1, 4T1 (RFC 3261)


def test_a_frame_stamped_before_the_original_is_its_duplicate() -> None:
    dedup = Dedup(50 * MS)
    dedup.seen(b"p", 100 * MS)
    assert dedup.seen(b"p", 99 * MS)  # merged captures are not always in order


def test_what_the_window_cannot_hold_is_forgotten_oldest_first() -> None:
    dedup = Dedup(50 * MS, max_entries=3)
    for n in range(5):
        dedup.seen(bytes([n]), n)
    assert len(dedup) == 3
    assert not dedup.seen(b"\0", 10) and dedup.seen(bytes([4]), 10)
    dedup.seen(b"late", 60 * MS)
    assert len(dedup) == 1  # sightings past the window are dropped as time moves on


def test_time_going_back_does_not_grow_the_queue_past_the_limit() -> None:
    """A frame stamped far ahead sits at the queue's front; a key seen again and again
    past its window keeps appending behind it: the limit still holds."""
    dedup = Dedup(50 * MS, max_entries=100)
    dedup.seen(b"future", 10**15)
    for n in range(10_000):
        dedup.seen(b"keepalive", n * 60 * MS)  # each past the last one's window: a new original
    assert len(dedup._order) <= 100 and len(dedup) <= 100


def test_lengths_shorter_than_the_headers_give_an_identity_not_an_error() -> None:
    """An IPv4 total length of 20 (the header alone) puts the IP end before the payload:
    compiled with mypyc, a bytes slice whose end is before its start raised SystemError."""
    frame = bytearray(sip(b"abc"))
    frame[16:18] = (20).to_bytes(2, "big")
    assert key(bytes(frame)) != key(sip(b"abc"))


def test_a_decoy_with_the_same_first_bytes_and_another_tail_is_another_packet() -> None:
    """Its UDP checksum (another tail, another sum) tells it apart, as in the kernel."""
    def checksum(frame: bytes, value: int) -> bytes:
        return frame[:40] + value.to_bytes(2, "big") + frame[42:]
    genuine = checksum(sip(INVITE), 0x1234)
    decoy = checksum(sip(INVITE.replace(b"tag=1928301774", b"tag=1928301775")), 0x4321)
    assert key(genuine) != key(decoy)


def test_ipv6_fragments_inside_a_tunnel_on_a_configured_port_keep_their_ids() -> None:
    """The fragment header was read by walking the frame again with the default tunnels:
    inside VXLAN on --vxlan-port 8472 it read as none, two datagrams shared one identity
    and the second was dropped as a copy of the first."""
    from tests.support.tunnels import vxlan  # noqa: PLC0415
    from userspace.classify import Rules, Screen, classify_frame  # noqa: PLC0415
    from userspace.tunnel import ALL_KINDS, Tunnels  # noqa: PLC0415

    rules = Rules(frozenset((5060,)), tunnels=Tunnels(ALL_KINDS, frozenset((8472,))))
    screen = Screen(dedup_window_ns=50 * MS)
    admitted = []
    for ident in (1111, 2222, 1111):  # two datagrams, then a copy of the first
        inner = ipv6(ipv6_fragment(UDP, 1448, False, ident) + b"A" * 100, proto=FRAGMENT,
                     src="fd00::a", dst="fd00::b")
        event = classify_frame(vxlan(ethernet(inner, ethertype=V6), port=8472), rules, ts_ns=MS)
        assert event is not None
        admitted.append(screen.admit(event))
    assert admitted == [True, True, False]
