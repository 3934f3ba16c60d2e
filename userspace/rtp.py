"""One RTP stream's quality (RFC 3550), and a MOS estimate (ITU-T G.107).

An ``RtpStream`` is a 5-tuple and an SSRC. It counts packets and bytes, loss
from extended sequence numbers (RFC 3550 A.1/A.3), reordering and
duplicates over every packet, and interarrival jitter (A.8) over its audio:
the codec of each packet is its payload type looked up in the SDP of the
endpoint it is sent to (RFC 3264: an SDP's payload types are the ones its
author receives), or the RFC 3551 static table. RFC 4733 telephone-event
packets share the stream's sequence numbers but are events: they are counted
(packets and distinct events) and never enter the jitter or the MOS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from userspace.frame import FlowKey, address_text
from userspace.records import NO_ORIGIN, Origin

SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000     # RFC 3550 A.1
MAX_MISORDER = 100
NS = 1_000_000_000
_RECENT_MASK = (1 << (MAX_MISORDER + 1)) - 1  # the window a late packet may come back in
_TIMESTAMP_WRAP, _HALF_WRAP = 1 << 32, 1 << 31
DEFAULT_CLOCK_RATE = 8000
MIN_CLOCK_RATE, MAX_CLOCK_RATE = 1_000, 1_000_000  # as userspace.sdp refuses outside
TELEPHONE_EVENT = "telephone-event"

# RFC 3551 §6: static payload types commonly seen without an rtpmap.
STATIC_PAYLOAD_TYPES = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000", 9: "G722/8000",
                        13: "CN/8000", 18: "G729/8000"}

# ITU-T G.113 Appendix I: equipment impairment Ie and packet-loss robustness
# Bpl. G.711 uses the with-concealment value (25.1): endpoints conceal loss.
CODEC_IMPAIRMENT = {"PCMU": (0.0, 25.1), "PCMA": (0.0, 25.1), "G722": (0.0, 25.1), "G729": (11.0, 19.0),
                    "GSM": (20.0, 10.0), "ILBC": (10.0, 32.0), "OPUS": (0.0, 20.0)}
DEFAULT_IMPAIRMENT = (0.0, 25.1)

KernelKey = bytes                    # a stream's key in the kernel's streams map
Formats = Mapping[int, str]          # payload type -> "encoding/clock[/channels]", from an SDP


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


def codec_of(payload_type: int, formats: Formats) -> str:
    return formats.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type) or "unknown"


def clock_of(codec: str) -> int:
    """The RTP clock of "encoding/clock", within sane bounds; 8 kHz otherwise."""
    parts = codec.split("/")
    if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 7:
        clock = int(parts[1])
        if MIN_CLOCK_RATE <= clock <= MAX_CLOCK_RATE:
            return clock
    return DEFAULT_CLOCK_RATE


def is_event(codec: str) -> bool:
    return codec.split("/", 1)[0].lower() == TELEPHONE_EVENT


@dataclass(slots=True)
class RtpStream:
    flow: FlowKey
    ssrc: int
    call_id: str | None            # the call whose endpoint it was sent to when it began
    formats: Formats               # that endpoint's SDP
    first_ns: int
    origin: Origin = NO_ORIGIN     # where its first packet was captured
    last_ns: int = 0               # the latest arrival (never earlier than first_ns)
    packets: int = 0
    bytes: int = 0
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    reordered: int = 0
    duplicates: int = 0
    stray: int = 0                 # far outside the sequence, not confirmed by the next (RFC 3550 A.1)
    jitter: float = 0.0            # of the audio, in its clock's units (RFC 3550 A.8)
    clock_rate: int = DEFAULT_CLOCK_RATE  # the current audio codec's
    by_type: dict[int, int] = field(default_factory=dict)  # payload type -> packets
    other_types: int = 0           # packets of types past the kernel's four slots (userspace.kernel_streams)
    event_packets: int = 0         # RFC 4733 telephone-event
    events: int = 0                # distinct events (a new RTP timestamp each)
    next_report_ns: int = 0        # when its next periodic report is due (capture time)
    peer: dict[str, float] | None = None  # from the peer's RTCP about this SSRC
    reported_mos: float | None = None     # in its last report (userspace.media keeps the mean)
    _last_arrival_ns: int = -1     # of the previous audio packet; -1: none since the codec began
    _last_timestamp: int = 0
    _audio_type: int = -1
    _event_timestamp: int = -1
    _recent: int = 0               # bit i: extended seq (max - i) was seen, for duplicates
    _bad_seq: int = -1             # the seq that would confirm a jump (RFC 3550 A.1)
    _expected_before: int = 0      # expected packets of the sequence before a confirmed restart
    kernel_key: KernelKey | None = None  # measured by the kernel (userspace.kernel_streams)

    def update(self, seq: int, timestamp: int, payload_type: int, arrival_ns: int, size: int) -> None:
        if not self._sequence(seq):
            return
        self.packets += 1
        self.bytes += size
        if arrival_ns > self.last_ns:  # noqa: PLR1730 - per packet: a compare, not a call
            self.last_ns = arrival_ns
        self.by_type[payload_type] = self.by_type.get(payload_type, 0) + 1
        if payload_type != self._audio_type:
            self._new_type(payload_type)
            if self._audio_type != payload_type:  # an event: counted, no jitter
                self.event_packets += 1
                if timestamp != self._event_timestamp:
                    self.events += 1
                    self._event_timestamp = timestamp
                return
        # RFC 3550 A.8 from successive packets: D = (Rj - Ri) - (Sj - Si), in the RTP
        # clock's units. Worked in integers (ns x clock) and never from the absolute
        # arrival time, so it is exact and the same whatever clock the capture times
        # are in (live monotonic, a pcap's wall clock); timestamps wrap at 2**32. A
        # capture time that goes back (a pcap merged or edited) does not enter it.
        last = self._last_arrival_ns
        if last >= 0:
            if arrival_ns < last:
                return
            sent = (timestamp - self._last_timestamp + _HALF_WRAP) % _TIMESTAMP_WRAP - _HALF_WRAP
            d = abs((arrival_ns - last) * self.clock_rate - sent * NS)
            self.jitter += (d / NS - self.jitter) / 16.0
        self._last_arrival_ns, self._last_timestamp = arrival_ns, timestamp

    def _new_type(self, payload_type: int) -> None:
        """A packet of another payload type: an event, or the audio switching codec
        (then the jitter's clock follows, and its transit starts again)."""
        codec = codec_of(payload_type, self.formats)
        if is_event(codec):
            return
        clock = clock_of(codec)
        if clock != self.clock_rate and self._audio_type >= 0:
            self.jitter = self.jitter * clock / self.clock_rate
        self._audio_type, self.clock_rate, self._last_arrival_ns = payload_type, clock, -1

    def _sequence(self, seq: int) -> bool:
        """Track the extended sequence number (RFC 3550 A.1); False for a packet not
        counted: a duplicate, or a stray far outside the sequence."""
        if self.packets == 0 and self._bad_seq < 0:
            self._start(seq)
            return True
        delta = (seq - self.max_seq) % SEQ_MOD
        if 0 < delta < MAX_DROPOUT:  # in order, perhaps after a gap
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
            self._recent = ((self._recent << delta) | 1) & _RECENT_MASK
            self._bad_seq = -1
            return True
        if delta >= SEQ_MOD - MAX_MISORDER:  # late: reordered or a duplicate
            behind = SEQ_MOD - delta
            if self._recent >> behind & 1:
                self.duplicates += 1
                return False
            self._recent |= 1 << behind
            self.reordered += 1
            return True
        if delta == 0:
            self.duplicates += 1
            return False
        if seq == self._bad_seq:  # two in a row past the jump: the sender restarted
            self._expected_before += self._span()
            self._start(seq)
            return True
        self._bad_seq = (seq + 1) % SEQ_MOD
        self.stray += 1
        return False

    def _start(self, seq: int) -> None:
        self.base_seq = self.max_seq = seq
        self.cycles = 0
        self._recent = 1
        self._bad_seq = -1

    def _span(self) -> int:
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def expected(self) -> int:
        return self._expected_before + self._span() if self.packets else 0

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)

    @property
    def main_type(self) -> int | None:
        """The audio payload type it sent most, else (events only) the type it sent most."""
        audio = {pt: n for pt, n in self.by_type.items() if not is_event(codec_of(pt, self.formats))}
        counts = audio or self.by_type
        return max(counts, key=counts.__getitem__) if counts else None

    @property
    def codec(self) -> str | None:
        main = self.main_type
        return None if main is None else codec_of(main, self.formats)

    def report(self) -> dict[str, object]:
        expected = self.expected
        loss = 100.0 * self.lost / expected if expected else 0.0
        jitter_ms = 1000.0 * self.jitter / self.clock_rate
        audio = self.packets - self.event_packets
        main_type = self.main_type
        codec = None if main_type is None else codec_of(main_type, self.formats)
        src, sport, dst, dport = self.flow
        return {
            **self.origin.fields(),
            "src": address_text(src), "sport": sport, "dst": address_text(dst), "dport": dport,
            "ssrc": self.ssrc,
            "payload_type": main_type, "codec": codec,
            "payload_types": [{"payload_type": pt, "codec": codec_of(pt, self.formats), "packets": n}
                              for pt, n in sorted(self.by_type.items())],
            "packets": self.packets, "bytes": self.bytes, "expected": expected, "lost": self.lost,
            "loss_percent": round(loss, 3), "reordered": self.reordered, "duplicates": self.duplicates,
            "stray": self.stray,
            "jitter_ms": round(jitter_ms, 3) if audio else None,
            "mos": mos_estimate(loss, jitter_ms, codec) if audio else None,
            "dtmf_events": self.events, "dtmf_packets": self.event_packets,
            "duration_ms": round((self.last_ns - self.first_ns) / 1e6, 3),
            **({"peer": dict(self.peer)} if self.peer else {}),
        }
