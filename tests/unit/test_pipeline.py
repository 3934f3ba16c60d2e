from __future__ import annotations

from tests.support.frames import (
    FRAGMENT,
    TCP,
    UDP,
    ethernet,
    ipv4,
    ipv6_chain,
    ipv6_fragment,
    raw,
    ring_record,
    tcp,
    udp,
)
from tests.support.sip_samples import INVITE, OK_200
from userspace.event import Direction
from userspace.frame import IPProto
from userspace.pipeline import Pipeline
from userspace.records import Record, SipRecord

OFFSET_NS = 1_700_000_000_000_000_000
V6 = 0x86DD


def make_pipeline() -> Pipeline:
    return Pipeline({2: "eth0"}, OFFSET_NS)


def sip_only(records: list[Record]) -> list[SipRecord]:
    """The SIP message records (call summaries come out too when a call ends)."""
    return [r for r in records if isinstance(r, SipRecord)]


def test_udp_sip_becomes_a_record_with_wall_clock_time() -> None:
    frame = ethernet(ipv4(udp(INVITE, 5070, 5060), src="192.0.2.1", dst="192.0.2.2"))
    (record,) = sip_only(make_pipeline().process([ring_record(frame, Direction.INGRESS, ts_ns=5)]))
    assert record.ts_ns == OFFSET_NS + 5
    assert (record.interface, record.direction, record.transport) == ("eth0", Direction.INGRESS, IPProto.UDP)
    assert (record.src, record.sport, record.dst, record.dport) == (raw("192.0.2.1"), 5070, raw("192.0.2.2"),
                                                                    5060)
    assert record.message.method == "INVITE"
    assert record.key == b"a84b4c76e66710@pc33.atlanta.example.com"


def test_several_messages_in_one_tcp_segment_and_keepalives() -> None:
    payload = b"\r\n\r\n" + INVITE + OK_200 + b"\r\n"
    pipeline = make_pipeline()
    records = sip_only(pipeline.process([ring_record(ethernet(ipv4(tcp(payload), proto=TCP)))]))
    assert [r.message.method or r.message.status for r in records] == ["INVITE", 200]
    assert pipeline.stats.records == 2
    assert pipeline.stats.sip_errors == 0


def test_a_udp_datagram_holds_one_message() -> None:
    records = sip_only(make_pipeline().process([ring_record(ethernet(ipv4(udp(OK_200 + INVITE))))]))
    assert len(records) == 1


def test_bad_input_is_counted_by_layer_and_skipped() -> None:
    good = ring_record(ethernet(ipv4(udp(INVITE))))
    pipeline = make_pipeline()
    records = sip_only(pipeline.process([
        good[:10],                                              # broken ring record
        ring_record(ethernet(b"\0" * 30, ethertype=0x0806)),   # not IP
        ring_record(ethernet(ipv4(udp(b"")))),                  # empty datagram
        ring_record(ethernet(ipv4(udp(b"hello")))),             # not SIP
        ring_record(ethernet(ipv4(udp(INVITE[:-10])))),         # SIP cut short
        good,
    ]))
    assert len(records) == 1
    s = pipeline.stats
    assert (s.events, s.event_errors, s.decode_errors, s.empty_payloads, s.not_sip, s.sip_errors,
            s.records) == (6, 1, 1, 1, 1, 1, 1)


def test_fragments_are_reassembled_into_one_record_v4_and_v6() -> None:
    datagram = udp(INVITE)
    cut = 8 * (len(datagram) // 16)
    v4 = [ethernet(ipv4(datagram[:cut], frag=0x2000)), ethernet(ipv4(datagram[cut:], frag=cut // 8))]
    v6 = [ethernet(ipv6_chain(ipv6_fragment(UDP, 0, True, 5) + datagram[:cut], FRAGMENT), ethertype=V6),
          ethernet(ipv6_chain(ipv6_fragment(UDP, cut, False, 5) + datagram[cut:], FRAGMENT), ethertype=V6)]
    for frames in (v4, list(reversed(v6))):
        pipeline = make_pipeline()
        (record,) = sip_only(pipeline.process([ring_record(f) for f in frames]))
        assert record.message.method == "INVITE" and record.message.size == len(INVITE)
        assert record.fragments == 2
        assert pipeline.reassembler.stats.datagrams == 1


def test_incomplete_fragments_expire_with_event_time() -> None:
    pipeline = make_pipeline()
    first_half = ring_record(ethernet(ipv4(udp(INVITE)[:64], frag=0x2000)), ts_ns=0)
    assert sip_only(pipeline.process([first_half])) == []
    pipeline.expire(31 * 10**9)
    assert pipeline.reassembler.stats.timeouts == 1
