"""Call-ID routing in user space: the owner of a message, the hand-off between
workers (what is read ahead of a handed-over INVITE: test_early)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from otus_ebpf.capture.supervisor import HANDOFF_QUEUE_BYTES, _HandOffs
from tests.support.frames import ethernet, ipv4, raw, ring_record, tcp, udp
from tests.support.sip_samples import INVITE, OK_200
from tests.support.tunnels import OUTER_DST, OUTER_SRC, gre
from userspace.event import EVENT_HEADER, Direction, Kind
from userspace.frame import IPProto
from userspace.pipeline import Pipeline
from userspace.records import SipRecord
from userspace.sharding import (
    CALL_ID_SCAN,
    HandOff,
    call_id_hash,
    decode_handoff,
    encode_handoff,
    fnv1a,
    handoff_record,
    owner_of,
)
from userspace.sip import parse_message
from userspace.tunnel import Encap, TunnelKind

TCP_PROTO = 6


def test_the_hash_is_fnv1a_of_the_value_whatever_the_header_form() -> None:
    forms = [b"Call-ID: abc@h", b"call-id:abc@h", b"i: abc@h", b"I:\tabc@h", b"CALL-ID:  abc@h ;x"]
    for form in forms:
        assert call_id_hash(b"BYE sip:x SIP/2.0\r\n" + form + b"\r\n\r\n") == fnv1a(b"abc@h"), form


def test_no_owner_without_a_whole_call_id_in_the_header() -> None:
    for payload in (b"BYE sip:x SIP/2.0\r\nTo: a\r\n\r\nCall-ID: body\r\n",   # only in the body
                    b"BYE sip:x SIP/2.0\r\nCall-ID : abc\r\n\r\n",           # a blank before the colon
                    b"BYE sip:x SIP/2.0\r\nCall-ID: \r\n\r\n",               # empty
                    b"BYE sip:x SIP/2.0\r\nCall-ID: abc"):                   # cut short
        assert call_id_hash(payload) is None and owner_of(payload, 2) is None, payload


def test_a_dialogs_messages_have_one_owner_and_dialogs_spread() -> None:
    assert owner_of(INVITE, 2) == owner_of(OK_200, 2) is not None
    owners = [owner_of(INVITE.replace(b"a84b4c76e66710", f"c{n}".encode()), 2) for n in range(200)]
    assert 70 <= owners.count(0) <= 130, owners.count(0)


@pytest.mark.parametrize("encap", [None, Encap(TunnelKind.GRE, 7001, raw("2001:db8::1"), raw("2001:db8::2")),
                                   Encap(TunnelKind.VXLAN, 0, raw("192.0.2.1"), raw("192.0.2.2")),
                                   Encap(TunnelKind.IPIP, None, raw("192.0.2.1"), raw("192.0.2.2"))])
def test_a_handoff_round_trips(encap: Encap | None) -> None:
    h = HandOff(123, 4, Direction.EGRESS, IPProto.TCP, raw("fd00::1"), 5060, raw("fd00::2"), 40000, 3,
                (100, 200), INVITE, encap)
    assert decode_handoff(encode_handoff(h)) == h


def test_a_damaged_handoff_is_counted_not_raised() -> None:
    good = handoff_record(HandOff(1, 2, Direction.INGRESS, IPProto.UDP, raw("10.0.0.1"), 5060,
                                  raw("10.0.0.2"), 5060, 1, (), INVITE))
    header = EVENT_HEADER.size
    def damage(offset: int, data: bytes) -> bytes:  # offsets in the hand-off's own header
        at = header + offset
        return good[:at] + data + good[at + len(data):]

    damaged = [damage(12, b"\x07"),            # direction 7
               damage(13, b"\x63"),            # transport 99
               damage(20, b"\x05"),            # a source address of 5 bytes
               damage(23, b"\x09"),            # tunnel code 9
               damage(23, b"\x01"),            # a VXLAN without outer addresses
               damage(29, b"\x04"),            # outer addresses without a tunnel
               good[:header + 10]]             # cut inside its header
    pipeline = Pipeline({2: "eth0"}, 0, route=(0, 2))
    assert pipeline.process(damaged) == []
    assert pipeline.stats.event_errors == len(damaged) and pipeline.stats.handed_in == 0


def _tcp_record(message: bytes, seq: int) -> bytes:
    segment = tcp(message, 40000, 5060, seq=seq)
    frame = ethernet(ipv4(segment, proto=TCP_PROTO, src="10.0.0.1", dst="10.0.0.2"))
    return ring_record(frame, Direction.INGRESS)


def test_a_message_framed_by_the_wrong_worker_is_handed_to_its_owner() -> None:
    owner = owner_of(INVITE, 2)
    assert owner is not None
    framer = Pipeline({2: "eth0"}, 0, route=(1 - owner, 2))
    receiver = Pipeline({2: "eth0"}, 0, route=(owner, 2))
    assert framer.process([_tcp_record(INVITE, 1)]) == []
    handoffs = framer.take_handoffs()
    assert [o for o, _ in handoffs] == [owner] and framer.stats.handed_off == 1
    records = receiver.process([handoffs[0][1]])  # as the parent forwards it
    sip = [r for r in records if isinstance(r, SipRecord)]
    assert len(sip) == 1 and receiver.stats.handed_in == 1
    record = sip[0]
    assert (record.transport, record.src, record.dport) == (IPProto.TCP, raw("10.0.0.1"), 5060)
    assert record.shard == owner
    assert sip[0].message.call_id == parse_message(INVITE).call_id
    assert len(receiver.calls) == 1



def test_a_reassembled_message_from_a_tunnel_keeps_its_tunnel_on_the_way_to_its_owner() -> None:
    """An INVITE in two inner fragments inside GRE: the worker that reassembles it is not
    the Call-ID's owner, and the owner's record still says which tunnel it came in."""
    owner = owner_of(INVITE, 2)
    assert owner is not None
    datagram = udp(INVITE, 5070, 5060)
    inner = [ipv4(datagram[:256], src="10.3.0.1", dst="10.3.0.2", frag=0x2000),
             ipv4(datagram[256:], src="10.3.0.1", dst="10.3.0.2", frag=32)]
    framer = Pipeline({2: "eth0"}, 0, route=(1 - owner, 2))
    assert framer.process([ring_record(gre(packet, 0x0800, key=7001), kind=Kind.FRAGMENT)
                           for packet in inner]) == []
    receiver = Pipeline({2: "eth0"}, 0, route=(owner, 2))
    [record] = receiver.process([raw for _owner, raw in framer.take_handoffs()])
    assert isinstance(record, SipRecord) and record.fragments == 2
    assert record.encap == Encap(TunnelKind.GRE, 7001, raw(OUTER_SRC), raw(OUTER_DST))


def test_a_call_id_past_the_kernels_scan_still_finds_its_owner() -> None:
    """The INVITE's Call-ID lies past byte 384 (long Vias): the kernel cannot route it,
    and the worker that frames it must send it where the kernel sends the short BYE."""
    long_vias = b"".join(b"Via: SIP/2.0/UDP proxy%d.carrier.example.net:5060;branch=z9hG4bK%s\r\n"
                         % (n, b"x" * 60) for n in range(4))
    invite = INVITE.replace(b"Max-Forwards", long_vias + b"Max-Forwards")
    assert invite.index(b"Call-ID") > CALL_ID_SCAN and call_id_hash(invite) is None  # the kernel's view
    bye = b"BYE sip:a@x SIP/2.0\r\nCall-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\r\n"
    for workers in (2, 3, 8):
        assert owner_of(invite, workers) == call_id_hash(bye) % workers  # type: ignore[operator]


def test_a_handed_in_message_is_no_frame_for_the_pcap() -> None:
    owner = owner_of(INVITE, 2)
    assert owner is not None
    framer = Pipeline({2: "eth0"}, 0, route=(1 - owner, 2))
    framer.process([_tcp_record(INVITE, 1)])
    receiver = Pipeline({2: "eth0"}, 0, route=(owner, 2))
    receiver.keep_frames = True
    assert len(receiver.process([raw for _owner, raw in framer.take_handoffs()])) == 1  # the INVITE
    assert receiver.take_frames() == []


def test_the_forwarder_counts_what_it_cannot_send_and_outlives_a_failing_send() -> None:
    sent: list[tuple[int, list[bytes]]] = []
    calls: Iterator[Exception | bool] = iter([RuntimeError("a closed pipe, say"), False, True])

    def send(owner: int, batch: list[bytes]) -> bool:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome:
            sent.append((owner, batch))
        return outcome

    handoffs = _HandOffs(send, 2)
    for n in range(3):
        handoffs.forward([(1, b"m%d" % n)])
    handoffs.forward([(5, b"no such worker")])
    handoffs.forward([(0, b"x" * (HANDOFF_QUEUE_BYTES + 1))])  # more than a worker's queue holds
    deadline = time.monotonic() + 5
    while handoffs.forwarded + handoffs.dropped < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    handoffs.close()
    assert sent == [(1, [b"m2"])]
    assert (handoffs.forwarded, handoffs.dropped) == (1, 4)
