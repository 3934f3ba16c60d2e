"""SIP over TCP: per-direction stream reassembly and message framing.

Sans-IO: ``feed(key, seq, flags, payload, now_ns)`` takes a captured segment
and returns the complete SIP messages (bytes) it finished. Each direction
of a connection is its own byte stream. Segments are placed by sequence
number (mod 2**32) at 64-bit stream offsets: retransmitted bytes are
trimmed or dropped, and segments past a hole wait in a heap, so any arrival
order costs O(log n) a segment, never a rescan.

A hole is reordering (it fills soon) or a segment the capture never saw (it
never fills). Reordering is short: a hole that ``reorder_segments`` later
segments have not filled is given up as a counted gap, and framing goes on
at the first start line of the data held past it. So one lost segment costs
the message it cut and delays the ones behind it by a few segments, never
by a window of data; bytes of a given-up hole that turn up after all are
counted as lost, not framed twice. The data held past a hole is also given
up when it passes the window, and at the end of the stream, where it is
framed before it is dropped. A run of segments far behind the stream (a
forged or corrupt segment made it jump ahead) puts the stream back where
they are.

Messages are framed by Content-Length (RFC 3261 §18.3: mandatory on
streams); CRLF keep-alives between them (RFC 5626 §3.5.1) are skipped.
Framing is incremental: each search resumes where the last one stopped, so
a message arriving one byte a segment is scanned once. Memory is charged as
held — payload plus a per-segment overhead — per stream (the window) and in
total; idle streams expire. Bytes thrown away (not SIP, at a gap, FIN, RST,
idle expiry, eviction) are counted, with the messages they held.

A stream may carry SIP over WebSocket (RFC 7118) instead: one on a WebSocket
port, or one whose first bytes are an HTTP request or response (the upgrade
handshake), is framed by userspace.websocket instead, in the same places.
"""

from __future__ import annotations

import heapq
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from userspace.frame import TCP
from userspace.websocket import WS, Phase, Role, WebSocketFramer, WebSocketStats, looks_like_upgrade

SEQ_MOD = 1 << 32
HALF = 1 << 31
FIN, SYN, RST = 0x01, 0x02, 0x04
NS = 1_000_000_000
# A start line of a request or a response, at a line start.
_START_LINE = re.compile(
    rb"(?:^|\n)((?:SIP/2\.0 [1-6]\d\d[^\r\n]*|[A-Za-z0-9\-.!%*_+`'~]+ \S+ SIP/2\.0)\r?\n)")
# Data that begins mid-stream (past a gap, a join) may begin mid-line: there a
# start line right at the front is believed only if it is a status line or a
# method SIP defines, so that "NVITE sip:... SIP/2.0" (a cut INVITE) is not one.
_KNOWN_START = re.compile(
    rb"(?:SIP/2\.0 [1-6]\d\d|(?:INVITE|ACK|BYE|CANCEL|OPTIONS|REGISTER|PRACK|SUBSCRIBE|NOTIFY|PUBLISH"
    rb"|INFO|REFER|MESSAGE|UPDATE) )")
# A start line right where a message should begin (the stream's first byte, or the end of
# the message before): anything else there is not SIP (TLS on a SIP port, say) and is
# skipped to the next start line, never framed by a blank line it happens to hold.
_START_LINE_HERE = re.compile(
    rb"(?:SIP/2\.0 [1-6]\d\d[^\r\n]*|[A-Za-z0-9\-.!%*_+`'~]+ \S+ SIP/2\.0)\r?\n")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,7})[ \t]*\r?$", re.I | re.M)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Longest start line worth keeping while searching for one in garbage.
MAX_START_LINE = 1024
# What holding one out-of-order segment costs besides its payload, measured
# on CPython 3.11: the bytes object (33), its heap entry tuple (56) and slot
# (8), rounded up. One-byte segments cannot hide 100x their charge.
SEGMENT_OVERHEAD = 128
# Consecutive segments this far behind the stream that put it back where they are.
FAR_BEHIND_RESTART = 3
# Holes given up that a stream remembers, so their data is known as late when it comes.
LOST_RANGES_KEPT = 64

