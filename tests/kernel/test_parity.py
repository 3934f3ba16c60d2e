"""userspace.classify must build the event the kernel builds, equal in every
header field, for every kind of frame the kernel tests use; and the packet
read at the kernel's offsets must be the one read at Python's."""

from __future__ import annotations

import ipaddress

import pytest

from tests.kernel.conftest import SHARDS
from tests.support.frames import (
    AH,
    DEST_OPTS,
    FRAGMENT,
    HOP_BY_HOP,
    ROUTING,
    TCP,
    UDP,
    ethernet,
    ipv4,
    ipv6_ah,
    ipv6_chain,
    ipv6_ext,
    ipv6_fragment,
    tcp,
    udp,
)
from tests.support.kernel import Hook, KernelHarness
from tests.support.sip_samples import INVITE, OK_200
from userspace.classify import Rules, classify_frame
from userspace.event import Kind
from userspace.frame import Packet, packet_at, walk

V6 = 0x86DD
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
