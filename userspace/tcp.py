"""SIP over TCP: per-direction stream reassembly and message framing.

Sans-IO: ``feed(key, seq, flags, payload, now_ns)`` takes a captured segment
and returns the complete SIP messages (bytes) it finished. Each direction
of a connection is its own byte stream. Segments are placed by sequence
number (mod 2**32) at 64-bit stream offsets: retransmitted bytes are
trimmed or dropped, and segments past a hole are held in order (heaps, so
any arrival order costs O(log n) a segment, never a rescan).

A hole may be reordering (it fills soon) or a segment the capture never
saw (it never fills). The data after it is framed at once, from its first
start line, and whole messages found there come out without waiting: one
lost segment costs the message it cut, and delays nothing behind it. If the
hole fills after all, the stream is framed in order again and the messages
already out are recognised by their stream offset, not repeated. The hole
is given up (a counted gap) when the data held past it passes the window,
when a second hole opens behind messages framed past the first, and when
the stream ends.

Messages are framed by Content-Length (RFC 3261 §18.3: mandatory on
streams); CRLF keep-alives between them (RFC 5626 §3.5.1) are skipped.
Framing is incremental: a message arriving one byte a segment is scanned
once. Memory is charged as held — payload plus a per-segment overhead —
per stream (the window) and in total; idle streams expire. Bytes thrown
away (at a gap, FIN, RST, idle expiry, eviction) are counted, with the
messages they held.
"""

from __future__ import annotations

import heapq
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
# Data that begins mid-stream (past a hole, a join) may begin mid-line: there a
# start line right at the front is believed only if it is a status line or a
# method SIP defines, so that "NVITE sip:... SIP/2.0" (a cut INVITE) is not one.
_KNOWN_START = re.compile(
    rb"(?:SIP/2\.0 [1-6]\d\d|(?:INVITE|ACK|BYE|CANCEL|OPTIONS|REGISTER|PRACK|SUBSCRIBE|NOTIFY|PUBLISH"
    rb"|INFO|REFER|MESSAGE|UPDATE) )")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,7})[ \t]*\r?$", re.I | re.M)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Longest start line worth keeping while searching for one in garbage.
MAX_START_LINE = 1024
# What holding one out-of-order segment costs besides its payload, measured
# on CPython 3.11: the bytes object (33), its heap entry tuple (56) and slot
# (8), rounded up. One-byte segments cannot hide 100x their charge.
SEGMENT_OVERHEAD = 128

StreamKey = tuple[str, int, str, int]  # source, source port, destination, destination port
Held = tuple[int, bytes]  # (stream offset, payload)


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """Each field's ``range`` is what a config may set it to (otus_ebpf.config)."""

    # charged bytes held past a hole per stream
    window: int = field(default=256 << 10, metadata={"range": (4096, 64 << 20)})
    # framed bytes held per stream: a maximal body plus headers
    max_message: int = field(default=65_535 + 8192, metadata={"range": (1024, 16 << 20)})
    max_streams: int = field(default=32_768, metadata={"range": (1, 1 << 22)})
    # charged bytes of all streams together
    max_bytes: int = field(default=64 << 20, metadata={"range": (1 << 16, 16 << 30)})
    idle_timeout_s: float = field(default=300.0, metadata={"range": (0.001, 7 * 86_400)})


@dataclass(slots=True)
class TcpStats:
    segments: int = 0
    messages: int = 0
    retransmitted_bytes: int = 0
    duplicate_segments: int = 0
    out_of_order: int = 0
    gaps: int = 0
    skipped_bytes: int = 0       # thrown away: not SIP, past a gap, or held at FIN/RST/expiry/eviction
    lost_messages: int = 0       # messages (at least) in what was thrown away
    keepalives: int = 0
    missing_content_length: int = 0
    oversized: int = 0           # a message over max_message: dropped, resynchronised
    window_overflows: int = 0
    evicted_streams: int = 0
    expired_streams: int = 0
    resets: int = 0


def _distance(seq: int, base: int) -> int:
    """Signed distance from ``base`` to ``seq`` in sequence space."""
    d = (seq - base) % SEQ_MOD
    return d - SEQ_MOD if d >= HALF else d


def count_start_lines(data: bytes | bytearray) -> int:
    """How many messages begin in ``data``: what throwing it away loses, at least."""
    return sum(1 for _ in _START_LINE.finditer(data))


