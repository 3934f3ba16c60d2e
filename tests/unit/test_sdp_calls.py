"""SDP parsing and call tracking: timing, outcomes and the media flows learned."""

from __future__ import annotations

import pytest

from tests.support.frames import ethernet, ipv4, raw, ring_record, udp
from tests.support.sip_samples import sip_message
from userspace.calls import CallLimits, CallTracker
from userspace.endpoints import FlowAction, FlowEvent
from userspace.errors import Malformed
from userspace.event import Kind
from userspace.pipeline import Pipeline
from userspace.records import CallSummary, Record, SipRecord
from userspace.sdp import parse_sdp


def sdp(*lines: str) -> bytes:
    return ("\r\n".join(["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", *lines]) + "\r\n").encode()


def test_session_and_media_level_connection_ipv6_rtcp_and_codecs() -> None:
    parsed = parse_sdp(sdp("c=IN IP4 192.0.2.1",
                           "m=audio 49170 RTP/AVP 0 8 101", "a=rtpmap:101 telephone-event/8000",
                           "a=rtcp:53020 IN IP4 192.0.2.9",
                           "m=video 51372 RTP/AVP 96", "c=IN IP6 2001:db8::7", "a=rtpmap:96 H264/90000",
                           "a=rtcp-mux",
                           "m=audio 0 RTP/AVP 0"))
    audio, video, disabled = parsed.media
    assert (audio.address, audio.port, audio.rtcp_address, audio.rtcp_port) == ("192.0.2.1", 49170,
                                                                                 "192.0.2.9", 53020)
    assert audio.codecs == ((0, "PCMU/8000"), (8, "PCMA/8000"), (101, "telephone-event/8000"))
    assert (video.address, video.rtcp_port, video.rtcp_mux, video.clock_rate) == ("2001:db8::7", 51372,
                                                                                  True, 90000)
    assert not disabled.enabled and audio.enabled


def test_rtcp_defaults_to_the_next_port() -> None:
    (stream,) = parse_sdp(sdp("c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 18")).media
    assert (stream.rtcp_address, stream.rtcp_port, stream.codecs) == ("10.0.0.1", 4001, ((18, "G729/8000"),))


@pytest.mark.parametrize("lines", [("m=audio 4000 RTP/AVP 0",), ("c=IN IP9 x", "m=audio 1 RTP/AVP 0"),
                                   ("c=IN IP4 1.2.3.4", "m=audio")])
def test_bad_sdp_is_rejected(lines: tuple[str, ...]) -> None:
    with pytest.raises(Malformed):
        parse_sdp(sdp(*lines))


CALLER, CALLEE = "10.0.0.1", "10.0.0.2"
OFFER = sdp("c=IN IP4 10.0.0.1", "m=audio 40000 RTP/AVP 0")
ANSWER = sdp("c=IN IP4 10.0.0.2", "m=audio 50000 RTP/AVP 0", "a=rtcp-mux")


def message(start: str, cseq: str, body: bytes = b"", to_tag: str = "") -> bytes:
    headers = ["Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1", "From: <sip:a@x>;tag=f1",
               f"To: <sip:b@y>{to_tag}", "Call-ID: call-1", f"CSeq: {cseq}"]
    if body:
        headers.append("Content-Type: application/sdp")
    return sip_message(start, headers, body)


def run_call(pipeline: Pipeline, steps: list[tuple[bytes, bool, int]]) -> list[Record]:
    """steps: (message, sent by the caller, ms since start)."""
    out: list[Record] = []
    for data, from_caller, ms in steps:
        src, dst = (CALLER, CALLEE) if from_caller else (CALLEE, CALLER)
        frame = ethernet(ipv4(udp(data), src=src, dst=dst))
        out += pipeline.process([ring_record(frame, ts_ns=ms * 1_000_000, shard=1)])
    return out


def summaries(records: list[Record]) -> list[CallSummary]:
    return [r for r in records if isinstance(r, CallSummary)]


