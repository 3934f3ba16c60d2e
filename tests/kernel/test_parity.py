"""userspace.classify must build the event the kernel builds, equal in every
header field, for every kind of frame the kernel tests use; and the packet
read at the kernel's offsets must be the one read at Python's."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel.conftest import SHARDS
from tests.support import tunnels
from tests.support.frames import (
    AH,
    DEST_OPTS,
    FRAGMENT,
    HOP_BY_HOP,
    ROUTING,
    TCP,
    UDP,
    V6,
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
from tests.support.kernel import Hook, KernelHarness
from tests.support.sip_samples import INVITE, OK_200, request, response, sip_message
from userspace.classify import Rules, Screen, classify_frame
from userspace.event import Counter, Kind
from userspace.frame import Packet, packet_at, walk
from userspace.tunnel import TunnelCounts

FRAMES = {
    "sip-udp": ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")),
    "sip-udp-back": ethernet(ipv4(udp(OK_200, 5060, 5070), src="10.1.0.2", dst="10.1.0.1")),
    "sip-tcp": ethernet(ipv4(tcp(INVITE, 40000, 5061), proto=TCP)),
    "qinq": ethernet(ipv4(udp(INVITE)), vlans=(100, 200)),
    "ipv4-options": ethernet(ipv4(udp(INVITE), options=b"\x94\x04\x00\x00")),
    "ipv6-chain": ethernet(ipv6_chain(ipv6_ext(ROUTING) + ipv6_ext(DEST_OPTS) + ipv6_ext(AH)
                                      + ipv6_ah(UDP) + udp(INVITE), HOP_BY_HOP), ethertype=V6),
    "v4-first-fragment": ethernet(ipv4(udp(INVITE)[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000)),
    "v4-last-fragment": ethernet(ipv4(udp(INVITE)[256:], src="10.3.0.1", dst="10.3.0.2", frag=32)),
    "v6-fragment": ethernet(ipv6_chain(ipv6_fragment(UDP, 400, False, 7) + b"x" * 64, FRAGMENT),
                            ethertype=V6),
    "rtp": ethernet(ipv4(udp(bytes(172), 30000, 40000), src="10.4.0.1", dst="10.4.0.2")),
    "other": ethernet(ipv4(udp(b"hello", 4000, 4001))),
    "arp": ethernet(b"\0" * 28, ethertype=0x0806),
}


def _sip_with(header: bytes, pad: int = 0, body: bytes = b"") -> bytes:
    """An OPTIONS whose Call-ID line is ``header``, after ``pad`` bytes of other headers."""
    padding = b"X-Pad: " + b"p" * (pad - 9) + b"\r\n" if pad else b""
    message = (b"OPTIONS sip:b@10.1.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.1\r\n" + padding + header
               + b"\r\nCSeq: 1 OPTIONS\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return ethernet(ipv4(udp(message, 5070, 5060), src="10.1.0.1", dst="10.1.0.2"))


# The kernel's Call-ID scan and userspace.sharding must agree on every edge.
FRAMES |= {
    "callid-compact": _sip_with(b"i: abc@host"),
    "callid-lower": _sip_with(b"call-id:abc@host"),
    "callid-8-blanks": _sip_with(b"Call-ID:" + b" " * 8 + b"abc"),
    "callid-9-blanks": _sip_with(b"Call-ID:" + b" " * 9 + b"abc"),
    "callid-blank-before-colon": _sip_with(b"Call-ID : abc"),
    "callid-empty": _sip_with(b"Call-ID: "),
    "callid-long-value": _sip_with(b"Call-ID: " + b"v" * 300),
    "callid-past-the-scan": _sip_with(b"Call-ID: abc", pad=400),
    "callid-cut-by-the-scan": _sip_with(b"Call-ID: " + b"w" * 60, pad=290),
    "callid-only-in-body": _sip_with(b"X-No: 1", body=b"\r\nCall-ID: inbody\r\n"),
    "callid-lf-only": ethernet(ipv4(udp(b"BYE sip:x SIP/2.0\nI:lf@x\n\n", 5070, 5060))),
    "callid-at-end-of-frame": ethernet(ipv4(udp(b"BYE sip:x SIP/2.0\r\ni: end", 5070, 5060))),
}
_INNER_V4 = ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")
_INNER_V6 = ipv6(udp(INVITE, 5070, 5060), src="fd00::a", dst="fd00::b")
_DATAGRAM = udp(INVITE, 5070, 5060)
_INNER_FIRST = ethernet(ipv4(_DATAGRAM[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000), vlans=(5,))
_INNER_LAST = ethernet(ipv4(_DATAGRAM[256:], src="10.3.0.1", dst="10.3.0.2", frag=32), vlans=(5,))
# Every tunnel the kernel opens, with an inner 802.1Q tag and an inner fragmented INVITE,
# and the ones it refuses or does not open (userspace.tunnel mirrors bpf/otus.c "Tunnels").
FRAMES |= {
    "vxlan": tunnels.vxlan(tunnels.inner_sip()),
    "vxlan-inner-vlan": tunnels.vxlan(tunnels.inner_sip(vlans=(300,))),
    "vxlan-inner-first-fragment": tunnels.vxlan(_INNER_FIRST),
    "vxlan-inner-last-fragment": tunnels.vxlan(_INNER_LAST),
    "vxlan-no-i-flag": tunnels.vxlan(tunnels.inner_sip(), flags=0),
    "vxlan-rtp": tunnels.vxlan(ethernet(ipv4(udp(bytes(172), 30000, 40000), src="10.4.0.1", dst="10.4.0.2"))),
    "geneve": tunnels.geneve(tunnels.inner_sip(), options=bytes(8)),
    "geneve-inner-vlan": tunnels.geneve(tunnels.inner_sip(vlans=(7,))),
    "geneve-version-1": tunnels.geneve(tunnels.inner_sip(), version=1),
    "gre-ipv4": tunnels.gre(_INNER_V4, 0x0800),
    "gre-ipv6-key-seq": tunnels.gre(_INNER_V6, 0x86DD, key=9, seq=1, csum=True),
    "gre-ethernet-inner-vlan": tunnels.gre(tunnels.inner_sip(vlans=(12,)), tunnels.TEB, key=3),
    "gre-inner-fragment": tunnels.gre(_INNER_FIRST, tunnels.TEB),
    "gre-routing": tunnels.gre(_INNER_V4, 0x0800, extra_flags=0x4000),
    "erspan2": tunnels.erspan2(tunnels.inner_sip()),
    "erspan2-inner-qinq": tunnels.erspan2(tunnels.inner_sip(vlans=(10, 20))),
    "erspan3": tunnels.erspan3(tunnels.inner_sip(vlans=(8,)), platform=True),
    "erspan3-inner-fragment": tunnels.erspan3(_INNER_LAST),
    "erspan-version-3": tunnels.erspan2(tunnels.inner_sip(), version=3),
    "ipip": tunnels.ipip(_INNER_V4),
    "ipv6-in-ipv6": tunnels.ipip(_INNER_V6, inner_v6=True, v6=True),
    "ipip-inner-fragment": tunnels.ipip(_INNER_FIRST[18:]),
    "nested-vxlan": tunnels.vxlan(ethernet(ipv4(udp(bytes((8, 0, 0, 0, 0, 0, 1, 0)) + tunnels.inner_sip(),
                                                    49152, 4789)))),
}
# Tunnels the underlay fragmented: up as fragments, the first not opened cut short
for _name, _frame in {"vxlan": tunnels.vxlan(tunnels.inner_sip()),
                      "gre": tunnels.gre(_INNER_V4, 0x0800, key=4),
                      "erspan3": tunnels.erspan3(tunnels.inner_sip()),
                      "ipip": tunnels.ipip(_INNER_V4),
                      "gre-over-ipv6": tunnels.gre(tunnels.inner_sip(), tunnels.TEB, v6=True)}.items():
    _first, _last = tunnels.underlay_fragments(_frame)
    FRAMES[f"underlay-fragmented-{_name}-first"] = _first
    FRAMES[f"underlay-fragmented-{_name}-last"] = _last
MEDIA = (ipaddress.ip_address("10.4.0.2").packed, 40000)


@pytest.mark.parametrize("name", FRAMES)
def test_python_classification_matches_the_kernel(kernel: KernelHarness, name: str) -> None:
    frame = FRAMES[name]
    rules = Rules(frozenset((5060, 5061)), shards=SHARDS,
                  media={(*MEDIA, UDP): (Kind.RTP, 1)})
    kernel.maps.learn_flow(MEDIA, Kind.RTP, shard=1)
    try:
        events = kernel.run(frame, Hook.XDP).events
    finally:
        kernel.maps.forget_flow(MEDIA)
    built = classify_frame(frame, rules)
    if not events:
        assert built is None
        return
    (event,) = events
    assert built is not None
    if event.kind == Kind.RTP:
        assert event.cap_len < len(frame)  # the media snaplen cut it; compare what was sent
    expected = classify_frame(frame[:event.cap_len], rules, event.direction, event.ts_ns, event.ifindex,
                              event.orig_len)
    assert expected == event


@pytest.mark.parametrize("name", FRAMES)
def test_python_counts_the_tunnels_the_kernel_counts(kernel: KernelHarness, name: str) -> None:
    """Opened by kind, refused, nested: AF_PACKET and replay report what the kernel would."""
    counts = TunnelCounts()
    classify_frame(FRAMES[name], Rules(frozenset((5060, 5061)), shards=SHARDS, counts=counts))
    moved = kernel.run(FRAMES[name], Hook.XDP).moved
    kernel_counts = {f"decap_{c.name.lower().removeprefix('decap_')}": moved.get(c, 0)
                     for c in Counter if c.name.startswith("DECAP_")}
    assert counts.counters() == kernel_counts


@pytest.mark.parametrize("name", FRAMES)
def test_the_kernel_offsets_read_the_packet_the_python_walk_reads(kernel: KernelHarness, name: str) -> None:
    """Live events are read at the kernel's offsets, replayed ones at userspace.frame.walk's:
    both must give the same packet, addresses, ports and payload."""
    frame = FRAMES[name]
    kernel.maps.learn_flow(MEDIA, Kind.RTP, shard=1)
    try:
        events = kernel.run(frame, Hook.XDP).events
    finally:
        kernel.maps.forget_flow(MEDIA)
    if not events:
        return
    (event,) = events
    sent = frame[:event.cap_len]
    layout = walk(sent)
    assert layout is not None
    from_kernel = packet_at(event.frame, event.l3_offset, event.l4_offset, event.flags, event.l4_proto)
    assert from_kernel == packet_at(sent, layout.l3, layout.l4, layout.flags, layout.proto)
    if isinstance(from_kernel, Packet):
        start = event.payload_offset
        assert from_kernel.payload == sent[start:start + len(from_kernel.payload)]


# ---- what the screen keeps down: the drop list and duplicates ----------------------------------------------

DROP = ("OPTIONS", "NOTIFY", "183")


def _udp_sip(payload: bytes, **ip: Any) -> bytes:
    return with_checksum(ethernet(ipv4(udp(payload, 5070, 5060), src="10.1.0.1", dst="10.1.0.2", **ip)))


_OPTIONS = _udp_sip(request("OPTIONS"))
_V6 = ethernet(ipv6(udp(INVITE, 5070, 5060), flow_label=7), ethertype=V6)
_FRAGMENTS = [ethernet(ipv4(udp(INVITE, 5070, 5060)[:300], frag=0x2000, ident=5)),
              ethernet(ipv4(udp(INVITE, 5070, 5060)[300:], frag=300 // 8, ident=5))]
def _gre_first_fragment(size: int) -> bytes:
    return tunnels.underlay_fragments(tunnels.gre(_INNER_V4, 0x0800), at=size)[0]


SEQUENCES = {
    "dropped-requests": [_OPTIONS, _udp_sip(request("NOTIFY")), _udp_sip(request("INFO"))],
    "dropped-status": [_udp_sip(response("183 Session Progress", "INVITE")),
                       _udp_sip(response("180 Ringing", "INVITE"))],
    "answers-by-cseq": [_udp_sip(response("200 OK", "OPTIONS")), _udp_sip(response("200 OK", "INFO")),
                        _udp_sip(response("200 OK", "OPTIONS", before_cseq=["X-Pad: " + "p" * 460])),
                        _udp_sip(response("200 OK", "OPTIONS", before_cseq=["X-Pad: " + "p" * 400]))],
    "copies": [_udp_sip(INVITE), next_hop(_udp_sip(INVITE), vlans=(3,)), _udp_sip(INVITE, ident=9)],
    "dropped-copies": [_OPTIONS, next_hop(_OPTIONS)],
    "ipv6-copies": [_V6, next_hop(_V6), ethernet(ipv6(udp(INVITE, 5070, 5060), flow_label=8), ethertype=V6)],
    "fragment-copies": [*_FRAGMENTS, *(next_hop(f) for f in _FRAGMENTS)],
    "tcp-copies": [ethernet(ipv4(tcp(request("OPTIONS"), 40000, 5060), proto=TCP)),
                   next_hop(ethernet(ipv4(tcp(request("OPTIONS"), 40000, 5060), proto=TCP)))],
    "media-copies": [FRAMES["rtp"], next_hop(FRAMES["rtp"])],
    # the same INVITE mirrored twice, by VXLAN and by ERSPAN: one goes up; a dropped method inside one
    "tunnelled-copies": [tunnels.vxlan(_udp_sip(INVITE)), tunnels.erspan2(next_hop(_udp_sip(INVITE))),
                         tunnels.gre(_OPTIONS, tunnels.TEB)],
    # the first fragment of a tunnel the underlay fragmented, 8 bytes of GRE in it: too short to
    # identify, so never a duplicate (both copies go up); its longer sibling is deduplicated
    "short-tunnel-fragment-copies": [*[_gre_first_fragment(8)] * 2, *[_gre_first_fragment(64)] * 2],
}


@contextlib.contextmanager
def screening(kernel: KernelHarness) -> Iterator[Screen]:
    """The kernel with the drop list and a 10 s window, and the Python screen alike."""
    kernel.maps.change_drop_methods(add=DROP)
    kernel.maps.set_dedup(True, 10_000)
    kernel.forget_seen()
    try:
        yield Screen(DROP, 10_000 * 1_000_000)
    finally:
        kernel.maps.change_drop_methods(remove=DROP)
        kernel.maps.set_dedup(False, 0)


@pytest.mark.parametrize("name", SEQUENCES)
def test_the_python_screen_keeps_down_what_the_kernel_keeps_down(kernel: KernelHarness, name: str) -> None:
    rules = Rules(frozenset((5060, 5061)), shards=SHARDS, media={(*MEDIA, UDP): (Kind.RTP, 1)})
    kernel.maps.learn_flow(MEDIA, Kind.RTP, shard=1)
    try:
        with screening(kernel) as screen:
            for n, frame in enumerate(SEQUENCES[name]):
                run = kernel.run(frame, Hook.XDP)
                before = (screen.dropped_methods, screen.duplicates)
                built = classify_frame(frame, rules)
                assert built is not None, "every frame here matches"
                up = screen.admit(built)
                assert up == bool(run.events), f"frame {n}"
                moved = (run.moved.get(Counter.DROPPED_METHOD, 0), run.moved.get(Counter.DUPLICATE, 0))
                counted = (screen.dropped_methods - before[0], screen.duplicates - before[1])
                assert counted == moved, f"frame {n}"
    finally:
        kernel.maps.forget_flow(MEDIA)


LONG = "ABCDEFGHIJKLMNOP"  # a method as long as the kernel's key holds


def _cseq_at(end: int, method: str = "OPTIONS") -> bytes:
    """A response whose CSeq method ends (its CR) at payload byte ``end``."""
    bare = response("200 OK", "OPTIONS", cseq_line=f"CSeq: 1 {method}")
    at = bare.index(f"CSeq: 1 {method}\r".encode()) + len(f"CSeq: 1 {method}")
    pad = end - at - len("X-Pad: \r\n")
    assert pad >= 0
    message = response("200 OK", "OPTIONS", cseq_line=f"CSeq: 1 {method}",
                       before_cseq=["X-Pad: " + "p" * pad])
    assert message.index(f"{method}\r".encode()) + len(method) == end
    return message


# The edges of the token and CSeq readers, each on both sides.
EDGES = {
    **{f"blanks-before-{n}": response("200 OK", "OPTIONS", cseq_line=f"CSeq:{' ' * n}1 OPTIONS")
       for n in (0, 1, 8, 9)},
    **{f"blanks-between-{n}": response("200 OK", "OPTIONS", cseq_line=f"CSeq: 1{chr(9) * n}OPTIONS")
       for n in (0, 1, 8, 9)},
    **{f"digits-{n}": response("200 OK", "OPTIONS", cseq_line=f"CSeq: {'7' * n} OPTIONS")
       for n in (1, 10, 11)},
    **{f"name-{name}": response("200 OK", "OPTIONS", cseq_line=f"{name} 1 OPTIONS")
       for name in ("cseq:", "CSEQ:", "CSeq :", "CSeqX:", "Seq:", "CSeq;")},
    "method-16": response("200 OK", LONG, cseq_line=f"CSeq: 1 {LONG}"),
    "method-17": response("200 OK", LONG, cseq_line=f"CSeq: 1 {LONG}Q"),
    "method-then-blank": response("200 OK", "OPTIONS", cseq_line="CSeq: 1 OPTIONS x"),
    "empty-method": response("200 OK", "OPTIONS", cseq_line="CSeq: 1 "),
    "in-the-body": sip_message("SIP/2.0 200 OK", ["Call-ID: b"], b"CSeq: 1 OPTIONS\r\n"),
    "lf-only": b"SIP/2.0 200 OK\nCall-ID: x\nCSeq: 3 NOTIFY\n\n",
    "at-scan-end": _cseq_at(511),
    "past-scan-end": _cseq_at(512),
    "request-16": f"{LONG} sip:x SIP/2.0\r\nCSeq: 1 {LONG}\r\n\r\n".encode(),
    "request-17": f"{LONG}Q sip:x SIP/2.0\r\n\r\n".encode(),
    "request-nul": b"OPTIONS\0 sip:x SIP/2.0\r\n\r\n",
    "request-lower": b"options sip:x SIP/2.0\r\n\r\n",
    "status-no-blank": b"SIP/2.0 183\r\nCSeq: 1 INVITE\r\n\r\n",
    "status-short": b"SIP/2.0 18",
    "status-183": b"SIP/2.0 183 \r\n",
    "status-1830": b"SIP/2.0 1830 x\r\n",
    # A NUL reads as the key's padding: "PR\0" would be "PR" to the kernel.
    "status-nul": b"SIP/2.0 PR\0 x\r\nCSeq: 1 INVITE\r\n\r\n",
    "status-letters": b"SIP/2.0 PRX x\r\n\r\n",
    "cseq-method-nul": response("200 OK", "OPTIONS", cseq_line="CSeq: 1 OPTIONS\0"),
    "cseq-method-nul-inside": response("200 OK", "OPTIONS", cseq_line="CSeq: 1 PR\0X"),
    "cseq-method-nul-first": response("200 OK", "OPTIONS", cseq_line="CSeq: 1 \0OPTIONS"),
}
NUL_BAIT = "PR"  # listed only for the NUL edges


@pytest.mark.parametrize("snaplen", [2048, 300])
@pytest.mark.parametrize("name", EDGES)
def test_the_token_and_cseq_readers_and_their_python_mirror_agree(kernel: KernelHarness, name: str,
                                                                  snaplen: int) -> None:
    """Every edge of the readers, and a copy cut short by the snaplen."""
    frame = _udp_sip(EDGES[name])
    rules = Rules(frozenset((5060,)), shards=SHARDS)
    kernel.maps.configure(signature=False, sip_snaplen=snaplen, media_snaplen=32, media_packets=True)
    kernel.maps.change_drop_methods(add=[LONG, NUL_BAIT])
    try:
        with screening(kernel):
            screen = Screen((*DROP, LONG, NUL_BAIT), None, snaplen)
            run = kernel.run(frame, Hook.XDP)
            built = classify_frame(frame, rules)
            assert built is not None
            assert screen.admit(built) == bool(run.events)
    finally:
        kernel.maps.change_drop_methods(remove=[LONG, NUL_BAIT])
        kernel.maps.configure(signature=False, sip_snaplen=2048, media_snaplen=32, media_packets=True)


_CSEQ_FORMS = st.builds(
    lambda name, colon_blank, blanks, digits, between, method, end: (
        f"{name}{' ' if colon_blank else ''}:{blanks}{digits}{between}{method}{end}"),
    st.sampled_from(["CSeq", "cseq", "CSEQ", "CSeqX", "C"]), st.booleans(),
    st.sampled_from(["", " ", "\t", " " * 8, " " * 9]),
    st.sampled_from(["", "1", "4294967295", "12345678901"]),
    st.sampled_from(["", " ", "\t\t", " " * 8, " " * 9]),
    st.sampled_from(["OPTIONS", "NOTIFY", "INVITE", "", "OPTIONSOPTIONSOP", "OPTIONSOPTIONSOPT", "183"]),
    st.sampled_from(["", " x", "\tx", "\0", "\0x"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cseq=_CSEQ_FORMS, pad=st.integers(0, 520), status=st.sampled_from(["200 OK", "183 Ringing", "1830 X"]),
       snaplen=st.sampled_from([2048, 300]))
def test_the_cseq_scan_and_its_python_mirror_agree(kernel: KernelHarness, cseq: str, pad: int, status: str,
                                                   snaplen: int) -> None:
    """Every edge of the scan: the header's forms, the blanks, the number, the method's
    length, the end of the scan and of the copy."""
    before = [f"X-Pad: {'p' * (pad - 9)}"] if pad >= 9 else []
    frame = _udp_sip(response(status, "OPTIONS", cseq_line=cseq, before_cseq=before))
    rules = Rules(frozenset((5060,)), shards=SHARDS)
    kernel.maps.configure(signature=False, sip_snaplen=snaplen, media_snaplen=32, media_packets=True)
    try:
        with screening(kernel):
            screen = Screen(DROP, None, snaplen)
            run = kernel.run(frame, Hook.XDP)
            built = classify_frame(frame, rules)
            assert built is not None
            assert screen.admit(built) == bool(run.events), (cseq, pad, status, snaplen)
    finally:
        kernel.maps.configure(signature=False, sip_snaplen=2048, media_snaplen=32, media_packets=True)
