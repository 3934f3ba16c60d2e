"""One level of decapsulation in the kernel programs (bpf/otus.c "Tunnels"), on
crafted frames through both hooks: each kind opened and counted, the inner SIP
message matched and copied with its outer headers (offsets into the inner
packet, flag INNER), inner tags and fragments as at the outer level, and every
hostile tunnel header a counted verdict. Verdicts always sum to SEEN."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from otus_ebpf.kernel.abi import PortBit
from tests.kernel.conftest import MEDIA_SNAPLEN, SHARDS
from tests.support.frames import V6, ethernet, ipv4, ipv6, udp
from tests.support.kernel import Hook, KernelHarness, Run
from tests.support.sip_samples import INVITE
from tests.support.tunnels import (
    TEB,
    erspan2,
    erspan3,
    from_source,
    geneve,
    gre,
    inner_sip,
    ipip,
    underlay_fragments,
    vxlan,
)
from userspace.classify import Networks, Rules, classify_frame
from userspace.event import VERDICTS, Counter, Flag, Kind
from userspace.frame import UDP, encapsulation, packet_at
from userspace.tunnel import TunnelCode, TunnelCounts, TunnelKind, Tunnels, media_protocol, mirror_ranges

INNER_V4 = ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")
INNER_V6 = ipv6(udp(INVITE, 5070, 5060), src="fd00::a", dst="fd00::b")

# name -> (frame, the kind counter, the tunnel's kind, its id)
TUNNELS = {
    "vxlan": (vxlan(inner_sip()), Counter.DECAP_VXLAN, TunnelKind.VXLAN, 100),
    "vxlan-over-ipv6": (vxlan(inner_sip(), v6=True), Counter.DECAP_VXLAN, TunnelKind.VXLAN, 100),
    "geneve": (geneve(inner_sip()), Counter.DECAP_GENEVE, TunnelKind.GENEVE, 200),
    "geneve-options": (geneve(inner_sip(), options=bytes(12)), Counter.DECAP_GENEVE, TunnelKind.GENEVE, 200),
    "geneve-ipv4": (geneve(INNER_V4, proto=0x0800), Counter.DECAP_GENEVE, TunnelKind.GENEVE, 200),
    "gre-ipv4": (gre(INNER_V4, 0x0800), Counter.DECAP_GRE, TunnelKind.GRE, None),
    "gre-ipv6-key-seq": (gre(INNER_V6, 0x86DD, key=0xABCD, seq=5), Counter.DECAP_GRE, TunnelKind.GRE, 0xABCD),
    "gre-checksum": (gre(INNER_V4, 0x0800, csum=True), Counter.DECAP_GRE, TunnelKind.GRE, None),
    "gre-ethernet": (gre(inner_sip(), TEB, key=42), Counter.DECAP_GRE, TunnelKind.GRE, 42),
    "gre-over-ipv6": (gre(INNER_V4, 0x0800, v6=True), Counter.DECAP_GRE, TunnelKind.GRE, None),
    "erspan2": (erspan2(inner_sip()), Counter.DECAP_ERSPAN, TunnelKind.ERSPAN, 7),
    "erspan3": (erspan3(inner_sip()), Counter.DECAP_ERSPAN, TunnelKind.ERSPAN, 9),
    "erspan3-platform": (erspan3(inner_sip(), platform=True), Counter.DECAP_ERSPAN, TunnelKind.ERSPAN, 9),
    "ipip": (ipip(INNER_V4), Counter.DECAP_IPIP, TunnelKind.IPIP, None),
    "ipv6-in-ipv4": (ipip(INNER_V6, inner_v6=True), Counter.DECAP_IPIP, TunnelKind.IPIP, None),
    "ipv4-in-ipv6": (ipip(INNER_V4, v6=True), Counter.DECAP_IPIP, TunnelKind.IPIP, None),
    "ipv6-in-ipv6": (ipip(INNER_V6, inner_v6=True, v6=True), Counter.DECAP_IPIP, TunnelKind.IPIP, None),
    "vxlan-inner-vlan": (vxlan(inner_sip(vlans=(300,))), Counter.DECAP_VXLAN, TunnelKind.VXLAN, 100),
    "erspan2-inner-qinq": (erspan2(inner_sip(vlans=(10, 20))), Counter.DECAP_ERSPAN, TunnelKind.ERSPAN, 7),
}

# name -> (frame, its verdict): refused tunnel headers (DECAP_BAD)
HOSTILE = {
    "vxlan-without-i-flag": (vxlan(inner_sip(), flags=0), Counter.MALFORMED),
    "vxlan-cut-short": (vxlan(b"")[:-4], Counter.TRUNCATED),
    "geneve-version-1": (geneve(inner_sip(), version=1), Counter.MALFORMED),
    "geneve-options-past-the-end": (geneve(inner_sip()[:200], opt_words=63), Counter.TRUNCATED),
    "gre-routing-bit": (gre(INNER_V4, 0x0800, extra_flags=0x4000), Counter.MALFORMED),
    "gre-version-1": (gre(INNER_V4, 0x0800, extra_flags=1), Counter.MALFORMED),
    "gre-cut-short": (gre(b"", 0x0800)[:-2], Counter.TRUNCATED),
    "erspan-version-3": (erspan2(inner_sip(), version=3), Counter.MALFORMED),
    "erspan3-ip-frame-type": (erspan3(inner_sip(), frame_type=2), Counter.MALFORMED),
    "erspan-cut-short": (gre(b"\x10\x00", 0x88BE, seq=1), Counter.TRUNCATED),
}


@pytest.fixture(params=[Hook.XDP, Hook.TC], ids=["xdp", "tc"])
def hook(request: pytest.FixtureRequest) -> Hook:
    hook: Hook = request.param
    return hook


@pytest.fixture
def every_kind(kernel: KernelHarness) -> Iterator[KernelHarness]:
    """Whatever a test turned off comes back on."""
    yield kernel
    kernel.maps.set_decap(TunnelKind)


def run(kernel: KernelHarness, frame: bytes, hook: Hook) -> Run:
    result = kernel.run(frame, hook)
    assert result.retval == hook.pass_verdict, "the packet must always pass"
    assert result.moved.get(Counter.SEEN) == 1
    moved_verdicts = [c for c in result.moved if c in VERDICTS]
    assert len(moved_verdicts) == 1 and result.moved[moved_verdicts[0]] == 1, result.moved
    return result


def verdict(result: Run) -> Counter:
    (found,) = (c for c in result.moved if c in VERDICTS)
    return found


@pytest.mark.parametrize("name", TUNNELS)
def test_sip_inside_each_tunnel_is_copied_with_its_outer_headers(every_kind: KernelHarness, hook: Hook,
                                                                   name: str) -> None:
    frame, counter, kind, tunnel_id = TUNNELS[name]
    result = run(every_kind, frame, hook)
    assert verdict(result) == Counter.MATCHED_SIP_PORT
    assert result.moved[counter] == 1 and Counter.DECAP_BAD not in result.moved
    event = result.event
    assert event.kind == Kind.SIP and event.flags & Flag.INNER
    assert bool(event.flags & Flag.VLAN) == ("vlan" in name or "qinq" in name)
    assert event.frame == frame, "the copy starts at the outer frame's first byte"
    packet = packet_at(event.frame, event.l3_offset, event.l4_offset, event.flags, event.l4_proto)
    assert getattr(packet, "payload", None) == INVITE
    assert (packet.sport, packet.dport) == (5070, 5060)  # type: ignore[union-attr]
    encap = encapsulation(event.frame)
    assert encap is not None and (encap.kind, encap.id) == (kind, tunnel_id)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_refused_tunnel_header_is_counted_never_followed(kernel: KernelHarness, hook: Hook,
                                                           name: str) -> None:
    frame, expected = HOSTILE[name]
    result = run(kernel, frame, hook)
    assert verdict(result) == expected
    assert result.moved[Counter.DECAP_BAD] == 1
    assert result.events == []


def test_a_tunnel_inside_a_tunnel_is_counted_not_opened(kernel: KernelHarness, hook: Hook) -> None:
    vxlan_header = bytes((0x08, 0, 0, 0, 0, 0, 100, 0))
    for frame in (vxlan(ethernet(ipv4(udp(vxlan_header + inner_sip(), 49152, 4789)))),
                  gre(ipv4(INNER_V4, proto=4), 0x0800)):
        result = run(kernel, frame, hook)
        assert result.moved[Counter.DECAP_NESTED] == 1
        assert verdict(result) in (Counter.NO_MATCH, Counter.OTHER_L4)
        assert result.events == []


def test_an_inner_fragmented_invite_goes_up_as_fragments(kernel: KernelHarness, hook: Hook) -> None:
    datagram = udp(INVITE, 5070, 5060)
    first = ethernet(ipv4(datagram[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000))
    last = ethernet(ipv4(datagram[256:], src="10.3.0.1", dst="10.3.0.2", frag=32))
    for inner in (first, last):
        result = run(kernel, vxlan(inner), hook)
        assert verdict(result) == Counter.MATCHED_FRAGMENT
        event = result.event
        assert event.kind == Kind.FRAGMENT and event.flags & Flag.INNER and event.flags & Flag.FRAGMENT


def test_a_tunnel_the_underlay_fragmented_goes_up_as_fragments_unopened(kernel: KernelHarness,
                                                                          hook: Hook) -> None:
    """A GRE datagram in two fragments: the first is not opened cut short; both go up as
    fragments of the outer datagram (user space opens the tunnel once it is whole)."""
    for fragment in underlay_fragments(gre(INNER_V4, 0x0800, key=5)):
        result = run(kernel, fragment, hook)
        assert verdict(result) == Counter.MATCHED_FRAGMENT
        assert Counter.DECAP_GRE not in result.moved and Counter.DECAP_BAD not in result.moved
        event = result.event
        assert event.kind == Kind.FRAGMENT and not event.flags & Flag.INNER and event.l4_proto == 47


def test_a_kind_turned_off_is_not_opened(every_kind: KernelHarness, hook: Hook) -> None:
    every_kind.maps.set_decap(set(TunnelKind) - {TunnelKind.VXLAN, TunnelKind.GRE})
    assert verdict(run(every_kind, vxlan(inner_sip()), hook)) == Counter.NO_MATCH
    assert verdict(run(every_kind, gre(INNER_V4, 0x0800), hook)) == Counter.OTHER_L4
    result = run(every_kind, erspan2(inner_sip()), hook)  # ERSPAN is on: GRE carrying it opens
    assert verdict(result) == Counter.MATCHED_SIP_PORT and result.moved[Counter.DECAP_ERSPAN] == 1
    every_kind.maps.set_decap(())
    assert verdict(run(every_kind, ipip(INNER_V4), hook)) == Counter.OTHER_L4


def test_an_extra_vxlan_port_opens_and_a_tunnel_without_sip_is_no_match(every_kind: KernelHarness,
                                                                         hook: Hook) -> None:
    every_kind.maps.set_tunnel_ports((8472,), PortBit.VXLAN)
    try:
        result = run(every_kind, vxlan(inner_sip(), port=8472), hook)
        assert verdict(result) == Counter.MATCHED_SIP_PORT and result.moved[Counter.DECAP_VXLAN] == 1
    finally:
        every_kind.maps.set_tunnel_ports((8472,), PortBit.VXLAN, enabled=False)
    other = vxlan(ethernet(ipv4(udp(b"hello", 4000, 4001))))
    result = run(every_kind, other, hook)
    assert verdict(result) == Counter.NO_MATCH and result.moved[Counter.DECAP_VXLAN] == 1


def test_ipv6_inner_with_an_ethertype_the_tunnel_names(kernel: KernelHarness, hook: Hook) -> None:
    result = run(kernel, gre(ethernet(INNER_V6, ethertype=V6), TEB), hook)
    assert verdict(result) == Counter.MATCHED_SIP_PORT
    assert result.event.flags & Flag.IPV6 and result.event.flags & Flag.INNER


def test_the_address_filters_judge_the_inner_addresses_not_the_mirrors(kernel: KernelHarness,
                                                                        hook: Hook) -> None:
    inner_net, other_net = ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("10.9.0.0/16")
    for network, expected in ((inner_net, Counter.MATCHED_SIP_PORT), (other_net, Counter.FILTERED)):
        kernel.maps.add_network("include", network)
        try:
            for frame in (vxlan(inner_sip()), gre(INNER_V4, 0x0800)):
                assert verdict(run(kernel, frame, hook)) == expected
        finally:
            kernel.maps.remove_network("include", network)


def test_an_ip_tunnels_fragments_pass_the_address_filters_to_be_judged_whole(kernel: KernelHarness,
                                                                             hook: Hook) -> None:
    """An include list that does not cover the mirror: a GRE tunnel's fragments still go up
    (user space judges the inner addresses once the datagram is whole), as Python's
    classification decides; a plain fragment from the mirror does not."""
    network = ipaddress.ip_network("10.1.0.0/16")
    rules = Rules(frozenset({5060}), shards=SHARDS, networks=Networks.of([network], [], plain=True))
    kernel.maps.add_network("include", network)
    try:
        for v6 in (False, True):
            for fragment in underlay_fragments(gre(inner_sip(), TEB, key=2, v6=v6)):
                assert verdict(run(kernel, fragment, hook)) == Counter.MATCHED_FRAGMENT
                assert classify_frame(fragment, rules) is not None
        plain = underlay_fragments(ethernet(ipv4(udp(INVITE, 5070, 5060), src="192.0.2.1", dst="192.0.2.2")))
        for fragment in plain:
            assert verdict(run(kernel, fragment, hook)) == Counter.FILTERED
            assert classify_frame(fragment, rules) is None
    finally:
        kernel.maps.remove_network("include", network)


def test_tunnels_open_only_from_the_trusted_mirrors(kernel: KernelHarness, hook: Hook) -> None:
    """--mirror 192.0.2.1/32: a tunnel from the mirror opens; the same from another host is
    not opened (counted DECAP_UNTRUSTED, NO_MATCH for UDP, OTHER_L4 for GRE), nor one over
    IPv6 (no IPv6 mirror set); Python's walk decides and counts alike."""
    mirror = ipaddress.ip_network("192.0.2.1/32")
    tunnels = Tunnels(mirrors=mirror_ranges([mirror]))
    frames = {"vxlan": vxlan(inner_sip()), "gre": gre(INNER_V4, 0x0800)}
    kernel.maps.add_network("mirrors", mirror)
    try:
        for name, frame in frames.items():
            for source, untrusted in ((frame, False), (from_source(frame, "192.0.2.9"), True)):
                result = run(kernel, source, hook)
                counts = TunnelCounts()
                built = classify_frame(source, Rules(frozenset({5060}), shards=SHARDS, tunnels=tunnels,
                                                     counts=counts))
                if untrusted:
                    expected = Counter.NO_MATCH if name == "vxlan" else Counter.OTHER_L4
                    assert verdict(result) == expected and result.moved[Counter.DECAP_UNTRUSTED] == 1
                    assert built is None and counts.untrusted == 1
                else:
                    assert verdict(result) == Counter.MATCHED_SIP_PORT
                    assert Counter.DECAP_UNTRUSTED not in result.moved
                    assert built is not None and counts.untrusted == 0
        over_ipv6 = run(kernel, gre(inner_sip(), TEB, v6=True), hook)
        assert verdict(over_ipv6) == Counter.OTHER_L4 and over_ipv6.moved[Counter.DECAP_UNTRUSTED] == 1
        # with --signature, SIP-looking bytes in a refused VXLAN datagram are still no match
        kernel.maps.configure(signature=True, sip_snaplen=2048, media_snaplen=MEDIA_SNAPLEN,
                              media_packets=True)
        spoofed = from_source(vxlan(inner_sip()), "192.0.2.9")
        by_signature = run(kernel, spoofed, hook)
        assert verdict(by_signature) == Counter.NO_MATCH, "the tunnel port decides before the signature"
        assert classify_frame(spoofed, Rules(frozenset({5060}), True, shards=SHARDS, tunnels=tunnels)) is None
    finally:
        kernel.maps.configure(signature=False, sip_snaplen=2048, media_snaplen=MEDIA_SNAPLEN,
                              media_packets=True)  # as the module's harness set it
        kernel.maps.remove_network("mirrors", mirror)
    assert verdict(run(kernel, from_source(frames["gre"], "192.0.2.9"), hook)) == Counter.MATCHED_SIP_PORT