def test_an_answered_call_is_timed_learns_its_media_and_forgets_it_after_bye() -> None:
    pipeline = Pipeline({}, 0)
    records = run_call(pipeline, [
        (message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER), True, 0),
        (message("SIP/2.0 100 Trying", "1 INVITE"), False, 5),
        (message("SIP/2.0 180 Ringing", "1 INVITE", to_tag=";tag=t9"), False, 250),
    ])
    learned = pipeline.take_flow_events()
    tag = 1  # the tracker's first call: the kernel keys the call's streams by it
    assert learned == [FlowEvent(FlowAction.LEARN, raw(CALLER), 40000, Kind.RTP, "call-1", 1, tag),
                       FlowEvent(FlowAction.LEARN, raw(CALLER), 40001, Kind.RTCP, "call-1", 1, tag)]
    records += run_call(pipeline, [
        (message("SIP/2.0 200 OK", "1 INVITE", ANSWER, to_tag=";tag=t9"), False, 1250),
        (message("ACK sip:b@y SIP/2.0", "1 ACK", to_tag=";tag=t9"), True, 1260),
    ])
    assert pipeline.take_flow_events() == [
        FlowEvent(FlowAction.LEARN, raw(CALLEE), 50000, Kind.RTP, "call-1", 1, tag)]
    records += run_call(pipeline, [(message("BYE sip:b@y SIP/2.0", "2 BYE", to_tag=";tag=t9"), True, 61250)])
    assert {(e.action, e.port) for e in pipeline.take_flow_events()} == {
        (FlowAction.FORGET, 40000), (FlowAction.FORGET, 40001), (FlowAction.FORGET, 50000)}
    (summary,) = summaries(records)
    d = summary.to_dict()
    assert (d["setup_ms"], d["answer_ms"], d["duration_ms"]) == (250.0, 1250.0, 60000.0)
    assert (d["final_status"], d["end_cause"], d["caller"], d["to_tag"]) == (200, "bye", CALLER, "t9")
    assert [m["port"] for m in summary.media] == [40000, 50000]
    assert all(isinstance(r, SipRecord) for r in records if r is not summary)


def test_rejected_and_cancelled_calls() -> None:
    for final, cancel, cause in (("SIP/2.0 486 Busy Here", False, "rejected"),
                                 ("SIP/2.0 487 Request Terminated", True, "cancelled")):
        pipeline = Pipeline({}, 0)
        steps = [(message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER), True, 0)]
        if cancel:
            steps.append((message("CANCEL sip:b@y SIP/2.0", "1 CANCEL"), True, 100))
        steps.append((message(final, "1 INVITE", to_tag=";tag=t9"), False, 200))
        (summary,) = summaries(run_call(pipeline, steps))
        d = summary.to_dict()
        assert (d["end_cause"], d["final_status"], d["duration_ms"]) == (cause, int(final[8:11]), None)
        assert {e.action for e in pipeline.take_flow_events()} == {FlowAction.LEARN, FlowAction.FORGET}


def test_calls_expire_and_the_cap_evicts_the_least_recently_active() -> None:
    tracker = CallTracker(CallLimits(ttl_s=60, max_calls=2))
    pipeline = Pipeline({}, 0)
    pipeline.calls = tracker
    for n in range(3):
        invite = message("INVITE sip:b@y SIP/2.0", "1 INVITE").replace(b"call-1", f"call-{n}".encode())
        pipeline.process([ring_record(ethernet(ipv4(udp(invite))), ts_ns=n)])
    assert (len(tracker), tracker.stats.evicted) == (2, 1)
    expired = pipeline.expire(61 * 10**9)
    assert {s.to_dict()["end_cause"] for s in summaries(expired)} == {"timeout"}
    assert (len(tracker), tracker.stats.expired) == (0, 2)


def test_media_announced_twice_is_listed_once() -> None:
    pipeline = Pipeline({}, 0)
    (summary,) = summaries(run_call(pipeline, [
        (message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER), True, 0),
        (message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER), True, 500),   # a retransmission
        (message("SIP/2.0 200 OK", "1 INVITE", ANSWER, to_tag=";tag=t9"), False, 600),
        (message("BYE sip:b@y SIP/2.0", "2 BYE", to_tag=";tag=t9"), True, 900),
    ]))
    assert [(m["address"], m["port"]) for m in summary.media] == [(CALLER, 40000), (CALLEE, 50000)]
