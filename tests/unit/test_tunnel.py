"""One level of decapsulation in Python (userspace.tunnel, userspace.frame.walk):
each kind opened with its id and outer addresses, each refusal the kernel makes
made here, cut-short frames never an exception, and tunnelled SIP recorded
with its ``encap``, its fragments reassembled per tunnel."""

from __future__ import annotations

import contextlib
import ipaddress

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.settings import KernelSettings
from tests.support.frames import TCP, V6, ethernet, ipv4, ipv6, raw, tcp, udp
from tests.support.sip_samples import INVITE, OK_200
from tests.support.tunnels import (
    OUTER_DST,
    OUTER_SRC,
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
from userspace.errors import DecodeError
from userspace.event import Flag, Kind
from userspace.frame import UDP, Packet, encapsulation, packet_at, walk
from userspace.pipeline import Pipeline
from userspace.records import Record, RtcpRecord, SipRecord, StreamReport
from userspace.sip import parse_message
from userspace.tunnel import Encap, TunnelCode, TunnelKind, Tunnels, media_protocol, mirror_ranges

INNER_V4 = ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")
INNER_V6 = ipv6(udp(INVITE, 5070, 5060), src="fd00::a", dst="fd00::b")
OUTER = (raw(OUTER_SRC), raw(OUTER_DST))

OPENED = {
    "vxlan": (vxlan(inner_sip(), vni=0xABCDEF), TunnelKind.VXLAN, 0xABCDEF),
    "geneve": (geneve(inner_sip(), options=bytes(8)), TunnelKind.GENEVE, 200),
    "geneve-ipv6": (geneve(INNER_V6, proto=0x86DD), TunnelKind.GENEVE, 200),
    "gre-ipv4": (gre(INNER_V4, 0x0800), TunnelKind.GRE, None),
    "gre-key-seq-csum": (gre(INNER_V6, 0x86DD, key=77, seq=3, csum=True), TunnelKind.GRE, 77),
    "gre-ethernet": (gre(inner_sip(vlans=(4,)), TEB), TunnelKind.GRE, None),
    "erspan2": (erspan2(inner_sip(), session=1023), TunnelKind.ERSPAN, 1023),
    "erspan3": (erspan3(inner_sip(), session=5), TunnelKind.ERSPAN, 5),
    "erspan3-platform": (erspan3(inner_sip(vlans=(1, 2)), session=5, platform=True), TunnelKind.ERSPAN, 5),
    "ipip": (ipip(INNER_V4), TunnelKind.IPIP, None),
    "ipv6-in-ipv4": (ipip(INNER_V6, inner_v6=True), TunnelKind.IPIP, None),
}

REFUSED = {
    "vxlan-without-i": vxlan(inner_sip(), flags=0),
    "geneve-version": geneve(inner_sip(), version=2),
    "geneve-options-past-the-end": geneve(inner_sip()[:40], opt_words=63),
    "gre-routing": gre(INNER_V4, 0x0800, extra_flags=0x4000),
    "gre-version": gre(INNER_V4, 0x0800, extra_flags=1),
    "gre-ppp": gre(INNER_V4, 0x880B),
    "erspan-version": erspan2(inner_sip(), version=0),
    "erspan3-frame-type": erspan3(inner_sip(), frame_type=2),
    "nested-ipip": gre(ipv4(INNER_V4, proto=4), 0x0800),
    "nested-vxlan": vxlan(ethernet(ipv4(udp(bytes((8, 0, 0, 0, 0, 0, 1, 0)) + inner_sip(), 1, 4789)))),
}


@pytest.mark.parametrize("name", OPENED)
def test_each_kind_is_opened_to_its_inner_sip(name: str) -> None:
    frame, kind, tunnel_id = OPENED[name]
    layout = walk(frame)
    assert layout is not None and layout.flags & Flag.INNER
    packet = packet_at(frame, layout.l3, layout.l4, layout.flags, layout.proto)
    assert isinstance(packet, Packet) and packet.payload == INVITE and packet.dport == 5060
    assert layout.encap == Encap(kind, tunnel_id, *OUTER)
    assert encapsulation(frame) == layout.encap


@pytest.mark.parametrize("name", REFUSED)
def test_what_the_kernel_refuses_is_refused(name: str) -> None:
    assert walk(REFUSED[name]) is None


def test_a_kind_turned_off_is_walked_as_the_outer_packet_it_is() -> None:
    none = Tunnels(frozenset())
    assert walk(gre(INNER_V4, 0x0800), none) is None
    outer = walk(vxlan(inner_sip()), none)
    assert outer is not None and not outer.flags & Flag.INNER and outer.dport == 4789
    only_erspan = Tunnels(frozenset({TunnelKind.ERSPAN}))
    assert walk(gre(INNER_V4, 0x0800), only_erspan) is None
    assert walk(erspan2(inner_sip()), only_erspan) is not None


def test_an_extra_vxlan_port() -> None:
    frame = vxlan(inner_sip(), port=8472)
    assert walk(frame) is not None and not walk(frame).flags & Flag.INNER  # type: ignore[union-attr]
    layout = walk(frame, Tunnels(vxlan_ports=frozenset({4789, 8472})))
    assert layout is not None and layout.encap is not None and layout.encap.kind is TunnelKind.VXLAN


@pytest.mark.parametrize("name", [*OPENED, *REFUSED])
def test_every_cut_of_a_tunnelled_frame_walks_without_an_exception(name: str) -> None:
    frame = OPENED[name][0] if name in OPENED else REFUSED[name]
    for end in range(len(frame)):
        walk(frame[:end])


def test_classification_uses_the_inner_packet() -> None:
    event = classify_frame(erspan2(inner_sip(vlans=(9,))), Rules(frozenset({5060})))
    assert event is not None and event.flags & Flag.INNER and event.flags & Flag.VLAN
    no_tunnels = Rules(frozenset({5060}), tunnels=Tunnels(frozenset()))
    assert classify_frame(gre(INNER_V4, 0x0800), no_tunnels) is None


def _records(frames: list[bytes]) -> list[SipRecord]:
    pipeline = Pipeline({0: "mirror0"}, 0)
    rules = Rules(frozenset({5060}))
    events = [classify_frame(frame, rules, ts_ns=i * 1_000) for i, frame in enumerate(frames)]
    return [r for r in pipeline.process([e for e in events if e is not None]) if isinstance(r, SipRecord)]


def test_a_tunnelled_sip_record_carries_its_encap_and_an_untunnelled_one_none() -> None:
    tunnelled, plain = _records([vxlan(inner_sip(), vni=4242), inner_sip()])
    encap = orjson.loads(orjson.dumps(tunnelled.to_dict()))["encap"]
    assert encap == {"kind": "vxlan", "id": 4242, "src": OUTER_SRC, "dst": OUTER_DST}
    assert plain.to_dict()["encap"] is None
    assert tunnelled.message.call_id == plain.message.call_id and tunnelled.transport == UDP


def test_fragments_of_two_tunnels_with_one_ip_id_are_never_mixed() -> None:
    datagram = udp(INVITE, 5070, 5060)
    first = ethernet(ipv4(datagram[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000, ident=77))
    last = ethernet(ipv4(datagram[256:], src="10.3.0.1", dst="10.3.0.2", frag=32, ident=77))
    records = _records([vxlan(first, vni=1), vxlan(last, vni=2), vxlan(last, vni=1)])
    assert len(records) == 1
    assert records[0].fragments == 2 and records[0].encap is not None and records[0].encap.id == 1


def test_one_tcp_connection_mirrored_in_two_tunnels_is_two_streams() -> None:
    """The same inner 4-tuple and sequence numbers inside two GRE keys (two mirrored
    sites reusing private addresses): each tunnel's segments make its own message."""
    def segment(key: int, payload: bytes, seq: int, flags: int = 0x18) -> bytes:
        return gre(ipv4(tcp(payload, 40000, 5060, seq=seq, flags=flags), proto=TCP, src="10.1.0.1",
                        dst="10.1.0.2"), 0x0800, key=key)
    frames = [segment(1, b"", 0, flags=0x02), segment(2, b"", 0, flags=0x02)]
    for key, message in ((1, INVITE), (2, OK_200)):
        frames.append(segment(key, message[:100], 1))
    for key, message in ((1, INVITE), (2, OK_200)):
        frames.append(segment(key, message[100:], 101))
    records = _records(frames)
    assert [(r.message.status or r.message.method, r.encap and r.encap.id) for r in records] == \
        [("INVITE", 1), (200, 2)]


def test_media_inside_a_tunnel_is_reported_with_its_tunnel() -> None:
    """RTP and RTCP mirrored inside GRE to the endpoint the INVITE's SDP announced
    (192.0.2.1:49172): the stream's report and the RTCP record say which tunnel."""
    media_ip = raw("192.0.2.1")
    tunnel = media_protocol(UDP, TunnelCode.GRE)
    rules = Rules(frozenset({5060}), media={(media_ip, 49172, tunnel): (Kind.RTP, 0),
                                            (media_ip, 49173, tunnel): (Kind.RTCP, 0)})
    def tunnelled(payload: bytes, port: int) -> bytes:
        return gre(ipv4(udp(payload, 30000, port), src="10.1.0.2", dst="192.0.2.1"), 0x0800, key=9)
    rtp = [tunnelled(bytes((0x80, 0)) + seq.to_bytes(2) + (seq * 160).to_bytes(4) + b"SSRC" + bytes(160),
                     49172) for seq in range(1, 4)]
    rtcp = tunnelled(bytes((0x80, 200, 0, 6)) + b"SSRC" + bytes(20), 49173)
    frames = [gre(INNER_V4, 0x0800, key=9), *rtp, rtcp]
    events = [classify_frame(frame, rules, ts_ns=i * 20_000_000) for i, frame in enumerate(frames)]
    pipeline = Pipeline({0: "mirror0"}, 0)
    records = pipeline.process([e for e in events if e is not None])
    records += pipeline.finish()
    media = [r for r in records if isinstance(r, (StreamReport, RtcpRecord))]
    assert {type(r) for r in media} == {StreamReport, RtcpRecord}, records
    for record in media:
        assert record.to_dict()["encap"] == {"kind": "gre", "id": 9, "src": OUTER_SRC, "dst": OUTER_DST}


UNDERLAY_FRAGMENTED: dict[str, tuple[bytes, TunnelKind, int | None]] = {
    "vxlan": (vxlan(inner_sip(), vni=5), TunnelKind.VXLAN, 5),
    "vxlan-ipv6": (vxlan(inner_sip(), vni=6, v6=True), TunnelKind.VXLAN, 6),
    "geneve": (geneve(inner_sip(), vni=7), TunnelKind.GENEVE, 7),
    "gre": (gre(INNER_V4, 0x0800, key=8), TunnelKind.GRE, 8),
    "gre-ipv6": (gre(inner_sip(), TEB, key=9, v6=True), TunnelKind.GRE, 9),
    "erspan2": (erspan2(inner_sip(), session=10), TunnelKind.ERSPAN, 10),
    "erspan3": (erspan3(inner_sip(), session=11), TunnelKind.ERSPAN, 11),
    "ipip": (ipip(INNER_V4), TunnelKind.IPIP, None),
}


@pytest.mark.parametrize("name", UNDERLAY_FRAGMENTED)
def test_a_tunnel_the_underlay_fragmented_is_opened_once_whole(name: str) -> None:
    """The first fragment is not opened cut short (the kernel sends it up as a fragment);
    the reassembled datagram is opened, and its SIP recorded with its tunnel."""
    frame, kind, tunnel_id = UNDERLAY_FRAGMENTED[name]
    first, last = underlay_fragments(frame)
    layout = walk(first)
    assert layout is not None and layout.flags & Flag.FRAGMENT and layout.encap is None
    pipeline = Pipeline({0: "mirror0"}, 0)
    rules = Rules(frozenset({5060}))
    events = [classify_frame(frame, rules, ts_ns=1_000) for frame in (first, last)]
    assert all(e is not None and e.kind == Kind.FRAGMENT for e in events)
    [record] = pipeline.process([e for e in events if e is not None])
    assert isinstance(record, SipRecord) and record.message.call_id == parse_message(INVITE).call_id
    assert record.encap is not None and (record.encap.kind, record.encap.id) == (kind, tunnel_id)
    assert record.fragments == 2 and pipeline.stats.tunnels_reassembled == 1


def test_a_reassembled_datagram_that_is_no_tunnel_or_a_refused_one_is_not_opened() -> None:
    pipeline = Pipeline({0: "mirror0"}, 0, tunnels=Tunnels(frozenset({TunnelKind.GRE})))
    rules = Rules(frozenset({5060}), tunnels=Tunnels(frozenset(TunnelKind)))
    frames = [*underlay_fragments(vxlan(inner_sip()), ident=1),      # a kind the pipeline has off
              *underlay_fragments(gre(INNER_V4, 0x0800, extra_flags=1), ident=2),  # GRE version 1
              *underlay_fragments(gre(ipv4(INNER_V4, proto=4), 0x0800), ident=3)]  # IP-in-IP inside: nested
    events = [classify_frame(frame, rules) for frame in frames]
    assert pipeline.process([e for e in events if e is not None]) == []
    # decoded as the datagrams they are: GRE is no UDP or TCP, and the VXLAN one (SIP text deep
    # inside) a SIP error
    stats = pipeline.stats
    assert stats.tunnels_reassembled == 0 and stats.decode_errors == 2 and stats.sip_errors == 1


def opened_rules() -> Rules:
    """SIP on 5060, 10.9.0.0/24 excluded (its own filtered count)."""
    return Rules(frozenset({5060}), networks=Networks.of([], ["10.9.0.0/24"], plain=True))


def _opened(frames: list[bytes], rules: Rules | None = None) -> tuple[Pipeline, list[Record]]:
    """Frames through the classification and a pipeline with ``opened_rules``, ended."""
    pipeline = Pipeline({0: "mirror0"}, 0)
    pipeline.opened_rules = rules or opened_rules()
    events = [classify_frame(frame, Rules(frozenset({5060})), ts_ns=i * 20_000_000)
              for i, frame in enumerate(frames)]
    records = pipeline.process([e for e in events if e is not None])
    return pipeline, records + pipeline.finish()


def _in_fragmented_gre(packet: bytes, ident: int) -> list[bytes]:
    return underlay_fragments(gre(packet, 0x0800, key=3), at=64, ident=ident)


def test_an_opened_tunnels_inner_packet_meets_the_rules_the_kernel_would_apply() -> None:
    """Once whole, the inner packet is judged as the kernel's match() judges an unfragmented
    one: an address the filters exclude, a port that is not SIP's (TCP to 443 too: no stream
    is kept for it) are not recorded; SIP is."""
    excluded = ipv4(udp(INVITE, 5070, 5060), src="10.9.0.1", dst="10.1.0.2")
    other_port = ipv4(udp(INVITE, 5070, 5080), src="10.1.0.1", dst="10.1.0.2")
    https = ipv4(tcp(bytes(600), 40000, 443), proto=TCP, src="10.1.0.1", dst="10.1.0.2")
    frames = [*_in_fragmented_gre(excluded, 1), *_in_fragmented_gre(other_port, 2),
              *_in_fragmented_gre(https, 3), *_in_fragmented_gre(INNER_V4, 4)]
    rules = opened_rules()
    pipeline, records = _opened(frames, rules)
    assert [(r.src, r.dport) for r in records if isinstance(r, SipRecord)] == [(raw("10.1.0.1"), 5060)]
    assert pipeline.stats.tunnels_reassembled == 4 and pipeline.stats.not_sip == 2
    assert pipeline.stats.tunnels_filtered == 1
    assert pipeline.tcp.stats.segments == 0


def test_media_in_a_tunnel_the_underlay_fragmented_is_measured() -> None:
    """A large RTP packet (video, say) inside GRE in two fragments, to the endpoint the
    tunnelled INVITE's SDP announced: measured, its report saying which tunnel."""
    rtp = [ipv4(udp(bytes((0x80, 96)) + seq.to_bytes(2) + (seq * 3000).to_bytes(4) + b"SSRC" + bytes(1200),
                    30000, 49172), src="10.1.0.2", dst="192.0.2.1") for seq in range(1, 4)]
    frames = [gre(INNER_V4, 0x0800, key=3)]
    for n, packet in enumerate(rtp):
        frames += _in_fragmented_gre(packet, 10 + n)
    pipeline, records = _opened(frames)
    reports = [r for r in records if isinstance(r, StreamReport)]
    assert pipeline.stats.media == 3 and len(reports) == 1, pipeline.stats
    assert reports[0].to_dict()["encap"] == {"kind": "gre", "id": 3, "src": OUTER_SRC, "dst": OUTER_DST}


def test_sip_to_a_ua_on_a_tunnel_port_in_fragments_is_sip() -> None:
    """A fragmented SIP datagram from 5060 to a UA behind NAT on 4789: SIP, as the kernel's
    match() takes SIP's port before a tunnel's, not a VXLAN header."""
    packet = ipv4(udp(INVITE, 5060, 4789), src="10.0.0.1", dst="10.0.0.2")
    fragments = [ethernet(ipv4(packet[20:][:96], src="10.0.0.1", dst="10.0.0.2", frag=0x2000, ident=7)),
                 ethernet(ipv4(packet[20:][96:], src="10.0.0.1", dst="10.0.0.2", frag=12, ident=7))]
    _pipeline, records = _opened(fragments)
    [record] = [r for r in records if isinstance(r, SipRecord)]
    assert record.dport == 4789 and record.encap is None


def test_a_reassembled_tunnels_records_keep_the_outer_vlan_tags() -> None:
    tagged = [frame[:12] + b"\x81\x00\x01\x2c" + frame[12:] for frame in _in_fragmented_gre(INNER_V4, 5)]
    _pipeline, records = _opened(tagged)
    [record] = [r for r in records if isinstance(r, SipRecord)]
    assert record.vlans == (300,) and record.encap is not None


def test_ipv6_inside_gre_over_ipv6() -> None:
    frame = gre(ethernet(INNER_V6, ethertype=V6), TEB, v6=True)
    layout = walk(frame)
    assert layout is not None and layout.flags & Flag.IPV6 and layout.encap is not None
    assert layout.encap.src == raw("2001:db8::1")


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["vxlan", "geneve", "gre", "ipip", "ipv6-in-ip"]), body=st.binary(max_size=120))
def test_any_bytes_behind_a_tunnel_header_are_a_layout_or_nothing(kind: str, body: bytes) -> None:
    """Hostile tunnels: whatever follows the outer headers, the walk ends in a layout
    whose packet reads or fails with a DecodeError, or in None; never another exception."""
    frame = {"vxlan": lambda: vxlan(b"") + body, "geneve": lambda: geneve(b"") + body,
             "gre": lambda: gre(b"", 0) + body, "ipip": lambda: ipip(body),
             "ipv6-in-ip": lambda: ipip(body, inner_v6=True)}[kind]()
    for cut in (frame, frame[:-3]):
        layout = walk(cut)
        if layout is None:
            continue
        with contextlib.suppress(DecodeError):
            packet_at(cut, layout.l3, layout.l4, layout.flags, layout.proto)