# Directions found WebSocket by their handshake (off a WebSocket port) remembered past their
# stream's idle expiry or eviction, so that their next segments, a join, are framed as
# WebSocket still rather than as SIP over TCP (which would never find a start line in them).
WEBSOCKET_KEYS_KEPT = 4096
# Bytes of a stream's start that tell a WebSocket handshake from SIP ("GET ", "HTTP/1.").
_SNIFF_BYTES = 5
# One direction of a connection: raw source, source port, raw destination, destination port,
# and the tunnel it came in (userspace.tunnel.Encap.tag; b"": none), so that one inner
# connection seen in two tunnels is two streams, never one stream fed twice.
StreamKey = tuple[bytes, int, bytes, int, bytes]
Held = tuple[int, bytes]  # (stream offset, payload)


@dataclass(slots=True)
class _LostRange:
    """A hole given up, [start, end) in stream offsets. The message running out
    of it is counted lost once: by its tail, when framing resumes past the hole,
    or by its start line if that turns up late, whichever comes first."""

    start: int
    end: int
    counted: bool = False  # the message running out of it is counted
    credit: int = 0        # counted by its tail: one late start line is that message
    # start lines counted, by stream offset: a late retransmission repeats them
    seen: set[int] = field(default_factory=set)

    def count_tail(self, stats: TcpStats) -> None:
        if not self.counted:
            stats.lost_messages += 1
            self.counted, self.credit = True, 1

    def count_late(self, stats: TcpStats, starts: int) -> None:
        if not starts:
            return
        if not self.counted:
            self.counted = True  # the one running out of it is among them
        elif self.credit:
            starts, self.credit = starts - 1, 0
        stats.lost_messages += starts


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """Each field's ``range`` is what a config may set it to (otus_ebpf.control.config)."""

    # charged bytes held past a hole per stream
    window: int = field(default=256 << 10, metadata={"range": (4096, 64 << 20)})
    # framed bytes held per stream: a maximal body plus headers
    max_message: int = field(default=65_535 + 8192, metadata={"range": (1024, 16 << 20)})
    max_streams: int = field(default=32_768, metadata={"range": (1, 1 << 22)})
    # charged bytes of all streams together
    max_bytes: int = field(default=64 << 20, metadata={"range": (1 << 16, 16 << 30)})
    idle_timeout_s: float = field(default=300.0, metadata={"range": (0.001, 7 * 86_400)})
    # later segments a hole may wait for before it is given up as lost: reordering
    # on a capture path is a few segments; a lost segment never comes
    reorder_segments: int = field(default=8, metadata={"range": (1, 4096)})


