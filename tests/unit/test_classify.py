"""userspace.classify on crafted frames, without root or a kernel: the
verdict (an event, or None where the kernel would send nothing up), the
offsets, flags, shard and flow hash of the event it builds. The cases are
those tests/kernel/test_classify.py runs through the kernel's programs;
tests/kernel/test_parity.py holds the two classifications equal there."""

from __future__ import annotations

import ipaddress

import pytest

from tests.support.frames import (
    AH,
    DEST_OPTS,
    FRAGMENT,
    HOP_BY_HOP,
    ICMP,
    ROUTING,
    RTP_PAYLOAD,
    TCP,
    UDP,
    V6,
    conversation_shard,
    ethernet,
    ipv4,
    ipv6,
    ipv6_ah,
    ipv6_chain,
    ipv6_ext,
    ipv6_fragment,
    next_hop,
    tcp,
    udp,
    with_checksum,
)
from tests.support.sip_samples import INVITE, OK_200, request, response
from userspace.classify import Rules, Screen, classify_frame, mix32
from userspace.event import Direction, Event, Flag, Kind
from userspace.sharding import call_id_hash

SHARDS = 2
SIP_PORTS = frozenset((5060, 5061))
RULES = Rules(SIP_PORTS, shards=SHARDS)


def classified(frame: bytes, rules: Rules = RULES) -> Event:
    event = classify_frame(frame, rules)
    assert event is not None, "the kernel would send this frame up"
    return event



def test_mix32_is_murmur3s_finaliser() -> None:
    assert mix32(0) == 0
    assert mix32(1) == 0x514E28B7  # murmur3's fmix32(1)
    assert all(0 <= mix32(n) <= 0xFFFFFFFF for n in (1, 0xFFFFFFFF, 0x12345678))


def test_sip_on_its_port_is_whole_and_routed_by_its_call_id() -> None:
    frame = ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2"))
    event = classify_frame(frame, RULES, Direction.EGRESS, ts_ns=7, ifindex=3)
    assert event is not None
    assert (event.kind, event.direction, event.l4_proto, event.ts_ns, event.ifindex) == \
        (Kind.SIP, Direction.EGRESS, UDP, 7, 3)
    assert (event.l3_offset, event.l4_offset, event.payload_offset) == (14, 34, 42)
    assert event.frame == frame and event.cap_len == event.orig_len == len(frame)
    call_hash = call_id_hash(INVITE)
    assert call_hash is not None
    assert event.flags == Flag.OWNED
    assert (event.flow_hash, event.shard) == (call_hash, call_hash % SHARDS)


def test_a_cut_frame_keeps_its_original_length() -> None:
    frame = ethernet(ipv4(udp(INVITE)))
    event = classify_frame(frame[:200], RULES, orig_len=len(frame))
    assert event is not None and (event.cap_len, event.orig_len) == (200, len(frame))


