"""Dialogs and calls: timing, outcome, and the media flows to learn.

``CallTracker.observe(record, now_ns, shard)`` follows each call (keyed by
Call-ID) through its INVITE transaction far enough to time it — INVITE,
first 180/183, 2xx, BYE — and to know how it ended. SDP in the offer and in
the answer names the media endpoints: each becomes a ``FlowEvent`` to learn
(RTP, and RTCP unless muxed), tagged with the shard that owns the dialog,
and every learned endpoint is forgotten when the call ends. Calls expire
after ``ttl_s`` without signalling, and at most ``max_calls`` are held
(the least recently active is evicted and counted).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from userspace.errors import DecodeError
from userspace.event import Kind
from userspace.records import CallSummary, SipRecord
from userspace.rtp import MediaTracker
from userspace.sdp import MediaStream, parse_sdp

NS = 1_000_000_000


class FlowAction(Enum):
    LEARN = "learn"
    FORGET = "forget"


@dataclass(frozen=True, slots=True)
class FlowEvent:
    action: FlowAction
    address: str
    port: int
    kind: Kind
    call_id: str
    shard: int


@dataclass(frozen=True, slots=True)
class CallLimits:
    ttl_s: float = 7200.0      # a call with no signalling for this long is over
    max_calls: int = 200_000


@dataclass(slots=True)
class CallStats:
    calls: int = 0
    ended: int = 0
    expired: int = 0
    evicted: int = 0
    sdp_errors: int = 0
    flows_learned: int = 0
    flows_forgotten: int = 0


Endpoint = tuple[str, int]


@dataclass(slots=True)
class _Call:
    call_id: str
    caller: str
    callee: str
    shard: int
    invite_ns: int
    last_seen: int = 0
    from_tag: str | None = None
    to_tag: str | None = None
    ringing_ns: int | None = None
    answer_ns: int | None = None
    cancelled: bool = False
    endpoints: dict[Endpoint, Kind] = field(default_factory=dict)
    media: list[dict[str, object]] = field(default_factory=list)


class CallTracker:
    def __init__(self, limits: CallLimits | None = None, media: MediaTracker | None = None) -> None:
        self.limits = limits or CallLimits()
        self.stats = CallStats()
        self.media = media or MediaTracker()
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # least recently active first
        self._owners: dict[Endpoint, str] = {}  # endpoint → the call that learned it last
        self._codecs: dict[Endpoint, tuple[int, str | None]] = {}  # endpoint → (clock rate, codec)

    def media_format(self, endpoint: Endpoint) -> tuple[int, str | None] | None:
        """(clock rate, codec) the SDP announced for a media endpoint, if any call did."""
        return self._codecs.get(endpoint)

    def call_of(self, endpoint: Endpoint) -> str | None:
        return self._owners.get(endpoint)

    def __len__(self) -> int:
        return len(self._calls)

    def observe(self, record: SipRecord, now_ns: int,
                shard: int) -> tuple[list[FlowEvent], list[CallSummary]]:
        flows: list[FlowEvent] = []
        summaries: list[CallSummary] = []
        m = record.message
        call = self._calls.get(m.call_id)
        if call is None:
            if not (m.is_request and m.method == "INVITE"):
                return flows, summaries  # mid-call pickup: nothing to time
            call = self._start(record, now_ns, shard, flows, summaries)
        else:
            self._calls.move_to_end(m.call_id)
        call.last_seen = now_ns
        if m.from_tag and call.from_tag is None:
            call.from_tag = m.from_tag
        if m.to_tag and call.to_tag is None and not m.is_request:
            call.to_tag = m.to_tag
        self._learn_sdp(call, record, flows)
        if m.is_request:
            if m.method == "BYE":
                summaries.append(self._end(call, record.ts_ns, "bye", None, None, flows))
            elif m.method == "CANCEL":
                call.cancelled = True
        elif m.cseq_method == "INVITE" and m.status is not None:
            self._invite_response(call, record, flows, summaries)
        return flows, summaries

    def expire(self, now_ns: int) -> tuple[list[FlowEvent], list[CallSummary]]:
        flows: list[FlowEvent] = []
        summaries: list[CallSummary] = []
        deadline = now_ns - int(self.limits.ttl_s * NS)
        while self._calls:
            call = next(iter(self._calls.values()))
            if call.last_seen > deadline:
                break
            self.stats.expired += 1
            summaries.append(self._end(call, None, "timeout", None, None, flows))
        return flows, summaries

    def _start(self, record: SipRecord, now_ns: int, shard: int, flows: list[FlowEvent],
               summaries: list[CallSummary]) -> _Call:
        if len(self._calls) >= self.limits.max_calls:
            oldest = next(iter(self._calls.values()))
            self.stats.evicted += 1
            summaries.append(self._end(oldest, None, "evicted", None, None, flows))
        call = _Call(record.message.call_id, record.src, record.dst, shard, record.ts_ns)
        self._calls[call.call_id] = call
        self.stats.calls += 1
        return call

    def _invite_response(self, call: _Call, record: SipRecord, flows: list[FlowEvent],
                         summaries: list[CallSummary]) -> None:
        status = record.message.status
        assert status is not None
        if status in (180, 183) and call.ringing_ns is None:
            call.ringing_ns = record.ts_ns
        elif 200 <= status < 300 and call.answer_ns is None:
            call.answer_ns = record.ts_ns
        elif status >= 300 and call.answer_ns is None:
            cause = "cancelled" if call.cancelled or status == 487 else "rejected"
            summaries.append(self._end(call, record.ts_ns, cause, status, record.message.reason, flows))

    def _learn_sdp(self, call: _Call, record: SipRecord, flows: list[FlowEvent]) -> None:
        m = record.message
        if not m.body:
            return
        body = m.body_of_type("application/sdp")
        if body is None:
            return
        try:
            sdp = parse_sdp(body)
        except DecodeError:
            self.stats.sdp_errors += 1
            return
        for stream in sdp.media:
            if stream.enabled:
                self._learn_stream(call, stream, flows)

    def _learn_stream(self, call: _Call, stream: MediaStream, flows: list[FlowEvent]) -> None:
        if (stream.address, stream.port) not in call.endpoints:  # re-INVITEs repeat the same media
            call.media.append({"media": stream.media, "address": stream.address, "port": stream.port,
                               "codec": stream.codecs[0][1] if stream.codecs else None,
                               "rtcp_port": stream.rtcp_port, "rtcp_mux": stream.rtcp_mux})
        codec = stream.codecs[0][1] if stream.codecs else None
        self._codecs[(stream.address, stream.port)] = (stream.clock_rate, codec)
        wanted = [((stream.address, stream.port), Kind.RTP)]
        if not stream.rtcp_mux:
            wanted.append(((stream.rtcp_address, stream.rtcp_port), Kind.RTCP))
        for endpoint, kind in wanted:
            if call.endpoints.get(endpoint) == kind:
                continue
            call.endpoints[endpoint] = kind
            self._owners[endpoint] = call.call_id
            self.stats.flows_learned += 1
            flows.append(FlowEvent(FlowAction.LEARN, endpoint[0], endpoint[1], kind, call.call_id,
                                   call.shard))

    def _end(self, call: _Call, end_ns: int | None, cause: str, status: int | None, reason: str | None,
             flows: list[FlowEvent]) -> CallSummary:
        del self._calls[call.call_id]
        self.stats.ended += 1
        owned = {e for e in call.endpoints if self._owners.get(e) == call.call_id}
        streams = tuple(self.media.reports_for(owned))
        self.media.forget(owned)
        for endpoint, kind in call.endpoints.items():
            if endpoint in owned:  # a later call may have taken the others over
                del self._owners[endpoint]
                self._codecs.pop(endpoint, None)
                self.stats.flows_forgotten += 1
                flows.append(FlowEvent(FlowAction.FORGET, endpoint[0], endpoint[1], kind, call.call_id,
                                       call.shard))
        final_status = status if status is not None else (200 if call.answer_ns is not None else None)
        return CallSummary(call.call_id, call.caller, call.callee, call.from_tag, call.to_tag, call.invite_ns,
                           call.ringing_ns, call.answer_ns, end_ns, final_status, reason, cause,
                           tuple(call.media), streams)
