"""The kernel programs on crafted frames (BPF_PROG_TEST_RUN): each test checks
the verdict (always pass), the counter that moved, and the record written.
Every case runs through both hooks: XDP ingress and TC egress share one path
and must agree."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.kernel.conftest import MEDIA_SNAPLEN, SHARDS
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
    tcp,
    udp,
)
from tests.support.kernel import Hook, KernelHarness, Run
from tests.support.sip_samples import INVITE, OK_200
from tests.support.tunnels import gre, vxlan
from userspace.event import Counter, Flag, Kind
from userspace.sharding import call_id_hash

# An SR with one report block (52 bytes) and the SDES CNAME RFC 3550 asks to follow it.
RTCP_COMPOUND = (bytes([0x81, 200, 0, 12]) + bytes(48)
                 + bytes([0x81, 202, 0, 6]) + bytes(4) + bytes([1, 16]) + b"otus@10.4.0.1.xx" + bytes(2))


@pytest.fixture(params=[Hook.XDP, Hook.TC], ids=["xdp", "tc"])
def hook(request: pytest.FixtureRequest) -> Hook:
    hook: Hook = request.param
    return hook


def run(kernel: KernelHarness, frame: bytes, hook: Hook) -> Run:
    result = kernel.run(frame, hook)
    assert result.retval == hook.pass_verdict, "the packet must always pass"
    assert result.moved.get(Counter.SEEN) == 1
    return result


def verdicts(result: Run) -> set[Counter]:
    return {c for c in result.moved if Counter.NOT_IP <= c <= Counter.MATCHED_FRAGMENT}



def test_sip_on_its_port_is_copied_whole(kernel: KernelHarness, hook: Hook) -> None:
    frame = ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2"))
    result = run(kernel, frame, hook)
    assert verdicts(result) == {Counter.MATCHED_SIP_PORT}
    assert result.moved[Counter.SUBMITTED] == 1
    event = result.event
    assert (event.kind, event.direction, event.l4_proto) == (Kind.SIP, hook.direction, UDP)
    assert (event.l3_offset, event.l4_offset, event.payload_offset) == (14, 34, 42)
    assert event.frame == frame and event.cap_len == event.orig_len == len(frame)
    # Routed by its Call-ID: the hash in flow_hash, the shard from it.
    call_hash = call_id_hash(INVITE)
    assert call_hash is not None
    assert event.flags == Flag.OWNED
    assert (event.flow_hash, event.shard) == (call_hash, call_hash % SHARDS)


def test_both_directions_of_a_dialog_share_flow_hash_and_shard(kernel: KernelHarness, hook: Hook) -> None:
    there = run(kernel, ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")), hook)
    back = run(kernel, ethernet(ipv4(udp(OK_200, 5060, 5070), src="10.1.0.2", dst="10.1.0.1")), hook)
    assert there.event.flow_hash == back.event.flow_hash
    assert there.event.shard == back.event.shard


def test_a_trunk_between_two_hosts_spreads_over_the_shards_by_call_id(kernel: KernelHarness,
                                                                      hook: Hook) -> None:
    """The SBC-to-core case: one address pair, many dialogs."""
    shards = []
    for n in range(64):
        message = INVITE.replace(b"a84b4c76e66710", f"trunk-{n}".encode())
        event = run(kernel, ethernet(ipv4(udp(message), src="10.2.0.1", dst="10.9.9.9")), hook).event
        assert event.flags & Flag.OWNED
        shards.append(event.shard)
    assert all(shards.count(shard) >= 16 for shard in range(SHARDS)), shards


def test_sip_without_a_call_id_goes_by_its_conversation(kernel: KernelHarness, hook: Hook) -> None:
    shards = set()
    no_call_id = INVITE.replace(b"Call-ID", b"X-Nope")
    for host in range(1, 40):
        frame = ethernet(ipv4(udp(no_call_id), src=f"10.2.0.{host}", dst="10.9.9.9"))
        event = run(kernel, frame, hook).event
        assert event.shard == conversation_shard(f"10.2.0.{host}", "10.9.9.9", SHARDS)
        shards.add(event.shard)
    assert shards == set(range(SHARDS))


def test_sip_over_tcp_both_ports(kernel: KernelHarness, hook: Hook) -> None:
    for sport, dport in ((40000, 5061), (5061, 40000)):
        result = run(kernel, ethernet(ipv4(tcp(INVITE, sport, dport), proto=TCP)), hook)
        assert verdicts(result) == {Counter.MATCHED_SIP_PORT}
        assert (result.event.l4_proto, result.event.payload_offset) == (TCP, 54)


@pytest.mark.parametrize("vlans", [(10,), (100, 200)], ids=["802.1Q", "QinQ"])
def test_vlan_tags(kernel: KernelHarness, hook: Hook, vlans: tuple[int, ...]) -> None:
    frame = ethernet(ipv4(udp(INVITE)), vlans=vlans)
    result = run(kernel, frame, hook)
    assert verdicts(result) == {Counter.MATCHED_SIP_PORT}
    assert result.event.l3_offset == 14 + 4 * len(vlans)
    assert result.event.flags & Flag.VLAN
    assert result.event.frame == frame


def test_ipv4_options(kernel: KernelHarness, hook: Hook) -> None:
    frame = ethernet(ipv4(udp(INVITE), options=b"\x94\x04\x00\x00" + b"\x01" * 4))  # router alert + NOPs
    event = run(kernel, frame, hook).event
    assert (event.l4_offset, event.payload_offset) == (14 + 28, 14 + 28 + 8)


def test_ipv6_extension_headers(kernel: KernelHarness, hook: Hook) -> None:
    chain = (ipv6_ext(ROUTING)                 # hop-by-hop, 8 bytes
             + ipv6_ext(DEST_OPTS)             # routing, 8 bytes
             + ipv6_ext(DEST_OPTS, units=1)    # destination options, 16 bytes
             + ipv6_ext(AH)                    # destination options, 8 bytes
             + ipv6_ah(UDP)                    # authentication header, 24 bytes
             + udp(INVITE))
    frame = ethernet(ipv6_chain(chain, HOP_BY_HOP), ethertype=V6)
    result = run(kernel, frame, hook)
    assert verdicts(result) == {Counter.MATCHED_SIP_PORT}
    event = result.event
    assert event.flags & Flag.IPV6
    assert event.l4_offset == 14 + 40 + 8 + 8 + 16 + 8 + 24
    assert event.payload_offset == event.l4_offset + 8


def test_ipv4_fragments_first_and_rest(kernel: KernelHarness, hook: Hook) -> None:
    datagram = udp(INVITE)
    first = ethernet(ipv4(datagram[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000))
    middle = ethernet(ipv4(datagram[256:512], src="10.3.0.1", dst="10.3.0.2", frag=0x2000 | 32))
    last = ethernet(ipv4(datagram[512:], src="10.3.0.1", dst="10.3.0.2", frag=64))
    # SIP over TCP between the same hosts: not routed by Call-ID, it goes by its conversation.
    whole = ethernet(ipv4(tcp(OK_200, 5060, 5060), src="10.3.0.2", dst="10.3.0.1", proto=TCP))
    events = []
    for frame in (first, middle, last):
        result = run(kernel, frame, hook)
        assert verdicts(result) == {Counter.MATCHED_FRAGMENT}
        events.append(result.event)
    assert all(e.kind == Kind.FRAGMENT and e.flags & Flag.FRAGMENT for e in events)
    assert events[0].l4_offset == 34 and events[1].l4_offset == events[2].l4_offset == 0
    assert len({e.flow_hash for e in events}) == 1, "all fragments hash alike"
    assert not any(e.flags & Flag.OWNED for e in events), "a fragment's Call-ID is user space's to find"
    assert len({e.shard for e in events} | {run(kernel, whole, hook).event.shard}) == 1, \
        "fragments meet the rest of their conversation"


def test_ipv6_fragments_first_and_rest(kernel: KernelHarness, hook: Hook) -> None:
    datagram = udp(INVITE)
    first = ethernet(ipv6_chain(ipv6_fragment(UDP, 0, True, 7) + datagram[:400], FRAGMENT), ethertype=V6)
    rest = ethernet(ipv6_chain(ipv6_fragment(UDP, 400, False, 7) + datagram[400:], FRAGMENT), ethertype=V6)
    events = []
    for frame in (first, rest):
        result = run(kernel, frame, hook)
        assert verdicts(result) == {Counter.MATCHED_FRAGMENT}
        events.append(result.event)
    assert all(e.flags & Flag.FRAGMENT and e.flags & Flag.IPV6 for e in events)
    assert (events[0].l4_offset, events[1].l4_offset) == (14 + 40 + 8, 0)
    assert events[0].flow_hash == events[1].flow_hash


@pytest.mark.parametrize(("frame", "verdict"), [
    (ethernet(b"", vlans=(10,))[:16], Counter.TRUNCATED),                            # tag cut
    (ethernet(ipv4(udp(INVITE)))[:30], Counter.TRUNCATED),
    (ethernet(b"\x43" + ipv4(udp(INVITE))[1:]), Counter.MALFORMED),                 # IHL 3
    (ethernet(ipv4(udp(INVITE)))[:14 + 20 + 4], Counter.TRUNCATED),                  # UDP cut
    (ethernet(ipv4(tcp(INVITE)[:12] + b"\x30" + tcp(INVITE)[13:], proto=TCP)), Counter.MALFORMED),
    (ethernet(ipv6(udp(INVITE)), ethertype=V6)[:40], Counter.TRUNCATED),
    (ethernet(ipv6_chain(ipv6_ext(UDP)[:1], HOP_BY_HOP), ethertype=V6), Counter.TRUNCATED),
    (ethernet(b"\0" * 28, ethertype=0x0806), Counter.NOT_IP),                        # ARP
    (ethernet(ipv4(b"\x08\0" + b"\0" * 30, proto=ICMP)), Counter.OTHER_L4),
    (ethernet(ipv4(udp(INVITE, 4000, 4001))), Counter.NO_MATCH),
], ids=["vlan-cut", "ipv4-cut", "ihl-3", "udp-cut", "tcp-doff-3", "ipv6-cut", "ext-cut", "arp",
        "icmp", "other-port"])
def test_what_is_not_ours_is_counted_and_passed(kernel: KernelHarness, hook: Hook, frame: bytes,
                                                verdict: Counter, request: pytest.FixtureRequest) -> None:
    if hook is Hook.TC and request.node.callspec.id.endswith(SKB_NEEDS_IP_HEADER):
        # Test runs build an skb and pull its IP header first; the kernel
        # refuses these frames before our program runs (and never builds
        # such an skb on egress either).
        with pytest.raises(OSError, match="Invalid argument"):
            kernel.run(frame, hook)
        return
    result = run(kernel, frame, hook)
    assert verdicts(result) == {verdict}
    assert result.events == []
    assert Counter.SUBMITTED not in result.moved


SKB_NEEDS_IP_HEADER = ("ipv4-cut", "ipv6-cut")


@pytest.fixture
def signature(kernel: KernelHarness) -> Iterator[None]:
    kernel.maps.configure(signature=True, sip_snaplen=2048, media_snaplen=MEDIA_SNAPLEN)
    try:
        yield
    finally:
        kernel.maps.configure(signature=False, sip_snaplen=2048, media_snaplen=MEDIA_SNAPLEN)


def test_signature_is_off_by_default(kernel: KernelHarness, hook: Hook) -> None:
    assert verdicts(run(kernel, ethernet(ipv4(udp(INVITE, 7000, 7001))), hook)) == {Counter.NO_MATCH}


@pytest.mark.usefixtures("signature")
@pytest.mark.parametrize("payload", [INVITE, OK_200, b"OPTIONS sip:x SIP/2.0\r\n\r\n",
                                     b"REGISTER sip:x SIP/2.0\r\n\r\n", b"ACK sip:x SIP/2.0\r\n\r\n"],
                         ids=["invite", "status", "options", "register", "ack"])
def test_sip_on_any_port_by_signature(kernel: KernelHarness, hook: Hook, payload: bytes) -> None:
    result = run(kernel, ethernet(ipv4(udp(payload, 7000, 7001))), hook)
    assert verdicts(result) == {Counter.MATCHED_SIP_SIGNATURE}
    assert result.event.kind == Kind.SIP and result.event.flags & Flag.SIGNATURE


@pytest.mark.usefixtures("signature")
@pytest.mark.parametrize("payload", [b"HTTP/1.1 200 OK\r\n", b"INVITED x", b"SIP/2.1 200", b"ACK",
                                     b"\x80\x00" + b"\0" * 20])
def test_near_misses_do_not_match_the_signature(kernel: KernelHarness, hook: Hook, payload: bytes) -> None:
    assert verdicts(run(kernel, ethernet(ipv4(udp(payload, 7000, 7001))), hook)) == {Counter.NO_MATCH}


def test_learned_rtp_and_rtcp_flows(kernel: KernelHarness, hook: Hook) -> None:
    rtp = (ipaddress.ip_address("10.4.0.2").packed, 40000)
    rtcp = (ipaddress.ip_address("10.4.0.2").packed, 40001)
    to_rtp = ethernet(ipv4(udp(RTP_PAYLOAD, 30000, 40000), src="10.4.0.1", dst="10.4.0.2"))
    from_rtp = ethernet(ipv4(udp(RTP_PAYLOAD, 40000, 30000), src="10.4.0.2", dst="10.4.0.1"))
    to_rtcp = ethernet(ipv4(udp(RTCP_COMPOUND, 30001, 40001), src="10.4.0.1", dst="10.4.0.2"))
    muxed_rtcp = ethernet(ipv4(udp(RTCP_COMPOUND, 30000, 40000), src="10.4.0.1", dst="10.4.0.2"))
    assert verdicts(run(kernel, to_rtp, hook)) == {Counter.NO_MATCH}
    kernel.maps.learn_flow(rtp, Kind.RTP, shard=1)
    kernel.maps.learn_flow(rtcp, Kind.RTCP, shard=0)
    try:
        for frame in (to_rtp, from_rtp):
            result = run(kernel, frame, hook)
            assert verdicts(result) == {Counter.MATCHED_RTP}
            event = result.event
            assert (event.kind, event.shard) == (Kind.RTP, 1), "media goes to the learning worker"
            assert event.cap_len == 42 + MEDIA_SNAPLEN and event.orig_len == len(frame)
            assert event.frame == frame[:42 + MEDIA_SNAPLEN]
        result = run(kernel, to_rtcp, hook)
        assert verdicts(result) == {Counter.MATCHED_RTCP}
        assert (result.event.kind, result.event.shard) == (Kind.RTCP, 0)
        assert result.event.frame == to_rtcp, "RTCP is read whole, past the media snaplen"
        result = run(kernel, muxed_rtcp, hook)  # RFC 5761: on the RTP port, told apart by its type
        assert (verdicts(result), result.event.kind) == ({Counter.MATCHED_RTP}, Kind.RTP)
        assert result.event.frame == muxed_rtcp
    finally:
        kernel.maps.forget_flow(rtp)
        kernel.maps.forget_flow(rtcp)
    assert verdicts(run(kernel, to_rtp, hook)) == {Counter.NO_MATCH}


def test_a_shared_endpoint_sends_each_flow_to_the_worker_of_its_other_end(kernel: KernelHarness,
                                                                          hook: Hook) -> None:
    server = (ipaddress.ip_address("10.4.0.9").packed, 50000)    # calls in two workers announced it
    caller = (ipaddress.ip_address("10.4.0.1").packed, 40000)    # one call's own, in worker 0
    kernel.maps.learn_flow(server, Kind.RTP, shard=1, shared=True)  # the newest holder is in worker 1
    kernel.maps.learn_flow(caller, Kind.RTP, shard=0)
    try:
        def shard_of(src: str, sport: int, dst: str, dport: int) -> int:
            result = run(kernel, ethernet(ipv4(udp(RTP_PAYLOAD, sport, dport), src=src, dst=dst)), hook)
            assert verdicts(result) == {Counter.MATCHED_RTP}
            return result.event.shard

        assert shard_of("10.4.0.1", 40000, "10.4.0.9", 50000) == 0, "to the server from worker 0's caller"
        assert shard_of("10.4.0.9", 50000, "10.4.0.1", 40000) == 0, "to that caller"
        assert shard_of("10.4.0.7", 42000, "10.4.0.9", 50000) == 1, "from an end nobody holds: the owner"
        kernel.maps.learn_flow(server, Kind.RTP, shard=1, shared=False)
        assert shard_of("10.4.0.1", 40000, "10.4.0.9", 50000) == 1, "not shared: the destination decides"
    finally:
        kernel.maps.forget_flow(server)
        kernel.maps.forget_flow(caller)


def test_learned_ipv6_flow(kernel: KernelHarness, hook: Hook) -> None:
    endpoint = (ipaddress.ip_address("fd00::2").packed, 40002)
    kernel.maps.learn_flow(endpoint, Kind.RTP, shard=0)
    try:
        frame = ethernet(ipv6(udp(RTP_PAYLOAD, 30000, 40002)), ethertype=V6)
        assert verdicts(run(kernel, frame, hook)) == {Counter.MATCHED_RTP}
    finally:
        kernel.maps.forget_flow(endpoint)


def test_excluded_networks_are_filtered_fragments_too(kernel: KernelHarness, hook: Hook) -> None:
    v4 = ipaddress.ip_network("10.5.0.0/16")
    v6 = ipaddress.ip_network("fd00:5::/32")
    sip = ethernet(ipv4(udp(INVITE), src="10.5.1.1", dst="10.6.0.1"))
    fragment = ethernet(ipv4(udp(INVITE)[:200], src="10.6.0.1", dst="10.5.1.1", frag=0x2000))
    sip6 = ethernet(ipv6(udp(INVITE), src="fd00:5::1", dst="fd00:6::1"), ethertype=V6)
    kernel.maps.add_network("exclude", v4)
    kernel.maps.add_network("exclude", v6)
    try:
        for frame in (sip, fragment, sip6):
            result = run(kernel, frame, hook)
            assert verdicts(result) == {Counter.FILTERED}
            assert result.events == []
        other = ethernet(ipv4(udp(INVITE), src="10.6.0.1", dst="10.7.0.1"))
        assert verdicts(run(kernel, other, hook)) == {Counter.MATCHED_SIP_PORT}
    finally:
        kernel.maps.remove_network("exclude", v4)
        kernel.maps.remove_network("exclude", v6)
    assert verdicts(run(kernel, sip, hook)) == {Counter.MATCHED_SIP_PORT}


def test_include_list_limits_capture(kernel: KernelHarness, hook: Hook) -> None:
    network = ipaddress.ip_network("192.0.2.0/24")
    kernel.maps.add_network("include", network)
    try:
        inside = ethernet(ipv4(udp(INVITE), src="198.51.100.1", dst="192.0.2.7"))
        outside = ethernet(ipv4(udp(INVITE), src="198.51.100.1", dst="203.0.113.7"))
        assert verdicts(run(kernel, inside, hook)) == {Counter.MATCHED_SIP_PORT}
        assert verdicts(run(kernel, outside, hook)) == {Counter.FILTERED}
        v6 = ethernet(ipv6(udp(INVITE)), ethertype=V6)  # no v6 include list: not limited
        assert verdicts(run(kernel, v6, hook)) == {Counter.MATCHED_SIP_PORT}
    finally:
        kernel.maps.remove_network("include", network)


def test_sip_ports_change_at_run_time(kernel: KernelHarness, hook: Hook) -> None:
    frame = ethernet(ipv4(udp(INVITE, 5080, 5080)))
    assert verdicts(run(kernel, frame, hook)) == {Counter.NO_MATCH}
    kernel.maps.set_sip_ports([5080])
    try:
        assert verdicts(run(kernel, frame, hook)) == {Counter.MATCHED_SIP_PORT}
    finally:
        kernel.maps.set_sip_ports([5080], enabled=False)
    assert verdicts(run(kernel, frame, hook)) == {Counter.NO_MATCH}


def test_paused_capture_sends_nothing_up_and_resumes(kernel: KernelHarness, hook: Hook) -> None:
    frame = ethernet(ipv4(udp(INVITE)))
    kernel.maps.set_paused(True)
    try:
        paused = run(kernel, frame, hook)
        assert verdicts(paused) == {Counter.FILTERED} and paused.events == []
        for tunnel in (gre(ipv4(udp(INVITE)), 0x0800), vxlan(ethernet(ipv4(udp(INVITE))))):
            paused = run(kernel, tunnel, hook)  # no tunnel is opened (nor counted) while paused
            assert verdicts(paused) == {Counter.FILTERED} and paused.events == [], paused.moved
            assert not [c for c in paused.moved if c.name.startswith("DECAP")], paused.moved
    finally:
        kernel.maps.set_paused(False)
    resumed = run(kernel, frame, hook)
    assert verdicts(resumed) == {Counter.MATCHED_SIP_PORT} and len(resumed.events) == 1


def test_snaplen_caps_large_sip_frames(kernel: KernelHarness, hook: Hook) -> None:
    big = INVITE + b"x" * 2400
    frame = ethernet(ipv4(udp(big)))
    event = run(kernel, frame, hook).event
    assert event.orig_len == len(frame)
    assert event.cap_len == 2048 and event.frame == frame[:2048]


def test_verdicts_add_up_to_seen(kernel: KernelHarness) -> None:
    counts = kernel.counters()
    for direction in {d for d, _c in counts}:
        seen = counts[direction, Counter.SEEN]
        verdict_sum = sum(counts[direction, c] for c in Counter
                          if Counter.NOT_IP <= c <= Counter.MATCHED_FRAGMENT)
        assert seen > 0 and verdict_sum == seen