def test_both_directions_of_a_dialog_share_flow_hash_and_shard() -> None:
    there = classified(ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")))
    back = classified(ethernet(ipv4(udp(OK_200, 5060, 5070), src="10.1.0.2", dst="10.1.0.1")))
    assert (there.flow_hash, there.shard) == (back.flow_hash, back.shard)


def test_a_trunk_between_two_hosts_spreads_over_the_shards_by_call_id() -> None:
    """The SBC-to-core case: one address pair, many dialogs."""
    shards = []
    for n in range(64):
        message = INVITE.replace(b"a84b4c76e66710", f"trunk-{n}".encode())
        event = classified(ethernet(ipv4(udp(message), src="10.2.0.1", dst="10.9.9.9")))
        assert event.flags & Flag.OWNED
        shards.append(event.shard)
    assert all(shards.count(shard) >= 16 for shard in range(SHARDS)), shards


def test_sip_without_a_call_id_goes_by_its_conversation() -> None:
    no_call_id = INVITE.replace(b"Call-ID", b"X-Nope")
    shards = set()
    for host in range(1, 40):
        event = classified(ethernet(ipv4(udp(no_call_id), src=f"10.2.0.{host}", dst="10.9.9.9")))
        assert event.shard == conversation_shard(f"10.2.0.{host}", "10.9.9.9", SHARDS)
        assert not event.flags & Flag.OWNED
        shards.add(event.shard)
    assert shards == set(range(SHARDS))


def test_one_shard_hashes_no_call_id() -> None:
    """With one pipeline to go to, the Call-ID scan is skipped (it costs microseconds in Python)."""
    event = classified(ethernet(ipv4(udp(INVITE))), Rules(SIP_PORTS))
    assert (event.shard, event.flags & Flag.OWNED) == (0, 0)
    assert event.flow_hash != call_id_hash(INVITE)


def test_sip_over_tcp_both_ports_goes_by_its_conversation() -> None:
    for sport, dport in ((40000, 5061), (5061, 40000)):
        event = classified(ethernet(ipv4(tcp(INVITE, sport, dport), proto=TCP)))
        assert (event.kind, event.l4_proto, event.payload_offset) == (Kind.SIP, TCP, 54)
        assert not event.flags & Flag.OWNED, "a TCP segment is not routed by a Call-ID"
        assert event.shard == conversation_shard("10.0.0.1", "10.0.0.2", SHARDS)


@pytest.mark.parametrize("vlans", [(10,), (100, 200)], ids=["802.1Q", "QinQ"])
def test_vlan_tags(vlans: tuple[int, ...]) -> None:
    frame = ethernet(ipv4(udp(INVITE)), vlans=vlans)
    event = classified(frame)
    assert event.l3_offset == 14 + 4 * len(vlans)
    assert event.flags & Flag.VLAN and event.frame == frame


def test_ipv4_options() -> None:
    event = classified(ethernet(ipv4(udp(INVITE), options=b"\x94\x04\x00\x00" + b"\x01" * 4)))
    assert (event.l4_offset, event.payload_offset) == (14 + 28, 14 + 28 + 8)


def test_ipv6_extension_headers() -> None:
    chain = (ipv6_ext(ROUTING)                 # hop-by-hop, 8 bytes
             + ipv6_ext(DEST_OPTS)             # routing, 8 bytes
             + ipv6_ext(DEST_OPTS, units=1)    # destination options, 16 bytes
             + ipv6_ext(AH)                    # destination options, 8 bytes
             + ipv6_ah(UDP)                    # authentication header, 24 bytes
             + udp(INVITE))
    event = classified(ethernet(ipv6_chain(chain, HOP_BY_HOP), ethertype=V6))
    assert event.flags & Flag.IPV6
    assert event.l4_offset == 14 + 40 + 8 + 8 + 16 + 8 + 24
    assert event.payload_offset == event.l4_offset + 8


def test_ipv4_fragments_first_and_rest_meet_their_conversation() -> None:
    datagram = udp(INVITE)
    first = ethernet(ipv4(datagram[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000))
    middle = ethernet(ipv4(datagram[256:512], src="10.3.0.1", dst="10.3.0.2", frag=0x2000 | 32))
    last = ethernet(ipv4(datagram[512:], src="10.3.0.1", dst="10.3.0.2", frag=64))
    whole = ethernet(ipv4(tcp(OK_200, 5060, 5060), src="10.3.0.2", dst="10.3.0.1", proto=TCP))
    events = [classified(frame) for frame in (first, middle, last)]
    assert all(e.kind == Kind.FRAGMENT and e.flags & Flag.FRAGMENT for e in events)
    assert events[0].l4_offset == 34 and events[1].l4_offset == events[2].l4_offset == 0
    assert len({e.flow_hash for e in events}) == 1, "all fragments hash alike"
    assert not any(e.flags & Flag.OWNED for e in events), "a fragment's Call-ID is found after reassembly"
    assert {e.shard for e in events} == {classified(whole).shard}


def test_ipv6_fragments_first_and_rest() -> None:
    datagram = udp(INVITE)
    first = ethernet(ipv6_chain(ipv6_fragment(UDP, 0, True, 7) + datagram[:400], FRAGMENT), ethertype=V6)
    rest = ethernet(ipv6_chain(ipv6_fragment(UDP, 400, False, 7) + datagram[400:], FRAGMENT), ethertype=V6)
    events = [classified(first), classified(rest)]
    assert all(e.flags & Flag.FRAGMENT and e.flags & Flag.IPV6 for e in events)
    assert (events[0].l4_offset, events[1].l4_offset) == (14 + 40 + 8, 0)
    assert events[0].flow_hash == events[1].flow_hash


@pytest.mark.parametrize("frame", [
    ethernet(b"", vlans=(10,))[:16],
    ethernet(ipv4(udp(INVITE)))[:30],
    ethernet(b"\x43" + ipv4(udp(INVITE))[1:]),                                 # IHL 3
    ethernet(ipv4(udp(INVITE)))[:14 + 20 + 4],                                 # UDP cut
    ethernet(ipv4(tcp(INVITE)[:12] + b"\x30" + tcp(INVITE)[13:], proto=TCP)),  # data offset 3
    ethernet(ipv6(udp(INVITE)), ethertype=V6)[:40],
    ethernet(ipv6_chain(ipv6_ext(UDP)[:1], HOP_BY_HOP), ethertype=V6),
    ethernet(b"\0" * 28, ethertype=0x0806),                                    # ARP
    ethernet(ipv4(b"\x08\0" + b"\0" * 30, proto=ICMP)),
    ethernet(ipv4(udp(INVITE, 4000, 4001))),                                    # no SIP port
], ids=["vlan-cut", "ipv4-cut", "ihl-3", "udp-cut", "tcp-doff-3", "ipv6-cut", "ext-cut", "arp", "icmp",
        "other-port"])
def test_what_is_not_ours_builds_no_event(frame: bytes) -> None:
    assert classify_frame(frame, RULES) is None


def test_signature_is_off_by_default() -> None:
    assert classify_frame(ethernet(ipv4(udp(INVITE, 7000, 7001))), RULES) is None


@pytest.mark.parametrize("payload", [INVITE, OK_200, b"OPTIONS sip:x SIP/2.0\r\n\r\n",
                                     b"REGISTER sip:x SIP/2.0\r\n\r\n", b"ACK sip:x SIP/2.0\r\n\r\n"],
                         ids=["invite", "status", "options", "register", "ack"])
def test_sip_on_any_port_by_signature(payload: bytes) -> None:
    event = classified(ethernet(ipv4(udp(payload, 7000, 7001))), Rules(SIP_PORTS, signature=True))
    assert event.kind == Kind.SIP and event.flags & Flag.SIGNATURE


@pytest.mark.parametrize("payload", [b"HTTP/1.1 200 OK\r\n", b"INVITED x", b"SIP/2.1 200", b"ACK",
                                     b"\x80\x00" + b"\0" * 20])
def test_near_misses_do_not_match_the_signature(payload: bytes) -> None:
    assert classify_frame(ethernet(ipv4(udp(payload, 7000, 7001))), Rules(SIP_PORTS, signature=True)) is None


def test_signature_is_udp_only() -> None:
    frame = ethernet(ipv4(tcp(INVITE, 7000, 7001), proto=TCP))
    assert classify_frame(frame, Rules(SIP_PORTS, signature=True)) is None


def test_learned_rtp_and_rtcp_flows_go_to_the_learning_worker() -> None:
    rtp = (ipaddress.ip_address("10.4.0.2").packed, 40000, UDP)
    rtcp = (ipaddress.ip_address("10.4.0.2").packed, 40001, UDP)
    learned = Rules(SIP_PORTS, shards=SHARDS, media={rtp: (Kind.RTP, 1), rtcp: (Kind.RTCP, 0)})
    to_rtp = ethernet(ipv4(udp(RTP_PAYLOAD, 30000, 40000), src="10.4.0.1", dst="10.4.0.2"))
    from_rtp = ethernet(ipv4(udp(RTP_PAYLOAD, 40000, 30000), src="10.4.0.2", dst="10.4.0.1"))
    to_rtcp = ethernet(ipv4(udp(b"\x81\xc8" + bytes(50), 30001, 40001), src="10.4.0.1", dst="10.4.0.2"))
    assert classify_frame(to_rtp, RULES) is None, "nothing learned: not ours"
    for frame in (to_rtp, from_rtp):
        event = classified(frame, learned)
        assert (event.kind, event.shard, event.flow_hash) == (Kind.RTP, 1, 1), "the owner in flow_hash"
        assert event.flags & Flag.OWNED
    event = classified(to_rtcp, learned)
    assert (event.kind, event.shard) == (Kind.RTCP, 0)


def test_an_owner_beyond_the_shards_reads_shard_zero() -> None:
    """The dispatcher's one ring: the owner tag may name a worker the ring count does not."""
    endpoint = (ipaddress.ip_address("10.4.0.2").packed, 40000, UDP)
    frame = ethernet(ipv4(udp(RTP_PAYLOAD, 30000, 40000), src="10.4.0.1", dst="10.4.0.2"))
    event = classified(frame, Rules(SIP_PORTS, media={endpoint: (Kind.RTP, 3)}))
    assert (event.shard, event.flow_hash) == (0, 3)


def test_learned_ipv6_flow() -> None:
    endpoint = (ipaddress.ip_address("fd00::2").packed, 40002, UDP)
    frame = ethernet(ipv6(udp(RTP_PAYLOAD, 30000, 40002)), ethertype=V6)
    event = classified(frame, Rules(SIP_PORTS, media={endpoint: (Kind.RTP, 0)}))
    assert event.kind == Kind.RTP and event.flags & Flag.IPV6


def test_sip_ports_come_before_learned_media() -> None:
    """A learned endpoint on a SIP port is still SIP: the verdict order is the kernel's."""
    endpoint = (ipaddress.ip_address("10.0.0.2").packed, 5060, UDP)
    event = classified(ethernet(ipv4(udp(INVITE))), Rules(SIP_PORTS, media={endpoint: (Kind.RTP, 0)}))
    assert event.kind == Kind.SIP


# ---- the screen: what the kernel keeps down after a match --------------------------------------------

def _screened(screen: Screen, *frames: bytes, ts_ns: int = 0) -> list[bool]:
    events = [classify_frame(frame, RULES, ts_ns=ts_ns) for frame in frames]
    assert all(events)
    return [screen.admit(event) for event in events if event is not None]


def test_the_screen_keeps_down_listed_methods_and_status_codes_and_their_answers() -> None:
    screen = Screen(("OPTIONS", "100"))
    frames = [ethernet(ipv4(udp(message))) for message in (
        request("OPTIONS"), response("100 Trying", "INVITE"), response("200 OK", "OPTIONS"), INVITE, OK_200)]
    assert _screened(screen, *frames) == [False, False, False, True, True]
    assert (screen.dropped_methods, screen.duplicates) == (3, 0)


def test_the_screen_does_not_look_into_tcp_or_fragments() -> None:
    screen = Screen(("OPTIONS",))
    over_tcp = ethernet(ipv4(tcp(request("OPTIONS"), 40000, 5060), proto=TCP))
    fragment = ethernet(ipv4(udp(request("OPTIONS"))[:100], frag=0x2000))
    assert _screened(screen, over_tcp, fragment) == [True, True]


def test_the_cseq_is_looked_for_within_the_snaplen_as_the_kernel_copies() -> None:
    frame = ethernet(ipv4(udp(response("200 OK", "OPTIONS"))))
    at = frame.index(b"OPTIONS\r")
    assert _screened(Screen(("OPTIONS",), snaplen=at + len("OPTIONS") + 1), frame) == [False]
    assert _screened(Screen(("OPTIONS",), snaplen=at + len("OPTIONS")), frame) == [True]


def test_a_snaplen_before_the_payload_reads_no_cseq_and_raises_nothing() -> None:
    """A snaplen shorter than the headers (64 bytes, a VLAN-tagged IPv6 answer): compiled
    with mypyc, a bytes slice whose end is before its start raised SystemError."""
    frame = ethernet(ipv6(udp(response("200 OK", "OPTIONS"))), ethertype=V6, vlans=(7,))
    assert _screened(Screen(("OPTIONS",), snaplen=64), frame) == [True]


def test_a_dropped_method_is_never_a_duplicate_but_a_dropped_answer_can_be() -> None:
    """The kernel's order: the method drop list, the window, then the answers' CSeq."""
    screen = Screen(("OPTIONS",), dedup_window_ns=50_000_000)
    ping = ethernet(ipv4(udp(request("OPTIONS"))))
    answer = ethernet(ipv4(udp(response("200 OK", "OPTIONS"))))
    assert _screened(screen, ping, ping, answer, answer) == [False] * 4
    assert (screen.dropped_methods, screen.duplicates) == (3, 1)


def test_duplicates_are_counted_by_the_packets_own_times_and_the_window_survives_a_change() -> None:
    screen = Screen(dedup_window_ns=50_000_000)
    frame = with_checksum(ethernet(ipv4(udp(INVITE))))
    assert _screened(screen, frame, ts_ns=0) == [True]
    assert _screened(screen, next_hop(frame), ts_ns=10_000_000) == [False]
    screen.change(("NOTIFY",), 20_000_000)
    assert _screened(screen, frame, ts_ns=20_000_000) == [True]   # 20 ms after: the new window's end
    assert _screened(screen, frame, ts_ns=30_000_000) == [False]
    screen.change((), None)
    assert not screen.active and _screened(screen, frame, frame) == [True, True]


def test_a_tunnelled_frame_is_judged_by_its_inner_addresses_and_counted() -> None:
    """The socket filter lets every tunnel through (its outer addresses are a mirror's):
    the kernel judges the inner addresses, and so must AF_PACKET and replay."""
    from tests.support.tunnels import inner_sip, vxlan  # noqa: PLC0415
    from userspace.classify import Networks  # noqa: PLC0415

    def verdict(frame: bytes, networks: Networks) -> bool:
        return classify_frame(frame, Rules(frozenset((5060,)), networks=networks)) is not None

    excluded = Networks([], [ipaddress.ip_network("10.1.0.0/24")])
    assert not verdict(vxlan(inner_sip(src="10.1.0.1", dst="10.2.0.2")), excluded)
    assert not verdict(vxlan(inner_sip(src="10.2.0.1", dst="10.1.0.9")), excluded), "either address"
    assert verdict(vxlan(inner_sip(src="10.2.0.1", dst="10.2.0.2")), excluded)
    plain_excluded = ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.2.0.2"))
    assert verdict(plain_excluded, excluded), "outside a tunnel: the socket filter's to judge"
    assert excluded.filtered == 2
    assert not verdict(plain_excluded, Networks([], ["10.1.0.0/24"], plain=True)), "replay: no socket filter"

    included = Networks(["10.1.0.0/24"], [])
    assert verdict(vxlan(inner_sip(src="10.3.0.1", dst="10.1.0.2")), included)
    assert not verdict(vxlan(inner_sip(src="10.3.0.1", dst="10.3.0.2")), included)
    inner_v6 = ethernet(ipv6(udp(INVITE, 5070, 5060), src="fd00::1", dst="fd00::2"), ethertype=V6)
    assert verdict(vxlan(inner_v6), included), "an include list of the other family only: as the kernel"
    assert not verdict(vxlan(inner_v6), Networks(["fd00::/64"], ["fd00::2/128"])), "exclude first"
    assert included.filtered == 1