def test_a_fragmented_tunnel_from_a_source_outside_the_mirrors_is_counted_not_opened() -> None:
    """Fragments go up unopened (the kernel cannot judge them); once whole, a tunnel whose
    outer source is no trusted mirror is counted and dropped, never decoded as SIP."""
    tunnels = Tunnels(mirrors=mirror_ranges(["192.0.2.1/32"]))
    pipeline = Pipeline({0: "mirror0"}, 0, tunnels=tunnels)
    rules = Rules(frozenset({5060}), tunnels=tunnels)
    frames = [*underlay_fragments(from_source(vxlan(inner_sip()), "192.0.2.9"), ident=1),
              *underlay_fragments(from_source(gre(INNER_V4, 0x0800), "192.0.2.9"), ident=2),
              *underlay_fragments(vxlan(inner_sip()), ident=3)]  # from the mirror: opened
    events = [classify_frame(frame, rules) for frame in frames]
    records = pipeline.process([e for e in events if e is not None])
    stats = pipeline.stats
    assert [r.encap is not None for r in records if isinstance(r, SipRecord)] == [True]
    assert stats.tunnels_untrusted == 2 and stats.tunnels_reassembled == 1
    assert stats.sip_errors == stats.decode_errors == 0


@pytest.mark.parametrize(("networks", "trusted", "refused"), [
    (["192.0.2.0/24", "198.51.100.7/32"], ["192.0.2.200", "198.51.100.7"], ["198.51.100.8", "2001:db8::1"]),
    (["0.0.0.0/0"], ["203.0.113.5", "10.0.0.1"], ["2001:db8::1"]),
    (["2001:db8::/32", "192.0.2.1/32"], ["2001:db8:ffff::1", "192.0.2.1"], ["2001:db9::1", "192.0.2.2"]),
    ([f"10.{n >> 8}.{n & 255}.0/24" for n in range(3000)], ["10.11.183.9"], ["10.12.0.1"]),
])
def test_trusted_mirrors_are_found_by_prefix(networks: list[str], trusted: list[str],
                                             refused: list[str]) -> None:
    """Host bits ignored (as the kernel's trie), any number of networks, each family its own."""
    tunnels = Tunnels(mirrors=mirror_ranges(networks))
    assert all(tunnels.trusted(raw(a)) for a in trusted)
    assert not any(tunnels.trusted(raw(a)) for a in refused)
    assert len(tunnels.mirrors) <= 2, "one set per prefix length, not one entry per network"


@pytest.mark.parametrize(("setting", "count", "most"), [("mirrors", 1025, 1024), ("exclude", 4097, 4096)])
def test_more_networks_than_the_kernel_holds_is_refused_at_start(setting: str, count: int, most: int) -> None:
    """The same limit whatever the capture mode, said before anything loads."""
    networks = tuple(ipaddress.ip_network(f"10.{n >> 8 & 255}.{n & 255}.0/24") for n in range(count))
    said = rf"{setting}: {count} IPv4 networks, the kernel holds at most {most}"
    with pytest.raises(SetupError, match=said):
        KernelSettings(**{setting: networks}).validate()  # type: ignore[arg-type]
    KernelSettings(**{setting: networks[:most]}).validate()  # type: ignore[arg-type]
