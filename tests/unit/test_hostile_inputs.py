"""Issue 12: one datagram each used to stop the agent. Each is now a counted
condition or a record, and the pipeline goes on; and a bug anywhere in the
per-event path is counted at a failure boundary instead of ending capture."""

from __future__ import annotations

import pytest

from otus_ebpf.kernel.flows import FlowStats, FlowTableFull, apply_each
from tests.support.frames import ethernet, ipv4, raw, ring_record, udp
from tests.support.hostile import CALLEE, CALLER, TRIGGERS, clock_zero_media, invite, rtp_packet, sdp
from userspace.boundary import Boundary
from userspace.calls import CallLimits
from userspace.endpoints import FlowAction, FlowEvent
from userspace.errors import Malformed
from userspace.event import Kind
from userspace.pipeline import Pipeline
from userspace.records import CallSummary, SipRecord
from userspace.sdp import SdpProblem, parse_sdp
from userspace.sip import parse_message


def feed(pipeline: Pipeline, payload: bytes, src: str = CALLER, dst: str = CALLEE, kind: Kind = Kind.SIP,
         sport: int = 5060, dport: int = 5060, ts_ns: int = 1) -> list[object]:
    frame = ethernet(ipv4(udp(payload, sport, dport), src=src, dst=dst))
    return list(pipeline.process([ring_record(frame, ts_ns=ts_ns, kind=kind)]))


def test_an_sdp_host_name_is_recorded_as_given_and_learns_nothing() -> None:
    """Regression: ipaddress.ip_address('pbx.example.com') raised out of flow learning."""
    pipeline = Pipeline({}, 0)
    (record,) = feed(pipeline, TRIGGERS["sdp_host_name"])
    assert isinstance(record, SipRecord)
    assert pipeline.take_flow_events() == []
    assert pipeline.calls.stats.sdp_unlearnable == 1
    (stream,) = parse_sdp(record.message.body).media
    assert (stream.address, stream.learnable, stream.problems) == ("pbx.example.com", False,
                                                                   (SdpProblem.UNLEARNABLE,))


def test_a_held_stream_at_0_0_0_0_learns_nothing() -> None:
    (stream,) = parse_sdp(sdp("c=IN IP4 0.0.0.0", "m=audio 4000 RTP/AVP 0")).media
    assert not stream.learnable and SdpProblem.UNLEARNABLE in stream.problems


def test_a_superscript_content_length_is_a_decode_error() -> None:
    """Regression: Content-Length: ² passed str.isdigit() and int() raised ValueError."""
    with pytest.raises(Malformed, match="bad Content-Length"):
        parse_message(TRIGGERS["content_length_superscript"])
    pipeline = Pipeline({}, 0)
    assert feed(pipeline, TRIGGERS["content_length_superscript"]) == []
    assert pipeline.stats.sip_errors == 1


@pytest.mark.parametrize("name", ["sdp_port_superscript", "sdp_payload_type_superscript",
                                  "sdp_rtpmap_superscript", "sdp_rtcp_superscript", "sdp_clock_superscript"])
def test_non_ascii_digits_in_sdp_are_refused_per_value(name: str) -> None:
    """Regression: five int() calls in userspace/sdp.py raised on '²'."""
    pipeline = Pipeline({}, 0)
    (record,) = feed(pipeline, TRIGGERS[name])
    assert isinstance(record, SipRecord)
    stats = pipeline.calls.stats
    assert stats.sdp_errors == 0
    if name == "sdp_port_superscript":
        assert stats.sdp_bad_ports == 1 and pipeline.take_flow_events() == []
    elif name == "sdp_rtcp_superscript":
        assert stats.sdp_bad_ports == 1
        assert [e.kind for e in pipeline.take_flow_events()] == [Kind.RTP]
    elif name == "sdp_clock_superscript":
        assert stats.sdp_bad_clock == 1
    else:  # an unreadable payload type or rtpmap is ignored; the stream is learned
        assert {e.kind for e in pipeline.take_flow_events()} == {Kind.RTP, Kind.RTCP}


def test_port_65535_learns_rtp_and_refuses_rtcp_on_65536() -> None:
    """Regression: RTCP at 65536 broke the kernel flow key pack (struct.error)."""
    pipeline = Pipeline({}, 0)
    feed(pipeline, TRIGGERS["sdp_port_65535"])
    events = pipeline.take_flow_events()
    assert [(e.kind, e.port) for e in events] == [(Kind.RTP, 65535)]
    assert all(0 < e.port < 65536 for e in events)
    assert pipeline.calls.stats.sdp_bad_ports == 1


def test_a_clock_rate_of_zero_is_refused_and_its_rtp_measured_at_8000() -> None:
    """Regression: a=rtpmap:0 PCMU/0 followed by RTP raised ZeroDivisionError."""
    pipeline = Pipeline({}, 0)
    feed(pipeline, TRIGGERS["sdp_clock_zero"], src=CALLEE, dst=CALLER)
    assert pipeline.calls.stats.sdp_bad_clock == 1
    address, port = clock_zero_media()
    for seq in range(50):
        feed(pipeline, rtp_packet(seq, 0xC10C), src=CALLER, dst=address, kind=Kind.RTP, sport=40000,
             dport=port, ts_ns=seq * 20_000_000)
    (stream,) = pipeline.calls.media.streams.values()
    report = stream.report()
    assert (stream.clock_rate, report["packets"], report["lost"]) == (8000, 50, 0)
    assert report["jitter_ms"] == 0.0


