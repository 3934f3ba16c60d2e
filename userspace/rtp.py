"""RTP/RTCP quality per stream (RFC 3550), and a MOS estimate (ITU-T G.107).

``MediaTracker.feed(...)`` takes the UDP payload of a packet on a learned
media flow. RTP updates its stream (keyed by the 5-tuple and SSRC):
packets, bytes, loss from extended sequence numbers (RFC 3550 A.1/A.3),
reordering and duplicates, and interarrival jitter (A.8) in the stream's
clock. RTCP sender and receiver reports (§6.4) are read for the peer's view:
fraction and cumulative lost, jitter, and round-trip time from LSR/DLSR.
RTCP muxed on the RTP port (RFC 5761) is told apart by payload type.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

RTP_VERSION = 2
RTCP_SR, RTCP_RR = 200, 201
# RFC 5761 §4: RTCP packet types 192-223 collide with no RTP payload type in use.
RTCP_TYPES = range(192, 224)
SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000     # RFC 3550 A.1
MAX_MISORDER = 100
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900 to 1970
NS = 1_000_000_000
MAX_STREAMS = 100_000
MAX_STREAMS_PER_CALL = 16  # RTP streams (SSRCs) measured per call; CallLimits sets it

# ITU-T G.113 Appendix I: equipment impairment Ie and packet-loss robustness
# Bpl. G.711 uses the with-concealment value (25.1): endpoints conceal loss.
CODEC_IMPAIRMENT = {"PCMU": (0.0, 25.1), "PCMA": (0.0, 25.1), "G722": (0.0, 25.1), "G729": (11.0, 19.0),
                    "GSM": (20.0, 10.0), "ILBC": (10.0, 32.0), "OPUS": (0.0, 20.0)}
DEFAULT_IMPAIRMENT = (0.0, 25.1)
_RTP = struct.Struct("!BBHII")
_REPORT_BLOCK = struct.Struct("!IIIIII")

FlowKey = tuple[str, int, str, int]  # src, sport, dst, dport


def mos_estimate(loss_percent: float, jitter_ms: float, codec: str | None) -> float:
    """G.107 E-model, simplified: R = R0 - Id - Ie,eff, then MOS from R.

    One-way delay is not observable from one capture point; it is taken as a
    20 ms frame, a jitter buffer of twice the jitter, and 10 ms of network.
    """
    ie, bpl = CODEC_IMPAIRMENT.get((codec or "").split("/", 1)[0].upper(), DEFAULT_IMPAIRMENT)
    delay = 20.0 + 2.0 * jitter_ms + 10.0
    id_ = 0.024 * delay + (0.11 * (delay - 177.3) if delay > 177.3 else 0.0)
    ie_eff = ie + (95.0 - ie) * loss_percent / (loss_percent + bpl)
    r = 93.2 - id_ - ie_eff
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # The G.107 polynomial dips just under 1 for small R; MOS is at least 1.
    return round(max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6), 2)


@dataclass(slots=True)
class RtpStream:
    flow: FlowKey
    ssrc: int
    payload_type: int
    clock_rate: int
    codec: str | None
    first_ns: int
    last_ns: int = 0
    packets: int = 0
    bytes: int = 0
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    reordered: int = 0
    duplicates: int = 0
    jitter: float = 0.0            # in clock units (RFC 3550 A.8)
    _transit: int | None = None
    _seen: set[int] = field(default_factory=set)  # recent extended seqs, for duplicates
    peer: dict[str, float] = field(default_factory=dict)  # from the peer's RTCP about this SSRC
    call_id: str | None = None     # the call whose endpoint it was sent to when it began

    def update(self, seq: int, timestamp: int, arrival_ns: int, size: int) -> None:
        if self.packets == 0:
            self.base_seq = self.max_seq = seq
            extended_seq = seq
        else:
            delta = (seq - self.max_seq) % SEQ_MOD
            if 0 < delta < MAX_DROPOUT:  # in order, perhaps after a gap
                if seq < self.max_seq:
                    self.cycles += SEQ_MOD
                self.max_seq = seq
                extended_seq = self.cycles + seq
            elif delta == 0 or delta >= SEQ_MOD - MAX_MISORDER:  # late: reordered or duplicate
                extended_seq = self.cycles + seq - (SEQ_MOD if seq > self.max_seq else 0)
                if delta == 0 or extended_seq in self._seen:
                    self.duplicates += 1
                    return
                self.reordered += 1
            else:  # a large jump: the sender restarted; start over (A.1 "probation")
                self.base_seq = self.max_seq = seq
                self.cycles = 0
                self._seen.clear()
                extended_seq = seq
        self._seen.add(extended_seq)
        if len(self._seen) > 2 * MAX_MISORDER:
            floor = self.cycles + self.max_seq - MAX_MISORDER
            self._seen = {s for s in self._seen if s >= floor}
        self.packets += 1
        self.bytes += size
        self.last_ns = arrival_ns
        arrival = arrival_ns * self.clock_rate // NS
        transit = arrival - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base_seq + 1 if self.packets else 0

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)

    def report(self) -> dict[str, object]:
        expected = self.expected
        loss = 100.0 * self.lost / expected if expected else 0.0
        jitter_ms = 1000.0 * self.jitter / self.clock_rate
        src, sport, dst, dport = self.flow
        return {
            "src": src, "sport": sport, "dst": dst, "dport": dport, "ssrc": self.ssrc,
            "payload_type": self.payload_type, "codec": self.codec,
            "packets": self.packets, "bytes": self.bytes, "expected": expected, "lost": self.lost,
            "loss_percent": round(loss, 3), "reordered": self.reordered, "duplicates": self.duplicates,
            "jitter_ms": round(jitter_ms, 3), "mos": mos_estimate(loss, jitter_ms, self.codec),
            "duration_ms": round((self.last_ns - self.first_ns) / 1e6, 3),
            **({"peer": dict(self.peer)} if self.peer else {}),
        }


@dataclass(slots=True)
class MediaStats:
    rtp: int = 0
    rtcp: int = 0
    not_rtp: int = 0
    rtcp_errors: int = 0
    evicted_streams: int = 0
    without_call: int = 0      # media on no live call's endpoint (stragglers after the call ended)
    streams_over_cap: int = 0  # new SSRCs beyond a call's cap: not measured


class MediaTracker:
    """Every measured stream, indexed by call, so that a call's end touches its
    own streams only (never a scan over all of them)."""

    def __init__(self, max_streams: int = MAX_STREAMS, max_per_call: int = MAX_STREAMS_PER_CALL) -> None:
        self.max_streams = max_streams
        self.max_per_call = max_per_call
        self.stats = MediaStats()
        self.streams: OrderedDict[tuple[FlowKey, int], RtpStream] = OrderedDict()  # oldest first
        self._by_ssrc: dict[int, RtpStream] = {}
        self._by_call: dict[str, dict[tuple[FlowKey, int], RtpStream]] = {}

    def feed(self, flow: FlowKey, payload: bytes, arrival_ns: int, wall_ns: int, size: int,
             clock_rate: int = 8000, codec: str | None = None, call_id: str | None = None) -> None:
        """A packet on a learned media flow of ``call_id`` (None: no live call owns it)."""
        if len(payload) < 8 or payload[0] >> 6 != RTP_VERSION:
            self.stats.not_rtp += 1
            return
        if payload[1] in RTCP_TYPES:
            self._rtcp(payload, wall_ns)
            return
        if len(payload) < 12:
            self.stats.not_rtp += 1
            return
        self.stats.rtp += 1
        _vpxcc, marker_pt, seq, timestamp, ssrc = _RTP.unpack_from(payload)
        key = (flow, ssrc)
        stream = self.streams.get(key)
        if stream is None:
            stream = self._new_stream(key, marker_pt & 0x7F, clock_rate, codec, arrival_ns, call_id)
            if stream is None:
                return
        stream.update(seq, timestamp, arrival_ns, size)

    def _new_stream(self, key: tuple[FlowKey, int], payload_type: int, clock_rate: int, codec: str | None,
                    arrival_ns: int, call_id: str | None) -> RtpStream | None:
        if call_id is None:
            self.stats.without_call += 1
            return None
        owned = self._by_call.get(call_id)
        if owned is not None and len(owned) >= self.max_per_call:
            self.stats.streams_over_cap += 1  # spoofed SSRCs must not swell one call without bound
            return None
        if len(self.streams) >= self.max_streams:
            self._remove(next(iter(self.streams.values())))  # may empty (and drop) this call's table
            self.stats.evicted_streams += 1
        flow, ssrc = key
        stream = RtpStream(flow, ssrc, payload_type, max(1, clock_rate), codec, arrival_ns, call_id=call_id)
        self.streams[key] = stream
        self._by_ssrc[ssrc] = stream
        self._by_call.setdefault(call_id, {})[key] = stream
        return stream

    def _remove(self, stream: RtpStream) -> None:
        key = (stream.flow, stream.ssrc)
        self.streams.pop(key, None)
        if self._by_ssrc.get(stream.ssrc) is stream:
            del self._by_ssrc[stream.ssrc]
        owned = self._by_call.get(stream.call_id or "")
        if owned is not None:
            owned.pop(key, None)
            if not owned:
                del self._by_call[stream.call_id or ""]

    def _rtcp(self, payload: bytes, wall_ns: int) -> None:
        """Walk a compound RTCP packet; read report blocks of SRs and RRs (RFC 3550 §6.4)."""
        self.stats.rtcp += 1
        offset = 0
        while offset + 8 <= len(payload):
            count, packet_type = payload[offset] & 0x1F, payload[offset + 1]
            length = (int.from_bytes(payload[offset + 2:offset + 4], "big") + 1) * 4
            if payload[offset] >> 6 != RTP_VERSION or offset + length > len(payload):
                self.stats.rtcp_errors += 1
                return
            blocks = offset + (28 if packet_type == RTCP_SR else 8)
            if packet_type in (RTCP_SR, RTCP_RR):
                for i in range(count):
                    start = blocks + i * _REPORT_BLOCK.size
                    if start + _REPORT_BLOCK.size > offset + length:
                        self.stats.rtcp_errors += 1
                        return
                    self._report_block(payload[start:start + _REPORT_BLOCK.size], wall_ns)
            offset += length

    def _report_block(self, block: bytes, wall_ns: int) -> None:
        ssrc, lost_word, _highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack(block)
        stream = self._by_ssrc.get(ssrc)
        if stream is None:
            return
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        peer: dict[str, float] = {"fraction_lost": round((lost_word >> 24) / 256, 4),
                                  "cumulative_lost": cumulative,
                                  "jitter_ms": round(1000 * jitter / stream.clock_rate, 3)}
        if lsr:
            seconds, rest = divmod(wall_ns, NS)
            arrival = ((seconds + NTP_UNIX_OFFSET) & 0xFFFF) << 16 | (rest * 65536 // NS)
            peer["rtt_ms"] = round(((arrival - lsr - dlsr) & 0xFFFFFFFF) * 1000 / 65536, 3)
        stream.peer = peer

    def take_call(self, call_id: str) -> list[RtpStream]:
        """The streams of a call that ended, no longer measured: O(its streams)."""
        owned = self._by_call.pop(call_id, None)
        if not owned:
            return []
        streams = list(owned.values())
        for stream in streams:
            self.streams.pop((stream.flow, stream.ssrc), None)
            if self._by_ssrc.get(stream.ssrc) is stream:
                del self._by_ssrc[stream.ssrc]
        return streams
