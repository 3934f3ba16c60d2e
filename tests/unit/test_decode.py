from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.frames import TCP, ethernet, ipv4, ipv6, tcp, udp
from userspace.decode import IPProto, decode_frame
from userspace.errors import DecodeError, Malformed, Truncated

PAYLOAD = b"OPTIONS sip:x SIP/2.0\r\n\r\n"


def test_ipv4_udp() -> None:
    packet = decode_frame(ethernet(ipv4(udp(PAYLOAD, 5070, 5060), src="192.0.2.1", dst="192.0.2.2")))
    assert (packet.src, packet.sport, packet.dst, packet.dport) == ("192.0.2.1", 5070, "192.0.2.2", 5060)
    assert packet.transport is IPProto.UDP
    assert packet.payload == PAYLOAD


def test_ipv4_options_and_tcp_options_are_skipped() -> None:
    segment = tcp(PAYLOAD, seq=77, options=b"\x01\x01\x01\x00")
    packet = decode_frame(ethernet(ipv4(segment, proto=TCP, options=b"\x01\x01\x01\x00")))
    assert packet.transport is IPProto.TCP
    assert (packet.payload, packet.tcp_seq) == (PAYLOAD, 77)


def test_ipv6_udp() -> None:
    packet = decode_frame(ethernet(ipv6(udp(PAYLOAD)), ethertype=0x86DD))
    assert (packet.src, packet.dst, packet.payload) == ("fd00::1", "fd00::2", PAYLOAD)


@pytest.mark.parametrize("vlans", [(10,), (100, 200)], ids=["802.1Q", "QinQ"])
def test_vlan_tags_are_skipped(vlans: tuple[int, ...]) -> None:
    assert decode_frame(ethernet(ipv4(udp(PAYLOAD)), vlans=vlans)).payload == PAYLOAD


def test_ethernet_padding_is_not_payload() -> None:
    frame = ethernet(ipv4(udp(b"x"))) + b"\0" * 20  # short frames are padded to 60 bytes
    assert decode_frame(frame).payload == b"x"


def test_fragments_are_refused_until_reassembly_is_wired() -> None:
    with pytest.raises(Malformed, match="fragment"):
        decode_frame(ethernet(ipv4(udp(PAYLOAD), frag=0x2000)))


def test_non_ip_is_malformed() -> None:
    with pytest.raises(Malformed, match="not IP"):
        decode_frame(ethernet(b"\0" * 40, ethertype=0x0806))


def test_every_truncation_raises_a_decode_error() -> None:
    frame = ethernet(ipv4(tcp(PAYLOAD, options=b"\0" * 8), proto=TCP))
    payload_start = len(frame) - len(PAYLOAD)
    for cut in range(payload_start):
        with pytest.raises(DecodeError):
            decode_frame(frame[:cut])
    with pytest.raises(Truncated):
        decode_frame(frame[:5])


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(data)


@given(st.binary(min_size=20, max_size=120))
def test_random_ipv4_bodies_decode_or_raise_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(ethernet(b"\x45" + body))