def test_spoofed_ssrcs_cannot_swell_one_call_summary() -> None:
    """Regression: 20,000 SSRCs on one call's endpoint made a 5 MB call record."""
    pipeline = Pipeline({}, 0, calls=CallLimits(max_streams=16))
    feed(pipeline, invite("spoof", sdp(f"c=IN IP4 {CALLEE}", "m=audio 32000 RTP/AVP 0", address=CALLEE)),
         src=CALLEE, dst=CALLER)
    for ssrc in range(2000):
        feed(pipeline, rtp_packet(1, ssrc), src=CALLER, dst=CALLEE, kind=Kind.RTP, sport=40000, dport=32000)
    assert len(pipeline.calls.media.streams) == 16
    assert pipeline.calls.media.stats.streams_over_cap == 2000 - 16
    bye = invite("spoof").replace(b"INVITE sip:", b"BYE sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE")
    (summary,) = [r for r in feed(pipeline, bye) if isinstance(r, CallSummary)]
    assert len(summary.streams) == 16


def test_media_descriptions_per_call_are_capped() -> None:
    pipeline = Pipeline({}, 0, calls=CallLimits(max_streams=4))
    lines = [f"c=IN IP4 {CALLER}", *(f"m=audio {40000 + 2 * i} RTP/AVP 0" for i in range(10))]
    feed(pipeline, invite("many", sdp(*lines)))
    assert len(pipeline.take_flow_events()) == 8  # RTP and RTCP of the first four
    assert pipeline.calls.stats.media_over_cap == 6


def test_every_trigger_through_the_pipeline_leaves_no_internal_error() -> None:
    pipeline = Pipeline({}, 0, boundary=Boundary(strict=False))
    for payload in TRIGGERS.values():
        feed(pipeline, payload)
    assert pipeline.boundary.counts == {}
    assert pipeline.stats.records == len(TRIGGERS) - 1  # all but the bad Content-Length


# -- failure boundaries, each proved with an injected fault --------------------------------


def faulty(exc: Exception) -> object:
    def raise_it(*_args: object, **_kwargs: object) -> object:
        raise exc
    return raise_it


@pytest.mark.replaces_code
def test_a_bug_in_one_event_is_counted_and_the_next_event_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[tuple[str, str, bytes | None]] = []
    boundary = Boundary(lambda stage, kind, _exc, example: said.append((stage, kind, example)), strict=False)
    pipeline = Pipeline({}, 0, boundary=boundary)
    original = pipeline.calls.observe
    calls = {"n": 0}

    def observe_failing_once(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("injected")
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.calls, "observe", observe_failing_once)
    first = feed(pipeline, invite("c1"))
    second = feed(pipeline, invite("c2"))
    assert [type(r) for r in first] == [SipRecord], "the SIP record of the failing message survives"
    assert [type(r) for r in second] == [SipRecord]
    assert boundary.counts == {("calls", "KeyError"): 1}
    assert said[0][:2] == ("calls", "KeyError") and said[0][2] is not None and b"INVITE" in said[0][2]


@pytest.mark.replaces_code
def test_a_bug_deep_in_a_parser_is_named_by_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    boundary = Boundary(strict=False)
    pipeline = Pipeline({}, 0, boundary=boundary)
    monkeypatch.setattr("userspace.pipeline.parse_message", faulty(ZeroDivisionError("injected")))
    assert feed(pipeline, invite("x")) == []
    assert feed(pipeline, invite("y")) == []
    assert boundary.counts == {("pipeline", "ZeroDivisionError"): 2}
    monkeypatch.undo()
    monkeypatch.setattr("userspace.sdp._clock_rate", faulty(IndexError("injected")))
    feed(pipeline, invite("z", sdp(f"c=IN IP4 {CALLER}", "m=audio 1000 RTP/AVP 0")))
    assert boundary.counts[("sdp", "IndexError")] == 1


@pytest.mark.replaces_code
def test_strict_mode_raises_what_a_boundary_would_count(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = Pipeline({}, 0)  # the library's default is strict
    monkeypatch.setattr("userspace.pipeline.parse_message", faulty(ZeroDivisionError("injected")))
    with pytest.raises(ZeroDivisionError):
        feed(pipeline, invite("x"))


@pytest.mark.replaces_code
def test_expiry_steps_have_their_own_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    boundary = Boundary(strict=False)
    pipeline = Pipeline({}, 0, boundary=boundary)
    monkeypatch.setattr(pipeline.tcp, "expire", faulty(RuntimeError("injected")))
    monkeypatch.setattr(pipeline.calls, "expire", faulty(ValueError("injected")))
    assert pipeline.expire(10**18) == []
    assert boundary.counts == {("tcp", "RuntimeError"): 1, ("calls", "ValueError"): 1}


def test_kinds_of_bugs_are_bounded() -> None:
    boundary = Boundary(strict=False)
    for n in range(1000):
        try:
            raise type(f"Bug{n}", (Exception,), {})()
        except Exception as exc:
            boundary.failed("stage", exc)
    assert len(boundary.counts) == 257 and boundary.total == 1000


def test_flow_learning_counts_a_full_table_and_a_bad_event_and_goes_on() -> None:
    learned: list[int] = []

    def learn(event: FlowEvent) -> None:
        if event.port == 2:
            raise FlowTableFull("full")
        if event.port == 3:
            raise ValueError("a bug")
        learned.append(event.port)

    events = [FlowEvent(FlowAction.LEARN, raw("10.0.0.1"), port, Kind.RTP, "c", 0) for port in (1, 2, 3, 4)]
    stats, boundary = FlowStats(), Boundary(strict=False)
    apply_each(events, learn, lambda _e: None, stats, boundary)
    assert learned == [1, 4]
    assert (stats.learned, stats.flows_map_full, stats.failed) == (2, 1, 1)
    assert boundary.counts == {("flow_learning", "ValueError"): 1}