class _Framer:
    """Bytes in order → whole SIP messages, incrementally: each search resumes
    where the last one stopped. ``base`` is the stream offset of the buffer's
    first byte, so every message knows where in the stream it began."""

    __slots__ = ("_header_scan", "_start_scan", "base", "buffer", "cut", "mid_line", "resync", "stats")

    def __init__(self, base: int, resync: bool, stats: TcpStats) -> None:
        self.buffer = bytearray()
        self.base = base
        self.resync = resync      # look for a start line before framing
        self.mid_line = resync    # the buffer may begin in the middle of a line
        self.cut = False          # begins past a gap inside a message not yet counted lost
        self.stats = stats        # the stream's, or a speculative run's own
        self._header_scan = 0     # where the search for the end of the headers resumes
        self._start_scan = 0      # where the search for a start line resumes

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def end(self) -> int:
        return self.base + len(self.buffer)

    @property
    def partial(self) -> bool:
        """Holds the beginning of a message (throwing it away loses one)."""
        return not self.resync and bool(self.buffer.strip(b"\r\n"))

    def frame(self, max_message: int) -> list[Held]:
        """Whole messages at the front of the buffer, with their stream offsets."""
        messages: list[Held] = []
        buffer, stats = self.buffer, self.stats
        start = 0
        while start < len(buffer):
            if self.resync:
                start = self._resynchronise(start)
                if self.resync:
                    break
            if buffer.startswith(b"\r\n", start):
                start += 2
                stats.keepalives += 1
                continue
            end = _HEADER_END.search(buffer, max(start, self._header_scan))
            if end is None:
                self._header_scan = max(start, len(buffer) - 3)
                if len(buffer) - start > max_message:
                    start = self._oversized(start)
                    continue
                break
            length = _CONTENT_LENGTH.search(buffer, start, end.start())
            if length is None:
                stats.missing_content_length += 1
            size = end.end() - start + (int(length.group(1)) if length else 0)
            if size > max_message:
                start = self._oversized(start)
                continue
            if len(buffer) - start < size:
                self._header_scan = end.start()  # found: resume there until the body is in
                break
            messages.append((self.base + start, bytes(buffer[start:start + size])))
            start += size
            self._header_scan = start
        if start:
            del buffer[:start]
            self.base += start
            self._header_scan = max(0, self._header_scan - start)
            self._start_scan = max(0, self._start_scan - start)
        return messages

    def _resynchronise(self, start: int) -> int:
        """Skip to the next start line; keep a tail that may begin one."""
        buffer = self.buffer
        match = _START_LINE.search(buffer, max(start, self._start_scan))
        if match is not None and match.start(1) == 0 and self.mid_line and not _KNOWN_START.match(buffer):
            match = _START_LINE.search(buffer, 1)  # only after a line break, then
        if match is None:
            keep_from = max(start, len(buffer) - MAX_START_LINE)
            self.stats.skipped_bytes += keep_from - start
            self._start_scan = keep_from
            self.mid_line = self.mid_line or keep_from > 0
            return keep_from
        self.stats.skipped_bytes += match.start(1) - start
        if self.cut and buffer[start:match.start(1)].strip():
            self.stats.lost_messages += 1  # the tail of a message whose head was never seen
        self.resync = self.mid_line = self.cut = False
        self._header_scan = match.start(1)
        return match.start(1)

    def _oversized(self, start: int) -> int:
        self.stats.oversized += 1
        self.stats.lost_messages += 1
        self.stats.skipped_bytes += len(self.buffer) - start
        self.resync = True
        self._start_scan = self._header_scan = len(self.buffer)
        return len(self.buffer)


@dataclass(slots=True)
class _Run:
    """Contiguous data held past a hole, framed at once from its first start line."""

    start: int                   # stream offset of its first byte
    framer: _Framer
    chunks: list[bytes] = field(default_factory=list)  # as captured, for when the hole fills
    emitted: set[int] = field(default_factory=set)  # stream offsets of the messages it let out
    size: int = 0

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def charge(self) -> int:
        """Its chunks, and the framer's copy of the part not yet framed."""
        return self.size + len(self.chunks) * SEGMENT_OVERHEAD + len(self.framer)


@dataclass(slots=True)
class _Stream:
    main: _Framer
    next_seq: int | None = None  # sequence number of the next byte in order
    run: _Run | None = None
    before: list[Held] = field(default_factory=list)  # heap: held between the stream and its run
    after: list[Held] = field(default_factory=list)   # heap: held past the run
    held: int = 0                # charged bytes of before and after
    emitted: set[int] = field(default_factory=set)  # offsets the main framing must not repeat
    ready: list[bytes] = field(default_factory=list)  # messages framed, to hand out
    last_seen: int = 0

    @property
    def next_off(self) -> int:
        return self.main.end

    @property
    def charge(self) -> int:
        return len(self.main) + self.held + (self.run.charge if self.run is not None else 0)


