"""Dialogs and calls: timing, outcome, and the media flows to learn.

``CallTracker.observe(record, now_ns, shard)`` follows each call (keyed by
Call-ID) through its INVITE transaction far enough to time it — INVITE,
first 180/183, 2xx, BYE — and to know how it ended. SDP in the offer and in
the answer names the media endpoints: each is taken in the endpoint registry
(userspace.endpoints: shared endpoints are reference-counted, the newest
call owns one) with that stream's payload types, which may ask the kernel to
learn it (RTP, and RTCP unless muxed), tagged with the shard that owns the
dialog; a call's end releases its endpoints. Calls expire after ``ttl_s``
without signalling, at most ``max_calls`` are held (the least recently
active is evicted and counted), and ``end_all`` summarises those still in
progress when capture stops. A call holds at most ``max_streams`` media
descriptions and measured RTP streams; the excess is counted, so spoofed SDP
or SSRCs cannot swell one call's summary. A call's end gives its summary and
a final report of each of its RTP streams.

Media whose SDP cannot be learned (a host name, a refused port) is recorded
in the call as given and learns nothing; each reason is counted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from types import MappingProxyType

from userspace.early import EarlyMessages, EndedCalls, may_precede_invite
from userspace.endpoints import Endpoint, EndpointRegistry, FlowAction, FlowEvent, Hold
from userspace.errors import DecodeError
from userspace.event import Kind
from userspace.kernel_streams import Clocks, clock_table
from userspace.media import MediaTracker
from userspace.records import CallSummary, Origin, Parties, SipRecord, StreamReport
from userspace.rtp import Formats
from userspace.sdp import MediaStream, SdpProblem, parse_sdp

NS = 1_000_000_000
NO_FORMATS: Formats = {}
CallRecord = CallSummary | StreamReport


# The kernel's flow map holds the endpoints of max_calls calls: RTP and RTCP
# (unless muxed) of the offer and of the answer, so four per call.
ENDPOINTS_PER_CALL = 4
STREAMS_PER_CALL = 2  # sizes the RTP stream table: a call's audio, both ways


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Each field's ``range`` is what a config may set it to (otus_ebpf.control.config)."""

    # a call with no signalling for this long is over
    ttl_s: float = field(default=7200.0, metadata={"range": (1, 7 * 86_400)})
    # also sizes the kernel's flow map (flow_map_entries); ~100 bytes of kernel memory per endpoint
    max_calls: int = field(default=100_000, metadata={"range": (1, 4_000_000)})
    # media descriptions and RTP streams kept per call
    max_streams: int = field(default=16, metadata={"range": (1, 256)})
    # seconds of a stream between its periodic rtp reports, from its first packet
    rtp_report_interval_s: float = field(default=10.0, metadata={"range": (1, 3600)})

    @property
    def flow_map_entries(self) -> int:
        """Endpoints the kernel's flow map must hold for ``max_calls`` calls: the
        one place its size comes from."""
        return self.max_calls * ENDPOINTS_PER_CALL

    @property
    def stream_table_entries(self) -> int:
        """RTP streams measured at once: one each way per call of ``max_calls``."""
        return self.max_calls * STREAMS_PER_CALL


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


# A media line as the call summary shows it: a tuple while the call lives (a
# dict per line of every live call cost ~290 bytes), a dict in the summary.
_Described = tuple[str, str, int, str | None, int | None, bool]
_DESCRIBED = ("media", "address", "port", "codec", "rtcp_port", "rtcp_mux")