def test_media_learned_inside_a_tunnel_is_matched_inside_that_kind_only(kernel: KernelHarness,
                                                                        hook: Hook) -> None:
    endpoint = (ipaddress.ip_address("10.4.0.2").packed, 40000)
    rtp = ethernet(ipv4(udp(bytes([0x80, 0]) + bytes(170), 30000, 40000), src="10.4.0.1", dst="10.4.0.2"))
    kernel.maps.learn_flow(endpoint, Kind.RTP, shard=1, tunnel=TunnelCode.VXLAN)
    try:
        result = run(kernel, vxlan(rtp), hook)
        assert verdict(result) == Counter.MATCHED_RTP and result.event.flags & Flag.INNER
        for elsewhere in (rtp, gre(rtp, TEB), geneve(rtp)):
            assert verdict(run(kernel, elsewhere, hook)) == Counter.NO_MATCH
        rules = Rules(frozenset({5060}), shards=2,
                      media={(*endpoint, media_protocol(UDP, TunnelCode.VXLAN)): (Kind.RTP, 1)})
        assert classify_frame(vxlan(rtp), rules) is not None
        assert classify_frame(rtp, rules) is None and classify_frame(gre(rtp, TEB), rules) is None
    finally:
        kernel.maps.forget_flow(endpoint, tunnel=TunnelCode.VXLAN)
    assert verdict(run(kernel, vxlan(rtp), hook)) == Counter.NO_MATCH, "forgotten with its tunnel"