@dataclass(slots=True)
class TcpStats:
    segments: int = 0
    messages: int = 0
    retransmitted_bytes: int = 0
    duplicate_segments: int = 0
    out_of_order: int = 0
    gaps: int = 0                # holes given up
    skipped_bytes: int = 0       # thrown away: not SIP, at a gap, late for one, or at FIN/RST/expiry/eviction
    lost_messages: int = 0       # messages (at least) in what was thrown away or never seen
    late_segments: int = 0       # data of a hole given up that came after all
    keepalives: int = 0
    missing_content_length: int = 0
    oversized: int = 0           # a message over max_message: dropped, resynchronised
    window_overflows: int = 0
    restarts: int = 0            # the stream put back where a run of far-behind segments was
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
    where the last one stopped, and a message's size is worked out once."""

    __slots__ = ("_begun", "_header_scan", "_line_scan", "_size", "_start_scan", "buffer", "cut", "mid_line",
                 "resync", "stats")

    def __init__(self, stats: TcpStats, resync: bool = False) -> None:
        self.buffer = bytearray()
        self.stats = stats
        self.resync = resync      # look for a start line before framing
        self.mid_line = resync    # the buffer may begin in the middle of a line
        self.cut: _LostRange | None = None  # begins past this gap, inside a message not yet counted
        self._header_scan = 0     # where the search for the end of the headers resumes
        self._start_scan = 0      # where the search for a start line resumes
        self._size: int | None = None  # the size of the message at the front, once known
        self._line_scan = 0       # where the search for the end of its start line resumes
        self._begun = -1          # where a start line is known to begin

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def charge(self) -> int:
        """Memory held for its stream."""
        return len(self.buffer)

    def clear(self) -> None:
        self.buffer.clear()

    @property
    def partial(self) -> bool:
        """Holds the beginning of a message (throwing it away loses one)."""
        return not self.resync and bool(self.buffer.strip(b"\r\n"))

    def frame(self, max_message: int) -> list[bytes]:
        """Whole messages at the front of the buffer."""
        messages: list[bytes] = []
        buffer, stats = self.buffer, self.stats
        start = 0
        while start < len(buffer):
            size = self._size
            if size is None:
                if self.resync:
                    start = self._resynchronise(start)
                    if self.resync:
                        break
                if buffer.startswith(b"\r\n", start):
                    start += 2
                    stats.keepalives += 1
                    continue
                begins = self._begins_message(start)
                if begins is None:
                    break
                if not begins:
                    self.resync = True  # not SIP here: on to the next start line
                    continue
                size = self._measure(start, max_message)
                if size is None:
                    break
                if size < 0:  # oversized: everything up to here is dropped
                    start = len(buffer)
                    continue
            if len(buffer) - start < size:
                self._size = size  # known: until the body is in, nothing is searched again
                break
            messages.append(bytes(buffer[start:start + size]))
            start += size
            self._size = None
            self._header_scan = start
        if start:
            del buffer[:start]
            self._header_scan = max(0, self._header_scan - start)
            self._start_scan = max(0, self._start_scan - start)
            self._line_scan = max(0, self._line_scan - start)
            self._begun = self._begun - start if self._begun >= start else -1
        return messages

    def _begins_message(self, start: int) -> bool | None:
        """Whether a start line begins at ``start``; None while its line is not all in.
        Incremental, as the other searches: a line arriving a byte at a time is read once."""
        if self._begun == start:
            return True
        buffer = self.buffer
        if buffer.find(b"\n", max(start, self._line_scan), start + MAX_START_LINE) < 0:
            self._line_scan = len(buffer)
            return None if len(buffer) - start < MAX_START_LINE else False
        if _START_LINE_HERE.match(buffer, start) is None:
            return False
        self._begun = start
        return True

    def _measure(self, start: int, max_message: int) -> int | None:
        """The size of the message at ``start``: None while its headers are not all
        in, negative when it is over ``max_message`` (dropped, counted)."""
        buffer = self.buffer
        end = _HEADER_END.search(buffer, max(start, self._header_scan))
        if end is None:
            self._header_scan = max(start, len(buffer) - 3)
            if len(buffer) - start > max_message:
                self._oversized(start)
                return -1
            return None
        length = _CONTENT_LENGTH.search(buffer, start, end.start())
        if length is None:
            self.stats.missing_content_length += 1
        size = end.end() - start + (int(length.group(1)) if length else 0)
        if size > max_message:
            self._oversized(start)
            return -1
        return size

    def _resynchronise(self, start: int) -> int:
        """Skip to the next start line; keep a tail that may begin one."""
        buffer = self.buffer
        match = _START_LINE.search(buffer, max(start, self._start_scan))
        if match is not None and match.start(1) == 0 and self.mid_line and not _KNOWN_START.match(buffer):
            match = _START_LINE.search(buffer, 1)  # only after a line break, then
        if match is None:
            keep_from = max(start, len(buffer) - MAX_START_LINE)
            self._skip(buffer, start, keep_from)
            self._start_scan = keep_from
            self.mid_line = self.mid_line or keep_from > 0
            return keep_from
        self._skip(buffer, start, match.start(1))
        self.resync = self.mid_line = False
        self.cut = None
        self._header_scan = match.start(1)
        return match.start(1)

    def _skip(self, buffer: bytearray, start: int, end: int) -> None:
        if end > start:
            self.stats.skipped_bytes += end - start
            if self.cut is not None and buffer[start:end].strip():
                self.cut.count_tail(self.stats)  # the tail of a message whose head was never seen
                self.cut = None

    def _oversized(self, start: int) -> None:
        self.stats.oversized += 1
        self.stats.lost_messages += 1
        self.stats.skipped_bytes += len(self.buffer) - start
        self.resync = self.mid_line = True
        self._start_scan = self._header_scan = len(self.buffer)