class TcpStreams:
    def __init__(self, limits: TcpLimits | None = None) -> None:
        self.limits = limits or TcpLimits()
        self.stats = TcpStats()
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()  # least recently used first
        self._bytes = 0  # charged, all streams

    @property
    def buffered_bytes(self) -> int:
        """Memory charged to held and partly framed data, all streams."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._streams)

    def feed(self, key: StreamKey, seq: int, flags: int, payload: bytes, now_ns: int) -> list[bytes]:
        self.stats.segments += 1
        self.expire(now_ns)
        if flags & RST:
            self.stats.resets += 1
            return self._end(key)  # what was sent before the reset is still SIP
        stream = self._stream(key, now_ns)
        charged = stream.charge
        if flags & SYN:
            self._discard(stream)
            seq = (seq + 1) % SEQ_MOD  # the SYN takes one sequence number; data (TFO) follows it
            stream.main, stream.next_seq = self._framer(0, resync=False), seq
        if payload:
            self._place(stream, seq, payload)
        self._frame_main(stream)
        self._bytes += stream.charge - charged
        if flags & FIN:
            return self._end(key)
        out, stream.ready = stream.ready, []
        self._enforce_total()
        return out

    def expire(self, now_ns: int) -> None:
        deadline = now_ns - int(self.limits.idle_timeout_s * NS)
        while self._streams:
            key, stream = next(iter(self._streams.items()))
            if stream.last_seen > deadline:
                break
            self._drop(key)
            self.stats.expired_streams += 1

    # -- placing segments ------------------------------------------------------

    def _place(self, stream: _Stream, seq: int, payload: bytes) -> None:
        if stream.next_seq is None:  # joined mid-stream: frame from the next start line
            stream.next_seq, stream.main.resync = seq, True
        offset = stream.next_off + _distance(seq, stream.next_seq)
        while True:
            ahead = offset - stream.next_off
            if ahead + len(payload) <= 0:
                self.stats.duplicate_segments += 1
                return
            if ahead <= 0:
                if ahead < 0:
                    self.stats.retransmitted_bytes += -ahead
                self._append(stream, payload[-ahead:] if ahead else payload)
                self._advance(stream)
                return
            if ahead + len(payload) > self.limits.window or stream.charge > self.limits.window:
                self.stats.window_overflows += 1
                self._give_up_hole(stream, offset)
                continue
            run = stream.run
            if run is not None and offset > run.end and run.emitted:
                self._give_up_hole(stream)  # a second hole behind messages framed past the first
                continue
            self._hold(stream, offset, payload)
            return

    def _append(self, stream: _Stream, data: bytes) -> None:
        stream.main.buffer += data
        stream.next_seq = ((stream.next_seq or 0) + len(data)) % SEQ_MOD

    def _advance(self, stream: _Stream) -> None:
        """The stream moved on in order: take what was held up to the new position."""
        run = stream.run
        limit = run.start if run is not None else None
        while stream.before and stream.before[0][0] <= stream.next_off:
            offset, data = heapq.heappop(stream.before)
            stream.held -= len(data) + SEGMENT_OVERHEAD
            end = offset + len(data) if limit is None else min(offset + len(data), limit)
            if end > stream.next_off:
                self._append(stream, data[stream.next_off - offset:end - offset])
        if run is None or stream.next_off < run.start:
            return
        stream.run = None  # the hole filled: frame in order, without repeating what is out
        joined = b"".join(run.chunks)
        if run.end > stream.next_off:
            self._append(stream, joined[stream.next_off - run.start:])
        stream.emitted |= run.emitted
        self._take_after(stream)

    def _hold(self, stream: _Stream, offset: int, payload: bytes) -> None:
        self.stats.out_of_order += 1
        run = stream.run
        if run is None:
            self._start_run(stream, offset, payload)
        elif run.start <= offset <= run.end:
            if offset + len(payload) <= run.end:
                self.stats.duplicate_segments += 1
                return
            self._extend_run(stream, payload[run.end - offset:])
            self._drain_after(stream)
        else:
            heapq.heappush(stream.after if offset > run.end else stream.before, (offset, payload))
            stream.held += len(payload) + SEGMENT_OVERHEAD

    # -- the run past a hole ------------------------------------------------------

    def _start_run(self, stream: _Stream, offset: int, payload: bytes) -> None:
        # Its framing counts in a scratch TcpStats: real only if the hole is given up.
        stream.run = _Run(offset, _Framer(offset, resync=True, stats=TcpStats()))
        self._extend_run(stream, payload)

    def _extend_run(self, stream: _Stream, data: bytes) -> None:
        run = stream.run
        assert run is not None
        run.chunks.append(data)
        run.size += len(data)
        run.framer.buffer += data
        for offset, message in run.framer.frame(self.limits.max_message):
            run.emitted.add(offset)
            stream.ready.append(message)  # out now: a hole delays nothing behind it
            self.stats.messages += 1

    def _drain_after(self, stream: _Stream) -> None:
        run = stream.run
        assert run is not None
        while stream.after and stream.after[0][0] <= run.end:
            offset, data = heapq.heappop(stream.after)
            stream.held -= len(data) + SEGMENT_OVERHEAD
            if offset + len(data) > run.end:
                self._extend_run(stream, data[run.end - offset:])

    def _give_up_hole(self, stream: _Stream, offset: int | None = None) -> None:
        """The first hole will not fill: go on from the earliest data held past
        it (framing from its first start line), or at ``offset`` when nothing
        is held. What the stream held before the hole is lost, counted."""
        held = [start for start in (stream.before[0][0] if stream.before else None,
                                    stream.run.start if stream.run is not None else None)
                if start is not None]
        target = min(held) if held else offset
        if target is None:
            return
        self.stats.gaps += 1
        head_counted = stream.main.partial
        self._lose_framer(stream.main)
        stream.next_seq = ((stream.next_seq or 0) + (target - stream.next_off)) % SEQ_MOD
        stream.main = self._framer(target, resync=True)
        stream.main.cut = not head_counted  # else its tail is the message just counted
        stream.emitted.clear()
        self._advance(stream)

    def _take_after(self, stream: _Stream) -> None:
        """The stream is past the run: contiguous held data joins it in order,
        the first piece past a new hole starts the next run."""
        while stream.after and stream.after[0][0] <= stream.next_off:
            offset, data = heapq.heappop(stream.after)
            stream.held -= len(data) + SEGMENT_OVERHEAD
            if offset + len(data) > stream.next_off:
                self._append(stream, data[stream.next_off - offset:])
        if stream.after:
            offset, data = heapq.heappop(stream.after)
            stream.held -= len(data) + SEGMENT_OVERHEAD
            self._start_run(stream, offset, data)
            self._drain_after(stream)

    def _frame_main(self, stream: _Stream) -> None:
        main = stream.main
        for offset, message in main.frame(self.limits.max_message):
            if offset in stream.emitted:
                stream.emitted.discard(offset)  # framed past the hole already, and out
                continue
            stream.ready.append(message)
            self.stats.messages += 1
        if stream.emitted:
            stream.emitted = {o for o in stream.emitted if o >= main.base}

    def _end(self, key: StreamKey) -> list[bytes]:
        """The stream ends (FIN, RST): holes will not fill. Take every whole
        message the held data frames, count the rest, drop the stream."""
        stream = self._streams.get(key)
        if stream is None:
            return []
        charged = stream.charge
        while stream.run is not None or stream.before:
            self._give_up_hole(stream)
            self._frame_main(stream)
        out = stream.ready
        self._bytes += stream.charge - charged
        self._drop(key)
        return out

    # -- bookkeeping -----------------------------------------------------------------

    def _framer(self, base: int, resync: bool) -> _Framer:
        return _Framer(base, resync, self.stats)

    def _lose_framer(self, framer: _Framer) -> None:
        if framer.partial:
            self.stats.lost_messages += 1
        self.stats.skipped_bytes += len(framer)
        framer.base += len(framer.buffer)
        framer.buffer.clear()

    def _release(self, held: list[Held], stream: _Stream) -> None:
        for _offset, data in held:
            stream.held -= len(data) + SEGMENT_OVERHEAD
            self.stats.skipped_bytes += len(data)
            self.stats.lost_messages += count_start_lines(data)

    def _discard(self, stream: _Stream) -> None:
        """Throw away everything the stream holds, counted."""
        self._lose_framer(stream.main)
        self._release(stream.before, stream)
        self._release(stream.after, stream)
        stream.before, stream.after = [], []
        run = stream.run
        if run is not None:
            unframed = bytes(run.framer.buffer)
            self.stats.skipped_bytes += len(unframed)
            self.stats.lost_messages += count_start_lines(unframed)
            stream.run = None
        stream.emitted.clear()

    def _stream(self, key: StreamKey, now_ns: int) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.limits.max_streams:
                self._drop(next(iter(self._streams)))
                self.stats.evicted_streams += 1
            stream = self._streams[key] = _Stream(self._framer(0, resync=False))
        else:
            self._streams.move_to_end(key)
        stream.last_seen = now_ns
        return stream

    def _enforce_total(self) -> None:
        while self._bytes > self.limits.max_bytes and self._streams:
            self._drop(next(iter(self._streams)))
            self.stats.evicted_streams += 1

    def _drop(self, key: StreamKey) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            self._bytes -= stream.charge
            self._discard(stream)


def _add_stats(into: TcpStats, more: TcpStats) -> None:
    for name in TcpStats.__dataclass_fields__:
        setattr(into, name, getattr(into, name) + getattr(more, name))
