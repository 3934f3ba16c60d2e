"""SIP over TCP: per-direction stream reassembly and message framing.

Sans-IO: ``feed(key, seq, flags, payload, now_ns)`` takes a captured segment
and returns the complete SIP messages (bytes) it finished. Each direction
of a connection is its own byte stream. Segments are placed by sequence
number (mod 2**32): retransmitted bytes are trimmed or dropped, out-of-order
segments wait within a bounded window, and a hole that does not fill is a
counted gap after which framing resynchronises on the next start line.
Messages are framed by Content-Length (RFC 3261 §18.3: mandatory on
streams); CRLF keep-alives between them (RFC 5626 §3.5.1) are skipped.
Every buffer is bounded, per stream and in total, and idle streams expire.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

SEQ_MOD = 1 << 32
HALF = 1 << 31
FIN, SYN, RST = 0x01, 0x02, 0x04
NS = 1_000_000_000
# A start line of a request or a response, at a line start.
_START_LINE = re.compile(
    rb"(?:^|\n)((?:SIP/2\.0 [1-6]\d\d[^\r\n]*|[A-Za-z0-9\-.!%*_+`'~]+ \S+ SIP/2\.0)\r?\n)")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,7})[ \t]*\r?$", re.I | re.M)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Longest start line worth keeping while searching for one in garbage.
MAX_START_LINE = 1024

StreamKey = tuple[str, int, str, int]  # source, source port, destination, destination port


@dataclass(frozen=True, slots=True)
class TcpLimits:
    window: int = 256 << 10        # out-of-order bytes held per stream
    max_message: int = 65_535 + 8192  # framed bytes held per stream: a maximal body plus headers
    max_streams: int = 32_768
    max_bytes: int = 64 << 20      # all streams together
    idle_timeout_s: float = 300.0


@dataclass(slots=True)
class TcpStats:
    segments: int = 0
    messages: int = 0
    retransmitted_bytes: int = 0
    duplicate_segments: int = 0
    out_of_order: int = 0
    gaps: int = 0
    skipped_bytes: int = 0       # not SIP: dropped while resynchronising
    keepalives: int = 0
    missing_content_length: int = 0
    oversized: int = 0           # a message over max_message: dropped, resynchronised
    window_overflows: int = 0
    evicted_streams: int = 0
    expired_streams: int = 0
    resets: int = 0


@dataclass(slots=True)
class _Stream:
    next_seq: int | None = None
    buffer: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)  # out-of-order, by sequence number
    pending_bytes: int = 0
    resync: bool = False
    last_seen: int = 0


def _distance(seq: int, base: int) -> int:
    """Signed distance from ``base`` to ``seq`` in sequence space."""
    d = (seq - base) % SEQ_MOD
    return d - SEQ_MOD if d >= HALF else d


class TcpStreams:
    def __init__(self, limits: TcpLimits | None = None) -> None:
        self.limits = limits or TcpLimits()
        self.stats = TcpStats()
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()  # least recently used first
        self._bytes = 0

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._streams)

    def feed(self, key: StreamKey, seq: int, flags: int, payload: bytes, now_ns: int) -> list[bytes]:
        self.stats.segments += 1
        self.expire(now_ns)
        if flags & RST:
            self.stats.resets += 1
            self._drop(key)
            return []
        stream = self._stream(key, now_ns)
        if flags & SYN:
            self._reset(stream, (seq + 1) % SEQ_MOD)
        if payload:
            self._place(stream, seq, payload)
        messages = self._frame(stream)
        if flags & FIN:
            self._drop(key)
        return messages

    def expire(self, now_ns: int) -> None:
        deadline = now_ns - int(self.limits.idle_timeout_s * NS)
        while self._streams:
            key, stream = next(iter(self._streams.items()))
            if stream.last_seen > deadline:
                break
            self._drop(key)
            self.stats.expired_streams += 1

    def _stream(self, key: StreamKey, now_ns: int) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.limits.max_streams:
                self._drop(next(iter(self._streams)))
                self.stats.evicted_streams += 1
            stream = self._streams[key] = _Stream()
        else:
            self._streams.move_to_end(key)
        stream.last_seen = now_ns
        return stream

    def _reset(self, stream: _Stream, next_seq: int) -> None:
        self._bytes -= len(stream.buffer) + stream.pending_bytes
        stream.buffer.clear()
        stream.pending.clear()
        stream.pending_bytes = 0
        stream.next_seq = next_seq
        stream.resync = False

    def _place(self, stream: _Stream, seq: int, payload: bytes) -> None:
        if stream.next_seq is None:  # joined mid-stream: frame from the next start line
            stream.next_seq = seq
            stream.resync = True
        ahead = _distance(seq, stream.next_seq)
        if ahead < 0:  # starts before what we have: a retransmission
            if ahead + len(payload) <= 0:
                self.stats.duplicate_segments += 1
                return
            self.stats.retransmitted_bytes += -ahead
            payload, ahead = payload[-ahead:], 0
        if ahead > 0:
            self._hold(stream, seq, payload, ahead)
            return
        self._append(stream, payload)
        self._drain_pending(stream)

    def _hold(self, stream: _Stream, seq: int, payload: bytes, ahead: int) -> None:
        if ahead + len(payload) > self.limits.window:
            self.stats.window_overflows += 1
            self._skip_gap(stream)
            self._place(stream, seq, payload)
            return
        if seq in stream.pending:
            self.stats.duplicate_segments += 1
            return
        self.stats.out_of_order += 1
        stream.pending[seq] = payload
        stream.pending_bytes += len(payload)
        self._bytes += len(payload)
        self._enforce_total()

    def _drain_pending(self, stream: _Stream) -> None:
        while stream.pending:
            assert stream.next_seq is not None
            progressed = False
            for seq in list(stream.pending):
                ahead = _distance(seq, stream.next_seq)
                if ahead > 0:
                    continue
                payload = stream.pending.pop(seq)
                stream.pending_bytes -= len(payload)
                self._bytes -= len(payload)
                if ahead + len(payload) > 0:
                    self._append(stream, payload[-ahead:] if ahead else payload)
                    progressed = True
            if not progressed:
                return

    def _skip_gap(self, stream: _Stream) -> None:
        """Give up on a hole: continue at the earliest held segment (or wherever the
        next one lands), and find the next start line from there."""
        self.stats.gaps += 1
        self._bytes -= len(stream.buffer)
        self.stats.skipped_bytes += len(stream.buffer)
        stream.buffer.clear()
        stream.resync = True
        if stream.pending and stream.next_seq is not None:
            base = stream.next_seq
            stream.next_seq = min(stream.pending, key=lambda s: _distance(s, base))
            self._drain_pending(stream)
        else:
            stream.next_seq = None

    def _append(self, stream: _Stream, payload: bytes) -> None:
        assert stream.next_seq is not None
        stream.buffer += payload
        stream.next_seq = (stream.next_seq + len(payload)) % SEQ_MOD
        self._bytes += len(payload)
        self._enforce_total()

    def _frame(self, stream: _Stream) -> list[bytes]:
        messages: list[bytes] = []
        buffer = stream.buffer
        while buffer:
            if stream.resync and not self._resynchronise(stream):
                break
            start = 0
            while buffer.startswith(b"\r\n", start):
                start += 2
                self.stats.keepalives += 1
            if start:
                del buffer[:start]
                self._bytes -= start
                continue
            end = _HEADER_END.search(buffer)
            if end is None:
                if len(buffer) > self.limits.max_message:
                    self._oversized(stream)
                break
            length = _CONTENT_LENGTH.search(buffer, 0, end.start())
            if length is None:
                self.stats.missing_content_length += 1
            size = end.end() + (int(length.group(1)) if length else 0)
            if size > self.limits.max_message:
                self._oversized(stream)
                continue
            if len(buffer) < size:
                break
            messages.append(bytes(buffer[:size]))
            del buffer[:size]
            self._bytes -= size
        self.stats.messages += len(messages)
        return messages

    def _resynchronise(self, stream: _Stream) -> bool:
        """Drop bytes up to the next start line; keep a tail that may begin one."""
        buffer = stream.buffer
        match = _START_LINE.search(buffer)
        if match is None:
            keep = min(len(buffer), MAX_START_LINE)
            dropped = len(buffer) - keep
            del buffer[:dropped]
            self._bytes -= dropped
            self.stats.skipped_bytes += dropped
            return False
        dropped = match.start(1)
        del buffer[:dropped]
        self._bytes -= dropped
        self.stats.skipped_bytes += dropped
        stream.resync = False
        return True

    def _oversized(self, stream: _Stream) -> None:
        self.stats.oversized += 1
        self.stats.skipped_bytes += len(stream.buffer)
        self._bytes -= len(stream.buffer)
        stream.buffer.clear()
        stream.resync = True

    def _enforce_total(self) -> None:
        while self._bytes > self.limits.max_bytes and self._streams:
            self._drop(next(iter(self._streams)))
            self.stats.evicted_streams += 1

    def _drop(self, key: StreamKey) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            self._bytes -= len(stream.buffer) + stream.pending_bytes