Framer = _Framer | WebSocketFramer


@dataclass(slots=True)
class _Stream:
    main: Framer
    websocket: bool = False      # framed as WebSocket
    websocket_port: bool = False  # on a WebSocket port: framed so from its first byte
    sniff: bool = True           # its first bytes are still to be looked at for a handshake
    next_seq: int | None = None  # sequence number of the next byte in order
    next_off: int = 0            # its stream offset (64-bit: no wrap)
    held: list[Held] = field(default_factory=list)  # heap: past a hole, by stream offset
    held_bytes: int = 0          # charged
    waited: int = 0              # segments held since the stream last moved on
    lost: deque[_LostRange] = field(default_factory=lambda: deque(maxlen=LOST_RANGES_KEPT))
    far_behind: int = 0          # consecutive segments more than a window behind
    ready: list[bytes] = field(default_factory=list)  # messages framed, to hand out
    last_seen: int = 0

    @property
    def charge(self) -> int:
        return self.main.charge + self.held_bytes


class TcpStreams:
    def __init__(self, limits: TcpLimits | None = None,
                 websocket_ports: frozenset[int] = frozenset()) -> None:
        """``websocket_ports``: a stream to or from one carries SIP over WebSocket."""
        self.limits = limits or TcpLimits()
        self.stats = TcpStats()
        self.websocket = WebSocketStats()
        self._websocket_ports = websocket_ports
        # How the messages the last ``feed`` returned came: TCP, or WS (userspace.websocket).
        # One feed is one stream, so one transport for all of them.
        self.framed_transport = TCP
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()  # least recently used first
        # WEBSOCKET_KEYS_KEPT, least recently forgotten first
        self._websocket_keys: OrderedDict[StreamKey, None] = OrderedDict()
        self._bytes = 0  # charged, all streams

    @property
    def buffered_bytes(self) -> int:
        """Memory charged to held and partly framed data, all streams."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._streams)

    def feed(self, key: StreamKey, seq: int, flags: int, payload: bytes, now_ns: int,
             ordered: bool = False) -> list[bytes]:
        """``ordered``: the stream's data arrives in order (TLS plaintext chunks), so a hole
        is data that will never come, given up at once rather than after reordering."""
        self.stats.segments += 1
        self.expire(now_ns)
        if flags & RST:
            self.stats.resets += 1
            return self._end(key)  # what was sent before the reset is still SIP
        stream = self._stream(key, now_ns)
        charged = stream.charge
        if flags & SYN:
            self._discard(stream)
            stream.websocket, stream.sniff = stream.websocket_port, True
            stream.main = self._framer(stream, resync=False)
            seq = (seq + 1) % SEQ_MOD  # the SYN takes one sequence number; data (TFO) follows it
            stream.next_seq, stream.next_off = seq, 0
            stream.lost.clear()
        if payload:
            self._place(stream, seq, payload, ordered)
        self._frame(stream)
        self._bytes += stream.charge - charged
        if flags & FIN:
            return self._end(key)
        out, stream.ready = stream.ready, []
        self.framed_transport = WS if stream.websocket else TCP
        self._enforce_total()
        return out

    def expire(self, now_ns: int) -> None:
        deadline = now_ns - int(self.limits.idle_timeout_s * NS)
        while self._streams:
            key, stream = next(iter(self._streams.items()))
            if stream.last_seen > deadline:
                break
            self._remember(key)
            self._drop(key)
            self.stats.expired_streams += 1

    # -- placing segments ------------------------------------------------------

    def _place(self, stream: _Stream, seq: int, payload: bytes, ordered: bool = False) -> None:
        if stream.next_seq is None:  # joined mid-stream: frame from the next start line
            stream.next_seq = seq
            stream.main = self._framer(stream, resync=True)
        offset = stream.next_off + _distance(seq, stream.next_seq)
        limits = self.limits
        while True:
            ahead = offset - stream.next_off
            end = ahead + len(payload)
            if end <= 0:
                self._behind(stream, seq, offset, payload)
                return
            stream.far_behind = 0
            if ahead <= 0:
                if ahead < 0:
                    self.stats.retransmitted_bytes += -ahead
                self._append(stream, payload[-ahead:] if ahead else payload)
                self._advance(stream)
                return
            # Bytes held, not a WebSocket inflater's fixed charge (max_bytes counts that): a
            # window smaller than it would turn every reordered segment into a gap.
            if end > limits.window or len(stream.main) + stream.held_bytes + len(payload) > limits.window:
                self.stats.window_overflows += 1
                self._give_up_hole(stream, offset)
                self._frame(stream)  # what the give-up let through, before any further one
                continue
            self.stats.out_of_order += 1
            heapq.heappush(stream.held, (offset, payload))
            stream.held_bytes += len(payload) + SEGMENT_OVERHEAD
            stream.waited += 1
            if ordered or stream.waited >= limits.reorder_segments:
                self._give_up_hole(stream, offset)
            return

    def _behind(self, stream: _Stream, seq: int, offset: int, payload: bytes) -> None:
        """A segment wholly before the stream's position: a retransmission, data of a
        hole given up, or — several far behind in a row — the stream is elsewhere."""
        if stream.next_off - offset > self.limits.window:
            stream.far_behind += 1
            if stream.far_behind >= FAR_BEHIND_RESTART:
                self._restart(stream, seq, offset, payload)
                return
        late = False
        for lost in stream.lost:
            first, last = max(lost.start, offset), min(lost.end, offset + len(payload))
            if first >= last:
                continue
            late = True
            self.stats.skipped_bytes += last - first
            starts = _START_LINE.finditer(payload, first - offset, last - offset)
            fresh = {offset + m.start(1) for m in starts}
            fresh -= lost.seen
            lost.seen |= fresh
            lost.count_late(self.stats, len(fresh))
        if late:
            self.stats.late_segments += 1
        else:
            self.stats.duplicate_segments += 1

    def _append(self, stream: _Stream, data: bytes) -> None:
        stream.main.buffer += data
        stream.next_off += len(data)
        stream.next_seq = ((stream.next_seq or 0) + len(data)) % SEQ_MOD

    def _advance(self, stream: _Stream) -> None:
        """The stream moved on: take what was held up to the new position."""
        held = stream.held
        while held and held[0][0] <= stream.next_off:
            offset, data = heapq.heappop(held)
            stream.held_bytes -= len(data) + SEGMENT_OVERHEAD
            if offset + len(data) > stream.next_off:
                self._append(stream, data[stream.next_off - offset:])
        stream.waited = 0

    def _give_up_hole(self, stream: _Stream, offset: int) -> None:
        """The first hole will not fill: go on from the earliest data held past it
        (framing from its first start line), or from ``offset`` when nothing is
        held. What the stream held before the hole is lost, counted."""
        target = stream.held[0][0] if stream.held else offset
        self.stats.gaps += 1
        head_counted = stream.main.partial
        self._lose(stream.main)
        lost = _LostRange(stream.next_off, target)
        stream.lost.append(lost)
        stream.next_seq = ((stream.next_seq or 0) + (target - stream.next_off)) % SEQ_MOD
        stream.next_off = target
        stream.main = self._framer(stream, resync=True)
        if not head_counted:  # else its tail is the message just counted by its head
            stream.main.cut = lost
        self._advance(stream)

    def _restart(self, stream: _Stream, seq: int, offset: int, payload: bytes) -> None:
        """Go on where the stream really is: everything held is given up, counted."""
        self.stats.restarts += 1
        self._discard(stream)
        # Framed again as the port says: a forged SYN's "GET " must not keep the stream WebSocket.
        stream.websocket = stream.websocket_port
        stream.main = self._framer(stream, resync=True)
        stream.next_seq, stream.next_off, stream.far_behind = seq, offset, 0
        stream.lost.clear()
        self._append(stream, payload)

    def _frame(self, stream: _Stream) -> None:
        if stream.sniff:
            if len(stream.main) < _SNIFF_BYTES:
                return  # no SIP message is shorter: nothing is framed before the look
            self._sniff(stream)
        messages = stream.main.frame(self.limits.max_message)
        main = stream.main
        if isinstance(main, WebSocketFramer) and main.phase == Phase.NOT_WEBSOCKET:
            # Taken for WebSocket by its first bytes, and no upgrade came: SIP over TCP again,
            # from the next start line in what it held.
            stream.websocket = False
            framer = _Framer(self.stats, resync=True)
            framer.buffer = main.buffer
            stream.main = framer
            messages += framer.frame(self.limits.max_message)
        self.stats.messages += len(messages)
        stream.ready += messages

    def _end(self, key: StreamKey) -> list[bytes]:
        """The stream ends (FIN, RST): holes will not fill. Take every whole
        message the held data frames, count the rest, drop the stream."""
        stream = self._streams.get(key)
        if stream is None:
            return []
        charged = stream.charge
        while stream.held:
            self._give_up_hole(stream, stream.held[0][0])
            self._frame(stream)
        out = stream.ready
        self.framed_transport = WS if stream.websocket else TCP
        self._bytes += stream.charge - charged
        self._drop(key)
        return out

    def _sniff(self, stream: _Stream) -> None:
        """A stream seen from its start is WebSocket when its first bytes are an HTTP
        request or response (the upgrade, or given up as not SIP), on any port; on a
        WebSocket port, one that starts otherwise is SIP over TCP."""
        stream.sniff = False
        main = stream.main
        websocket = looks_like_upgrade(main.buffer)
        if websocket != stream.websocket and not main.resync:
            stream.websocket = websocket
            framer = self._framer(stream, resync=False)
            framer.buffer = main.buffer
            stream.main = framer

    # -- bookkeeping -----------------------------------------------------------------

    def _framer(self, stream: _Stream, resync: bool) -> Framer:
        if not stream.websocket:
            return _Framer(self.stats, resync)
        # past a gap, a direction keeps its role (which side masks its frames)
        role = stream.main.role if isinstance(stream.main, WebSocketFramer) and resync else Role.UNKNOWN
        return WebSocketFramer(self.stats, self.websocket, resync, role, fallback=not stream.websocket_port)

    def _lose(self, framer: Framer) -> None:
        if framer.partial:
            self.stats.lost_messages += 1
        self.stats.skipped_bytes += len(framer)
        framer.clear()

    def _discard(self, stream: _Stream) -> None:
        """Throw away everything the stream holds, counted."""
        self._lose(stream.main)
        for _offset, data in stream.held:
            self.stats.skipped_bytes += len(data)
            self.stats.lost_messages += count_start_lines(data)
        stream.held = []
        stream.held_bytes = stream.waited = 0

    def _stream(self, key: StreamKey, now_ns: int) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.limits.max_streams:
                self._evict()
            on_port = key[1] in self._websocket_ports or key[3] in self._websocket_ports
            known = key in self._websocket_keys
            if known:
                del self._websocket_keys[key]
            stream = _Stream(_Framer(self.stats), on_port or known, on_port)
            if stream.websocket:
                stream.main = self._framer(stream, resync=False)
            self._streams[key] = stream
        else:
            self._streams.move_to_end(key)
        stream.last_seen = now_ns
        return stream

    def _enforce_total(self) -> None:
        while self._bytes > self.limits.max_bytes and self._streams:
            self._evict()

    def _evict(self) -> None:
        key = next(iter(self._streams))
        self._remember(key)
        self._drop(key)
        self.stats.evicted_streams += 1

    def _remember(self, key: StreamKey) -> None:
        """A stream dropped while it may go on (idle, evicted): if its handshake made it
        WebSocket, its next segments are framed so."""
        stream = self._streams[key]
        if stream.websocket and not stream.websocket_port:
            self._websocket_keys[key] = None
            if len(self._websocket_keys) > WEBSOCKET_KEYS_KEPT:
                self._websocket_keys.popitem(last=False)

    def _drop(self, key: StreamKey) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            self._bytes -= stream.charge
            self._discard(stream)