@dataclass(slots=True)
class _Call:
    call_id: str
    caller: bytes  # raw addresses of the INVITE
    callee: bytes
    shard: int
    invite_ns: int
    invite_cseq: int
    parties: Parties
    origin: Origin
    # Names the call to the kernel: its endpoints carry it and its streams are keyed
    # by it, so a call that takes an endpoint over starts streams of its own. A
    # counter, not a hash of the Call-ID, which a sender could make collide.
    tag: int
    last_seen: int = 0
    last_wall_ns: int = 0
    from_tag: str | None = None
    to_tag: str | None = None
    ringing_ns: int | None = None
    answer_ns: int | None = None
    cancelled: bool = False
    endpoints: dict[Endpoint, Kind] = field(default_factory=dict)
    media: list[_Described] = field(default_factory=list)  # each media line, as its summary says it
    described: set[tuple[str, int]] = field(default_factory=set)  # (address text, port) of each media entry
    caller_formats: Formats | None = None  # what the latest audio SDP of each side said it receives
    callee_formats: Formats | None = None


_TAG_WRAP = (1 << 32) - 1  # tags 1 .. 2**32-1: a live call's tag recurs only after 4 billion calls
class CallTracker:
    def __init__(self, limits: CallLimits | None = None, media: MediaTracker | None = None) -> None:
        self.limits = limits or CallLimits()
        self.stats = CallStats()
        self.media = media or MediaTracker(max_streams=self.limits.stream_table_entries,
                                           max_per_call=self.limits.max_streams,
                                           report_interval_ns=int(self.limits.rtp_report_interval_s * NS))
        self.endpoints = EndpointRegistry()
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # least recently active first
        self._early = EarlyMessages()  # a dialog's messages read ahead of its INVITE
        self._ended = EndedCalls()  # whose late messages must not wait for an INVITE
        self._now_ns = 0  # the latest now_ns given: when a call ends
        self._tags = 0

    def media_owner(self, destination: Endpoint, source: Endpoint) -> tuple[str | None, Formats]:
        """The call a media packet belongs to now (EndpointRegistry.flow_owner) and the
        payload types that call's SDP gave the endpoint."""
        hold, to_destination = self.endpoints.flow_owner(destination, source)
        if hold is None:
            return None, NO_FORMATS
        if to_destination:
            return hold.call_id, hold.formats
        # Sent to an address no SDP gave (the far end behind NAT): the payload types
        # are the receiver's (RFC 3264), so the other side's SDP, when there was one.
        call = self._calls.get(hold.call_id)
        peer = None if call is None else call.callee_formats if hold.caller_side else call.caller_formats
        return hold.call_id, peer if peer is not None else hold.formats

    def call_of(self, endpoint: Endpoint) -> str | None:
        hold = self.endpoints.owner(endpoint)
        return hold.call_id if hold is not None else None

    @property
    def flows_active(self) -> int:
        """Endpoints some live call holds: what the kernel's flow map should hold."""
        return len(self.endpoints)

    def __len__(self) -> int:
        return len(self._calls)

    def observe(self, record: SipRecord, now_ns: int,
                shard: int) -> tuple[list[FlowEvent], list[CallRecord]]:
        flows: list[FlowEvent] = []
        summaries: list[CallRecord] = []
        m = record.message
        self._now_ns = now_ns
        call = self._calls.get(m.call_id)
        if call is None:
            if not (m.is_request and m.method == "INVITE"):
                if may_precede_invite(record) and m.call_id not in self._ended:
                    self._early.park(record, now_ns, shard)
                return flows, summaries  # ahead of its INVITE, after its call, or a mid-call pickup
            self._ended.discard(m.call_id)  # the same Call-ID again (an INVITE after a 407)
            call = self._start(record, now_ns, shard, flows, summaries)
            self._follow(call, record, now_ns, flows, summaries)
            self._replay_early(call, flows, summaries)
            return flows, summaries
        self._calls.move_to_end(m.call_id)
        self._follow(call, record, now_ns, flows, summaries)
        return flows, summaries

    def _replay_early(self, call: _Call, flows: list[FlowEvent], summaries: list[CallRecord]) -> None:
        """The messages that came ahead of this INVITE, now that it is tracked (its SDP
        learned first), in the order they came, until one of them ends the call: the
        rest came after its end, as they would be ignored in order."""
        for early, early_ns, _shard, _held in self._early.take(call.call_id, call.invite_cseq):
            if self._calls.get(call.call_id) is not call:
                break
            self._follow(call, early, max(call.last_seen, early_ns), flows, summaries)

    @property
    def early_dropped(self) -> int:
        """Messages that waited for an INVITE that never came (or not theirs)."""
        return self._early.dropped

    @property
    def early_replayed(self) -> int:
        """Messages that waited for their INVITE and were applied when it came."""
        return self._early.replayed

    def _follow(self, call: _Call, record: SipRecord, now_ns: int, flows: list[FlowEvent],
                summaries: list[CallRecord]) -> None:
        """What one message of a tracked call changes: tags, media, its end."""
        m = record.message
        call.last_seen, call.last_wall_ns = now_ns, max(call.last_wall_ns, record.ts_ns)
        if m.from_tag and call.from_tag is None:
            call.from_tag = m.from_tag
        if m.to_tag and call.to_tag is None and not m.is_request:
            call.to_tag = m.to_tag
        self._learn_sdp(call, record, flows)
        if m.is_request:
            if m.method == "BYE":
                summaries += self._end(call, record.ts_ns, "bye", None, None, flows)
            elif m.method == "CANCEL":
                call.cancelled = True
        elif m.cseq_method == "INVITE" and m.status is not None:
            self._invite_response(call, record, flows, summaries)

    def expire(self, now_ns: int) -> tuple[list[FlowEvent], list[CallRecord]]:
        flows: list[FlowEvent] = []
        summaries: list[CallRecord] = []
        self._now_ns = now_ns
        self._early.expire(now_ns)
        self._ended.expire(now_ns)
        deadline = now_ns - int(self.limits.ttl_s * NS)
        while self._calls:
            call = next(iter(self._calls.values()))
            if call.last_seen > deadline:
                break
            self.stats.expired += 1
            summaries += self._end(call, None, "timeout", None, None, flows)
        return flows, summaries

    def end_all(self, cause: str) -> tuple[list[FlowEvent], list[CallRecord]]:
        """Summarise every call still in progress (capture is stopping), with its
        streams so far."""
        flows: list[FlowEvent] = []
        summaries: list[CallRecord] = []
        while self._calls:
            summaries += self._end(next(iter(self._calls.values())), None, cause, None, None, flows)
        return flows, summaries

    def _start(self, record: SipRecord, now_ns: int, shard: int, flows: list[FlowEvent],
               summaries: list[CallRecord]) -> _Call:
        if len(self._calls) >= self.limits.max_calls:
            oldest = next(iter(self._calls.values()))
            self.stats.evicted += 1
            summaries += self._end(oldest, None, "evicted", None, None, flows)
        origin = Origin(record.interface, record.vlans, record.encap)
        self._tags = self._tags % _TAG_WRAP + 1
        call = _Call(record.message.call_id, record.src, record.dst, shard, record.ts_ns,
                     record.message.cseq, Parties.of(record.message), origin, self._tags)
        self._calls[call.call_id] = call
        self.stats.calls += 1
        return call

    def _invite_response(self, call: _Call, record: SipRecord, flows: list[FlowEvent],
                         summaries: list[CallRecord]) -> None:
        status = record.message.status
        assert status is not None
        if status in (180, 183) and call.ringing_ns is None:
            call.ringing_ns = record.ts_ns
        elif 200 <= status < 300 and call.answer_ns is None:
            call.answer_ns = record.ts_ns
        elif status >= 300 and call.answer_ns is None:
            cause = "cancelled" if call.cancelled or status == 487 else "rejected"
            summaries += self._end(call, record.ts_ns, cause, status, record.message.reason, flows)

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
        caller_side = record.src == call.caller
        for stream in sdp.media:
            self._learn_stream(call, stream, caller_side, flows)

    def _learn_stream(self, call: _Call, stream: MediaStream, caller_side: bool,
                      flows: list[FlowEvent]) -> None:
        for problem in stream.problems:
            counter = _PROBLEM_COUNTERS[problem]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if (stream.address, stream.port) not in call.described:  # re-INVITEs repeat the same media
            if len(call.media) >= self.limits.max_streams:
                self.stats.media_over_cap += 1
                return
            call.described.add((stream.address, stream.port))
            codec = stream.codecs[0][1] if stream.codecs else None
            call.media.append((stream.media, stream.address, stream.port, codec, stream.rtcp_port,
                               stream.rtcp_mux))
        if not stream.enabled:
            return
        wanted: list[tuple[Endpoint, Kind]] = []
        if stream.learnable:
            wanted.append(((stream.raw_address, stream.port), Kind.RTP))
        if not stream.rtcp_mux and stream.rtcp_port is not None and stream.rtcp_learnable:
            wanted.append(((stream.rtcp_raw_address, stream.rtcp_port), Kind.RTCP))
        formats, clocks = _formats(stream.codecs)  # payload type -> codec: what this endpoint receives
        if stream.media == "audio":
            if caller_side:
                call.caller_formats = formats
            else:
                call.callee_formats = formats
        encap = call.origin.encap  # media inside a tunnel is matched inside that kind of tunnel only
        tunnel = 0 if encap is None else encap.code
        for endpoint, kind in wanted:
            if endpoint not in call.endpoints and len(call.endpoints) >= 2 * self.limits.max_streams:
                self.stats.media_over_cap += 1  # re-INVITEs moving RTCP about: still bounded
                continue
            call.endpoints[endpoint] = kind
            hold = Hold(call.call_id, kind, call.shard, formats, caller_side, call.tag,
                        clocks if kind is Kind.RTP else (), tunnel)
            event = self.endpoints.take(endpoint, hold)
            if event is not None:
                self.stats.flows_learned += 1
                flows.append(event)

    def _end(self, call: _Call, end_ns: int | None, cause: str, status: int | None, reason: str | None,
             flows: list[FlowEvent]) -> list[CallRecord]:
        """The call's summary, and the final report of each of its RTP streams."""
        del self._calls[call.call_id]
        self._ended.add(call.call_id, self._now_ns)
        self.stats.ended += 1
        wall_ns = end_ns if end_ns is not None else call.last_wall_ns
        finals = [StreamReport(wall_ns, call.call_id, stream.report(), final=True)
                  for stream in self.media.take_call(call.call_id)]
        for endpoint in call.endpoints:
            event = self.endpoints.release(endpoint, call.call_id)
            if event is not None:
                self.stats.flows_forgotten += event.action is FlowAction.FORGET
                flows.append(event)
        final_status = status if status is not None else (200 if call.answer_ns is not None else None)
        summary = CallSummary(call.call_id, call.caller, call.callee, call.from_tag, call.to_tag,
                              call.invite_ns, call.ringing_ns, call.answer_ns, end_ns, final_status, reason,
                              cause, tuple(dict(zip(_DESCRIBED, m, strict=True)) for m in call.media),
                              tuple(f.report for f in finals), call.parties,
                              call.origin)
        return [*finals, summary]


_PROBLEM_COUNTERS = {SdpProblem.UNLEARNABLE: "sdp_unlearnable", SdpProblem.BAD_PORT: "sdp_bad_ports",
                     SdpProblem.BAD_CLOCK: "sdp_bad_clock"}


def _formats(codecs: tuple[tuple[int, str], ...]) -> tuple[Formats, Clocks]:
    """The payload-type map of an SDP media line and what the kernel must know of
    it, one shared copy per distinct set: calls offer the same few, and a dict per
    stream of every live call was the largest part of a call's memory. Bounded:
    what hostile SDPs invent beyond it is built per stream."""
    shared = _FORMATS.get(codecs)
    if shared is None:
        formats = MappingProxyType(dict(codecs))
        shared = formats, clock_table(formats)
        if len(_FORMATS) < _MAX_SHARED_FORMATS:
            _FORMATS[codecs] = shared
    return shared


_FORMATS: dict[tuple[tuple[int, str], ...], tuple[Formats, Clocks]] = {}
_MAX_SHARED_FORMATS = 4_096