def test_sip_and_learned_media_on_a_tunnels_port_are_not_taken_for_a_tunnel(kernel: KernelHarness,
                                                                           hook: Hook) -> None:
    """SIP and learned media come first: a UA behind NAT on port 4789, or media a
    party announced at 4789 (to hide it, or by chance), is matched as itself, in
    the kernel and in its Python mirror alike."""
    sip_to_4789 = ethernet(ipv4(udp(INVITE, 5060, 4789), src="10.1.0.1", dst="10.1.0.2"))
    assert verdict(run(kernel, sip_to_4789, hook)) == Counter.MATCHED_SIP_PORT
    rules = Rules(frozenset({5060}), shards=SHARDS)
    event = classify_frame(sip_to_4789, rules)
    assert event is not None and event.kind == Kind.SIP and not event.flags & Flag.INNER
    endpoint = (ipaddress.ip_address("10.4.0.2").packed, 4789)
    rtp = ethernet(ipv4(udp(bytes([0x80, 0]) + bytes(170), 30000, 4789), src="10.4.0.1", dst="10.4.0.2"))
    kernel.maps.learn_flow(endpoint, Kind.RTP, shard=1)
    try:
        assert verdict(run(kernel, rtp, hook)) == Counter.MATCHED_RTP
        media_rules = Rules(frozenset({5060}), shards=SHARDS, media={(*endpoint, UDP): (Kind.RTP, 1)})
        event = classify_frame(rtp, media_rules)
        assert event is not None and event.kind == Kind.RTP and not event.flags & Flag.INNER
    finally:
        kernel.maps.forget_flow(endpoint)
    assert verdict(run(kernel, rtp, hook)) != Counter.MATCHED_RTP  # unlearned: taken for VXLAN again
