from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.frames import (
    AH,
    DEST_OPTS,
    FRAGMENT,
    HOP_BY_HOP,
    TCP,
    UDP,
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
from userspace.errors import DecodeError, Malformed, Truncated
from userspace.frame import IPProto, Packet, address_text, decode_datagram, decode_frame, packet_at
from userspace.reassembly import Datagram, Fragment

PAYLOAD = b"OPTIONS sip:x SIP/2.0\r\n\r\n"


def packet_of(frame: bytes) -> Packet:
    decoded = decode_frame(frame)
    assert isinstance(decoded, Packet), decoded
    return decoded


def fragment_of(frame: bytes) -> Fragment:
    decoded = decode_frame(frame)
    assert isinstance(decoded, Fragment), decoded
    return decoded


def test_ipv4_udp() -> None:
    packet = packet_of(ethernet(ipv4(udp(PAYLOAD, 5070, 5060), src="192.0.2.1", dst="192.0.2.2")))
    assert (packet.src, packet.sport, packet.dst, packet.dport) == (bytes([192, 0, 2, 1]), 5070,
                                                                    bytes([192, 0, 2, 2]), 5060)
    assert packet.transport == IPProto.UDP
    assert packet.payload == PAYLOAD


def test_ipv4_options_and_tcp_options_are_skipped() -> None:
    segment = tcp(PAYLOAD, seq=77, options=b"\x01\x01\x01\x00")
    packet = packet_of(ethernet(ipv4(segment, proto=TCP, options=b"\x01\x01\x01\x00")))
    assert packet.transport == IPProto.TCP
    assert (packet.payload, packet.tcp_seq) == (PAYLOAD, 77)


def test_ipv6_udp() -> None:
    packet = packet_of(ethernet(ipv6(udp(PAYLOAD)), ethertype=0x86DD))
    assert (address_text(packet.src), address_text(packet.dst), packet.payload) == ("fd00::1", "fd00::2",
                                                                                      PAYLOAD)


@pytest.mark.parametrize("vlans", [(10,), (100, 200)], ids=["802.1Q", "QinQ"])
def test_vlan_tags_are_skipped(vlans: tuple[int, ...]) -> None:
    assert packet_of(ethernet(ipv4(udp(PAYLOAD)), vlans=vlans)).payload == PAYLOAD


def test_ethernet_padding_is_not_payload() -> None:
    frame = ethernet(ipv4(udp(b"x"))) + b"\0" * 20  # short frames are padded to 60 bytes
    assert packet_of(frame).payload == b"x"


def test_ipv4_fragments_come_back_as_fragments() -> None:
    datagram = udp(PAYLOAD)
    first = fragment_of(ethernet(ipv4(datagram[:16], src="192.0.2.1", dst="192.0.2.2", frag=0x2000)))
    rest = fragment_of(ethernet(ipv4(datagram[16:], src="192.0.2.1", dst="192.0.2.2", frag=2)))
    assert (first.version, first.protocol, first.offset, first.more, first.payload) == (4, UDP, 0, True,
                                                                                          datagram[:16])
    assert (rest.offset, rest.more, rest.payload) == (16, False, datagram[16:])
    assert first.src == bytes([192, 0, 2, 1]) and first.ident == rest.ident


def test_ipv6_extension_chain_then_udp() -> None:
    chain = ipv6_ext(DEST_OPTS) + ipv6_ext(AH) + ipv6_ah(UDP) + udp(PAYLOAD)
    assert packet_of(ethernet(ipv6_chain(chain, HOP_BY_HOP), ethertype=0x86DD)).payload == PAYLOAD


def test_ipv6_fragment_header_after_extensions() -> None:
    frame = ethernet(ipv6_chain(ipv6_ext(FRAGMENT) + ipv6_fragment(DEST_OPTS, 24, True, 99) + b"z" * 16,
                                HOP_BY_HOP), ethertype=0x86DD)
    fragment = fragment_of(frame)
    assert (fragment.version, fragment.protocol, fragment.ident) == (6, DEST_OPTS, 99)
    assert (fragment.offset, fragment.more, fragment.payload) == (24, True, b"z" * 16)


def test_a_reassembled_v6_datagram_may_start_with_extension_headers() -> None:
    payload = ipv6_ext(UDP) + udp(PAYLOAD, 5060, 5070)
    datagram = Datagram(6, bytes(15) + b"\1", bytes(15) + b"\2", DEST_OPTS, payload, 3)
    packet = decode_datagram(datagram)
    assert (address_text(packet.src), address_text(packet.dst), packet.sport, packet.payload) == (
        "::1", "::2", 5060, PAYLOAD)


def test_a_fragment_inside_a_reassembled_datagram_is_malformed() -> None:
    datagram = Datagram(6, bytes(16), bytes(16), FRAGMENT, ipv6_fragment(UDP, 0, False, 1) + udp(b""), 2)
    with pytest.raises(Malformed, match="fragment header"):
        decode_datagram(datagram)


def test_non_ip_is_malformed() -> None:
    with pytest.raises(Malformed, match="not a UDP or TCP packet"):
        decode_frame(ethernet(b"\0" * 40, ethertype=0x0806))


def test_every_truncation_raises_a_decode_error() -> None:
    frame = ethernet(ipv4(tcp(PAYLOAD, options=b"\0" * 8), proto=TCP))
    payload_start = len(frame) - len(PAYLOAD)
    for cut in range(payload_start):
        with pytest.raises(DecodeError):
            decode_frame(frame[:cut])
    with pytest.raises(Truncated):
        packet_at(frame[:30], 14, 34, 0, TCP)


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(data)


@given(st.binary(min_size=20, max_size=120))
def test_random_ipv4_bodies_decode_or_raise_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(ethernet(b"\x45" + body))


@given(st.binary(max_size=200), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFF),
       st.integers(0, 0xFF))
def test_any_offsets_read_a_packet_or_raise_decode_error(frame: bytes, l3: int, l4: int, flags: int,
                                                         proto: int) -> None:
    """A live event's offsets come from the kernel: whatever they say, reading at them is bounded."""
    with contextlib.suppress(DecodeError):
        packet_at(frame, l3, l4, flags, proto)
