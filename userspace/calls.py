"""Dialogs and calls: timing, outcome, and the media flows to learn.

``CallTracker.observe(record, now_ns, shard)`` follows each call (keyed by
Call-ID) through its INVITE transaction far enough to time it — INVITE,
first 180/183, 2xx, BYE — and to know how it ended. SDP in the offer and in
the answer names the media endpoints: each becomes a ``FlowEvent`` to learn
(RTP, and RTCP unless muxed), tagged with the shard that owns the dialog,
and every learned endpoint is forgotten when the call ends. Calls expire
after ``ttl_s`` without signalling, and at most ``max_calls`` are held
(the least recently active is evicted and counted). A call holds at most
``max_streams`` media descriptions and measured RTP streams; the excess is
counted, so spoofed SDP or SSRCs cannot swell one call's summary.

Media whose SDP cannot be learned (a host name, a refused port) is recorded
in the call as given and learns nothing; each reason is counted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from userspace.errors import DecodeError
from userspace.event import Kind
from userspace.records import CallSummary, SipRecord
from userspace.rtp import MediaTracker
from userspace.sdp import DEFAULT_CLOCK_RATE, MediaStream, SdpProblem, parse_sdp

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


# The kernel's flow map holds the endpoints of max_calls calls: RTP and RTCP
# (unless muxed) of the offer and of the answer, so four per call.
ENDPOINTS_PER_CALL = 4


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Each field's ``range`` is what a config may set it to (otus_ebpf.config)."""

    # a call with no signalling for this long is over
    ttl_s: float = field(default=7200.0, metadata={"range": (1, 7 * 86_400)})
    # also sizes the kernel's flow map (flow_map_entries); ~100 bytes of kernel memory per endpoint
    max_calls: int = field(default=100_000, metadata={"range": (1, 4_000_000)})
    # media descriptions and RTP streams kept per call
    max_streams: int = field(default=16, metadata={"range": (1, 256)})

    @property
    def flow_map_entries(self) -> int:
        """Endpoints the kernel's flow map must hold for ``max_calls`` calls: the
        one place its size comes from."""
        return self.max_calls * ENDPOINTS_PER_CALL


@dataclass(slots=True)
class CallStats:
    calls: int = 0
    ended: int = 0
    expired: int = 0
    evicted: int = 0
    sdp_errors: int = 0
    sdp_unlearnable: int = 0   # media at a host name or 0.0.0.0: recorded, not learned
    sdp_bad_ports: int = 0     # a port or RTCP port outside 1..65535: that endpoint refused
    sdp_bad_clock: int = 0     # an rtpmap clock rate of 0 or absurd: the default clock used
    media_over_cap: int = 0    # media descriptions beyond a call's max_streams
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
    described: set[Endpoint] = field(default_factory=set)  # (address, port) of each entry in media


class CallTracker:
    def __init__(self, limits: CallLimits | None = None, media: MediaTracker | None = None) -> None:
        self.limits = limits or CallLimits()
        self.stats = CallStats()
        self.media = media or MediaTracker(max_per_call=self.limits.max_streams)
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # least recently active first
        self._owners: dict[Endpoint, str] = {}  # endpoint → the call that learned it last
        self._codecs: dict[Endpoint, tuple[int, str | None]] = {}  # endpoint → (clock rate, codec)

    def media_format(self, endpoint: Endpoint) -> tuple[int, str | None] | None:
        """(clock rate, codec) the SDP announced for a media endpoint, if any call did."""
        return self._codecs.get(endpoint)

    def media_owner(self, destination: Endpoint, source: Endpoint) -> tuple[str | None, int, str | None]:
        """The call a media packet belongs to (its destination's, else its source's
        endpoint), with the clock rate and codec announced for it."""
        for endpoint in (destination, source):
            call_id = self._owners.get(endpoint)
            if call_id is not None:
                clock, codec = self._codecs.get(endpoint) or (DEFAULT_CLOCK_RATE, None)
                return call_id, clock, codec
        return None, DEFAULT_CLOCK_RATE, None

    def call_of(self, endpoint: Endpoint) -> str | None:
        return self._owners.get(endpoint)

    @property
    def flows_active(self) -> int:
        """Endpoints learned and not yet forgotten."""
        return len(self._owners)

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
            self._learn_stream(call, stream, flows)

    def _learn_stream(self, call: _Call, stream: MediaStream, flows: list[FlowEvent]) -> None:
        for problem in stream.problems:
            counter = _PROBLEM_COUNTERS[problem]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if (stream.address, stream.port) not in call.described:  # re-INVITEs repeat the same media
            if len(call.media) >= self.limits.max_streams:
                self.stats.media_over_cap += 1
                return
            call.described.add((stream.address, stream.port))
            call.media.append({"media": stream.media, "address": stream.address, "port": stream.port,
                               "codec": stream.codecs[0][1] if stream.codecs else None,
                               "rtcp_port": stream.rtcp_port, "rtcp_mux": stream.rtcp_mux})
        if not stream.enabled:
            return
        codec = stream.codecs[0][1] if stream.codecs else None
        wanted: list[tuple[Endpoint, Kind]] = []
        if stream.learnable:
            wanted.append(((stream.address, stream.port), Kind.RTP))
            self._codecs[(stream.address, stream.port)] = (stream.clock_rate, codec)
        if not stream.rtcp_mux and stream.rtcp_port is not None and stream.rtcp_learnable:
            wanted.append(((stream.rtcp_address, stream.rtcp_port), Kind.RTCP))
        for endpoint, kind in wanted:
            if call.endpoints.get(endpoint) == kind:
                continue
            if endpoint not in call.endpoints and len(call.endpoints) >= 2 * self.limits.max_streams:
                self.stats.media_over_cap += 1  # re-INVITEs moving RTCP about: still bounded
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
        streams = tuple(stream.report() for stream in self.media.take_call(call.call_id))
        for endpoint, kind in call.endpoints.items():
            if self._owners.get(endpoint) == call.call_id:  # a later call may have taken it over
                del self._owners[endpoint]
                self._codecs.pop(endpoint, None)
                self.stats.flows_forgotten += 1
                flows.append(FlowEvent(FlowAction.FORGET, endpoint[0], endpoint[1], kind, call.call_id,
                                       call.shard))
        final_status = status if status is not None else (200 if call.answer_ns is not None else None)
        return CallSummary(call.call_id, call.caller, call.callee, call.from_tag, call.to_tag, call.invite_ns,
                           call.ringing_ns, call.answer_ns, end_ns, final_status, reason, cause,
                           tuple(call.media), streams)


_PROBLEM_COUNTERS = {SdpProblem.UNLEARNABLE: "sdp_unlearnable", SdpProblem.BAD_PORT: "sdp_bad_ports",
                     SdpProblem.BAD_CLOCK: "sdp_bad_clock"}
