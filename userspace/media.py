"""Every measured RTP stream, indexed by call, and what RTCP says about them.

``MediaTracker.rtp(...)`` takes the UDP payload of an RTP packet on a learned
media flow, with the call that owns the flow's endpoint now and that
endpoint's SDP formats, and updates its stream (userspace.rtp): a stream is a
flow, an SSRC and a call, so a flow whose endpoint passes to another call
goes on as a stream of that call. It returns the stream when a periodic
report of it is due: every ``report_interval_ns`` of capture time from the
stream's first packet, counted per stream, so a report costs nothing until it
is due. ``rtcp(...)`` reads sender and receiver reports (userspace.rtcp) into
the peer's view of the streams of the same call they describe. A call's end
takes its own streams (never a scan over all).

With a kernel that measures RTP itself (``use_kernel``), only each stream's
first packet arrives here: it registers the stream under its kernel key, and
``sync`` (which its caller runs every half report interval) and a call's end
take the kernel's state of the stream instead of every packet
(userspace.kernel_streams).

The table holds ``max_streams`` streams in all (CallLimits sizes it from
``max_calls``); when it is full a new stream is not measured, and counted —
never is a live stream evicted to make room, which under load would evict
and re-create streams without end.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from userspace.errors import DecodeError
from userspace.frame import FlowKey
from userspace.kernel_streams import StreamSource, apply_snapshot, first_arrival, packets_of
from userspace.records import Origin
from userspace.rtcp import RtcpReport, parse_rtcp, round_trip_ms
from userspace.rtp import Formats, KernelKey, RtpStream

MAX_STREAMS = 200_000
MAX_STREAMS_PER_CALL = 16  # RTP streams (SSRCs) measured per call; CallLimits sets it
DEFAULT_REPORT_INTERVAL_NS = 10_000_000_000
RTP_VERSION = 2
_RTP = struct.Struct("!BBHII")
# flow, SSRC, call, and the kernel's key when the kernel measures it: a stream the
# kernel measures under a new owner (its endpoint changed hands) is a stream of its own
StreamKey = tuple[FlowKey, int, str | None, KernelKey | None]


@dataclass(slots=True)
class MediaStats:
    rtp: int = 0
    rtcp: int = 0
    not_rtp: int = 0
    rtcp_errors: int = 0        # an RTCP compound whose structure is broken: nothing read
    rtcp_cut: int = 0           # one cut short (a snaplen): what was whole before the cut is read
    streams_table_full: int = 0  # new streams not measured: the table holds max_streams
    without_call: int = 0      # media on no live call's endpoint (stragglers after the call ended)
    streams_over_cap: int = 0  # new SSRCs beyond a call's cap: not measured
    kernel_streams: int = 0    # streams registered from the kernel's first packet
    kernel_orphans: int = 0    # kernel streams none here registered (first packet lost, stream refused)
    kernel_orphan_packets: int = 0  # their packets, deleted with them (the stream starts again in the kernel)
    kernel_gone: int = 0       # a call's kernel stream that was no longer in the map at its end


class MediaTracker:
    def __init__(self, max_streams: int = MAX_STREAMS, max_per_call: int = MAX_STREAMS_PER_CALL,
                 report_interval_ns: int = DEFAULT_REPORT_INTERVAL_NS) -> None:
        self.max_streams = max_streams
        self.max_per_call = max_per_call
        self.report_interval_ns = report_interval_ns
        self.stats = MediaStats()
        self.streams: dict[StreamKey, RtpStream] = {}
        self._by_ssrc: dict[tuple[str | None, int], RtpStream] = {}  # (call, SSRC): for its RTCP
        self._by_call: dict[str, dict[StreamKey, RtpStream]] = {}
        self._mos_sum = 0.0   # of the last reported MOS of each live stream that has one
        self._mos_count = 0
        self._source: StreamSource | None = None
        self._worker: int | None = None
        self._by_key: dict[KernelKey, RtpStream] = {}

    def use_kernel(self, source: StreamSource, worker: int | None) -> None:
        """RTP is measured by the kernel; ``worker``: the streams of this worker's flows
        are this tracker's (None: all of them)."""
        self._source, self._worker = source, worker

    def rtp(self, flow: FlowKey, payload: bytes, arrival_ns: int, size: int, call_id: str | None,
            formats: Formats, origin: Origin | Callable[[], Origin],
            kernel_key: KernelKey | None = None) -> RtpStream | None:
        """An RTP packet of ``call_id`` (None: no live call owns the endpoint). Returns its
        stream when that stream's periodic report is due. ``origin``: where it was captured,
        or how to find out (asked only for a new stream). ``kernel_key``: the first packet
        of a stream the kernel measures from now on."""
        if len(payload) < _RTP.size or payload[0] >> 6 != RTP_VERSION:
            self.stats.not_rtp += 1
            return None
        self.stats.rtp += 1
        _vpxcc, marker_pt, seq, timestamp, ssrc = _RTP.unpack_from(payload)
        if self._source is None:
            kernel_key = None
        key = (flow, ssrc, call_id, kernel_key)
        stream = self.streams.get(key)
        if stream is None:
            found = origin if isinstance(origin, Origin) else origin()
            stream = self._new_stream(key, formats, arrival_ns, found)
            if stream is None:
                return None
        stream.update(seq, timestamp, marker_pt & 0x7F, arrival_ns, size)
        return stream if self._due(stream, arrival_ns) else None

    def _due(self, stream: RtpStream, arrival_ns: int) -> bool:
        """Whether the stream's periodic report is due at ``arrival_ns``; if so, the next one is set."""
        due = stream.next_report_ns
        interval = self.report_interval_ns
        if arrival_ns < due:
            if arrival_ns < due - interval:  # capture time went back (a pcap merged or edited)
                stream.next_report_ns = arrival_ns + interval
            return False
        # The next one is the first interval boundary after this packet: one step,
        # however far capture time jumped (a loop per interval would not be).
        stream.next_report_ns = due + ((arrival_ns - due) // interval + 1) * interval
        return True

    def sync(self, now_ns: int) -> list[RtpStream]:
        """The kernel's state of every stream of this worker becomes its stream's; returns
        those whose report is due. A kernel stream none here registered a report interval
        after it began is deleted, counted with its packets: its first packet was lost
        (a full ring) or its stream refused (caps), or its call ended. Deleted, it starts
        again with its next packet, which comes up flagged: a stream is never invisible
        for longer than that. O(streams in the map)."""
        source = self._source
        if source is None:
            return []
        due: list[RtpStream] = []
        orphans: list[KernelKey] = []
        by_key, began_before = self._by_key, now_ns - self.report_interval_ns
        for key, value in source.read_all(self._worker):
            stream = by_key.get(key)
            if stream is None:
                if first_arrival(value) < began_before:
                    orphans.append(key)
                    self.stats.kernel_orphan_packets += packets_of(value)
                continue
            apply_snapshot(stream, value)
            if self._due(stream, stream.last_ns):
                due.append(stream)
        if orphans:
            source.delete(orphans)
            self.stats.kernel_orphans += len(orphans)
        return due

    def report(self, stream: RtpStream) -> dict[str, object]:
        """The stream's report, remembering its MOS for the mean over live streams."""
        report = stream.report()
        mos = report["mos"]
        self._forget_mos(stream)
        if isinstance(mos, float):
            self._mos_sum += mos
            self._mos_count += 1
            stream.reported_mos = mos
        return report

    @property
    def mean_mos(self) -> float | None:
        """The mean of the last reported MOS of the live streams; O(1)."""
        return self._mos_sum / self._mos_count if self._mos_count else None

    def rtcp(self, payload: bytes, wall_ns: int, call_id: str | None) -> list[RtcpReport]:
        """An RTCP compound on a flow of ``call_id``: its SR/RR reports, after their
        blocks became the peer's view of that call's streams they report on
        (fraction and cumulative lost, jitter, RTT)."""
        self.stats.rtcp += 1
        try:
            compound = parse_rtcp(payload)
        except DecodeError:
            self.stats.rtcp_errors += 1
            return []
        if compound.cut:
            self.stats.rtcp_cut += 1
        if call_id is None:
            self.stats.without_call += 1
            return []
        for report in compound.reports:
            for block in report.blocks:
                stream = self._by_ssrc.get((call_id, block.ssrc))
                if stream is None:
                    continue
                peer: dict[str, float] = {"fraction_lost": round(block.fraction_lost / 256, 4),
                                          "cumulative_lost": block.cumulative_lost,
                                          "jitter_ms": round(1000 * block.jitter / stream.clock_rate, 3)}
                rtt = round_trip_ms(block, wall_ns)
                if rtt is not None:
                    peer["rtt_ms"] = rtt
                stream.peer = peer
        return list(compound.reports)

    def _new_stream(self, key: StreamKey, formats: Formats, arrival_ns: int,
                    origin: Origin) -> RtpStream | None:
        flow, ssrc, call_id, kernel_key = key
        if call_id is None:
            self.stats.without_call += 1
            return None
        owned = self._by_call.get(call_id)
        if owned is not None and len(owned) >= self.max_per_call:
            self.stats.streams_over_cap += 1  # spoofed SSRCs must not swell one call without bound
            return None
        if len(self.streams) >= self.max_streams:
            self.stats.streams_table_full += 1
            return None
        stream = RtpStream(flow, ssrc, call_id, formats, arrival_ns, origin,
                           next_report_ns=arrival_ns + self.report_interval_ns, kernel_key=kernel_key)
        self.streams[key] = stream
        if kernel_key is not None:
            self._by_key[kernel_key] = stream
            self.stats.kernel_streams += 1
        self._by_ssrc[call_id, ssrc] = stream
        self._by_call.setdefault(call_id, {})[key] = stream
        return stream

    def take_call(self, call_id: str) -> list[RtpStream]:
        """The streams of a call that ended, no longer measured: O(its streams)."""
        owned = self._by_call.pop(call_id, None)
        if not owned:
            return []
        streams = list(owned.values())
        self._take_from_kernel(streams)
        for stream in streams:
            self.streams.pop((stream.flow, stream.ssrc, stream.call_id, stream.kernel_key), None)
            if self._by_ssrc.get((call_id, stream.ssrc)) is stream:
                del self._by_ssrc[call_id, stream.ssrc]
            self._forget_mos(stream)
        return streams

    def _take_from_kernel(self, streams: list[RtpStream]) -> None:
        """The kernel's last state of these streams, which are then deleted from its map."""
        source = self._source
        kernel = [(s, s.kernel_key) for s in streams if s.kernel_key is not None]
        if source is None or not kernel:
            return
        keys = [key for _stream, key in kernel]
        for (stream, _key), value in zip(kernel, source.read(keys), strict=True):
            if value is None:
                self.stats.kernel_gone += 1
            else:
                apply_snapshot(stream, value)
        source.delete(keys)
        for key in keys:
            self._by_key.pop(key, None)

    def _forget_mos(self, stream: RtpStream) -> None:
        if stream.reported_mos is not None:
            self._mos_sum -= stream.reported_mos
            self._mos_count -= 1
            stream.reported_mos = None
            if not self._mos_count:
                self._mos_sum = 0.0  # no drift left behind by float sums
