"""SIP over WebSocket (RFC 7118): one direction of a TCP stream → SIP messages.

Sans-IO, the counterpart of userspace.tcp's SIP framer for a stream that
carries WebSocket: the stream reassembly appends the direction's bytes, in
order, to ``buffer`` and calls ``frame``, which returns the SIP messages the
bytes completed. A direction goes through an HTTP handshake (the client's
``GET ... Upgrade: websocket``, the server's ``101``; RFC 6455 §4), then
frames (§5.2): unmasked (§5.3), continuation frames joined (§5.4), control
frames skipped (§5.5), a message deflated by permessage-deflate inflated
(RFC 7692). Each data message is one SIP message (RFC 7118 §5.2).

Hostile or broken input is counted, never fatal: a frame with a bad opcode,
reserved bits, a control frame fragmented or over 125 bytes is skipped by its
length; a message over the limit is skipped as it streams past, never held; a
length a frame cannot have (the 64-bit form with its top bit set, §5.2) loses
the frame boundary, and the direction then looks for the next frame that
begins a SIP message, as it does after a gap in the stream or when capture
joins a connection after its handshake.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

# The record's transport for SIP over WebSocket: a byte (it crosses worker processes
# in the hand-off record), and 255, IANA's reserved IP protocol number, is never a
# real transport beside UDP (17) and TCP (6).
WS = 255
# An upgrade request or its response with cookies and the like; larger is not a
# handshake this agent follows (common servers refuse HTTP heads over 8 KiB).
MAX_HANDSHAKE = 8192
MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5
MAX_HEADER = 14            # 2 + 8 (64-bit length) + 4 (mask)
# What a direction's inflater costs while it lives (permessage-deflate, RFC 7692): zlib's
# 32 KiB window and its state, rounded up; charged to its stream like held bytes.
INFLATER_CHARGE = 48 << 10
# The tail RFC 7692 §7.2.1 takes off each compressed message, put back to inflate it (§7.2.2).
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
# Frames one message may be split into. Each costs parsing however short it is, and an
# empty continuation adds no byte for the size limit to see: without a count a peer
# streams them forever into one message. Real stacks split a message into a few frames.
MAX_MESSAGE_FRAMES = 1024
# Bytes of a SIP start line a frame must show to be believed when framing is found again.
_START_PEEK = 10  # "SUBSCRIBE " is the longest; "SIP/2.0 2" needs 9
_FIN, _RSV1, _RSV23, _OPCODE, _MASKED, _LEN7 = 0x80, 0x40, 0x30, 0x0F, 0x80, 0x7F

_UPGRADE = re.compile(rb"^upgrade[ \t]*:[^\r\n]*websocket", re.I | re.M)
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,9})", re.I | re.M)
_PROTOCOL = re.compile(rb"^sec-websocket-protocol[ \t]*:([^\r\n]*)", re.I | re.M)
# A frame that may begin a data message (text or binary, FIN or not, RSV1 of permessage-deflate
# or not): where framing resumes.
_DATA_START = re.compile(rb"[\x01\x02\x81\x82\x41\x42\xc1\xc2]")
# zlib's word for a deflated message that refers back into a window it never saw.
_FAR_BACK = "too far back"
_BEGINS_SIP, _REFERS_BACK = 1, 2  # what a resync candidate's payload shows
_KNOWN_START = re.compile(
    rb"(?:SIP/2\.0 [1-6]|(?:INVITE|ACK|BYE|CANCEL|OPTIONS|REGISTER|PRACK|SUBSCRIBE|NOTIFY|PUBLISH"
    rb"|INFO|REFER|MESSAGE|UPDATE) )")


class Opcode(IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


_DATA = frozenset((Opcode.TEXT, Opcode.BINARY))
_CONTROL = frozenset((Opcode.CLOSE, Opcode.PING, Opcode.PONG))
# First bytes of a control frame with FIN and no reserved bits: _control_run's fast path.
_FAST_CONTROL = frozenset(_FIN | opcode for opcode in _CONTROL)


class Role(IntEnum):
    UNKNOWN = 0  # joined after the handshake
    CLIENT = 1   # sent the upgrade request: its frames are masked (§5.3)
    SERVER = 2   # sent the 101: its frames are not


class Phase(IntEnum):
    HANDSHAKE = 0
    FRAMES = 1
    RESYNC = 2     # the frame boundary is lost: look for a frame that begins a SIP message
    GIVEN_UP = 3   # not WebSocket: everything is skipped
    NOT_WEBSOCKET = 4  # found by its first bytes only, and no upgrade: the owner frames it as SIP


@dataclass(slots=True)
class WebSocketStats:
    handshakes: int = 0          # upgrade requests and 101 responses followed
    not_websocket: int = 0       # a direction whose first bytes were no upgrade: given up
    other_protocols: int = 0     # a handshake for a subprotocol other than sip: given up
    frames: int = 0
    messages: int = 0            # data messages handed on as SIP
    continued: int = 0           # of them, joined from continuation frames
    control_frames: int = 0      # close, ping, pong: skipped
    keepalives: int = 0          # empty or blank data messages
    bad_opcodes: int = 0
    reserved_bits: int = 0       # RSV2/RSV3 set (no extension defines them for SIP)
    compressed: int = 0          # messages with RSV1 (permessage-deflate, RFC 7692): inflated
    inflate_errors: int = 0      # of them, not inflatable (a gap lost the window; corrupt): skipped
    bad_control: int = 0         # a control frame without FIN or over 125 bytes
    masked_from_server: int = 0  # legal to see, against §5.1
    unmasked_from_client: int = 0
    stray_continuations: int = 0  # a continuation with no message begun
    interrupted: int = 0         # a message begun while another was unfinished: the first is lost
    too_large: int = 0           # a message over the limit: skipped as it passes
    bad_lengths: int = 0         # a 64-bit length with its top bit set: framing lost
    resyncs: int = 0             # framing found again (after a gap, a join, a bad length)
    skipped_bytes: int = 0


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR with the repeated 4-byte key (§5.3), as one big-integer operation."""
    n = len(payload)
    if not n:
        return b""
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


@dataclass(frozen=True, slots=True)
class FrameHeader:
    fin: bool
    rsv: int
    opcode: int
    mask: bytes | None
    length: int  # -1: the 64-bit form with its top bit set
    size: int    # of the header


def parse_header(buffer: bytes | bytearray, start: int) -> FrameHeader | None:
    """The frame header at ``start``; None while it is not all in."""
    have = len(buffer) - start
    if have < 2:
        return None
    b0, b1 = buffer[start], buffer[start + 1]
    length, size = b1 & _LEN7, 2
    if length == 126:
        if have < 4:
            return None
        length, size = int.from_bytes(buffer[start + 2:start + 4], "big"), 4
    elif length == 127:
        if have < 10:
            return None
        length, size = int.from_bytes(buffer[start + 2:start + 10], "big"), 10
        if length >> 63:
            length = -1
    mask = None
    if b1 & _MASKED:
        if have < size + 4:
            return None
        mask = bytes(buffer[start + size:start + size + 4])
        size += 4
    return FrameHeader(bool(b0 & _FIN), b0 & (_RSV1 | _RSV23), b0 & _OPCODE, mask, length, size)


class LostTail(Protocol):
    """A gap the stream gave up (userspace.tcp): the message running out of it is
    counted lost once, by its tail."""

    def count_tail(self, stats: Any) -> None: ...


class WebSocketFramer:
    """Bytes of one direction in order → SIP messages. The interface userspace.tcp's
    stream reassembly uses: ``buffer``, ``frame``, ``partial``, ``resync``, ``cut``."""

    __slots__ = ("_compressed", "_discard", "_dropping", "_framed", "_frames", "_head_bytes", "_header",
                 "_inflater", "_parts", "_scan", "_size", "buffer", "cut", "fallback", "phase", "resync",
                 "role", "stats", "ws")

    def __init__(self, stats: object, ws: WebSocketStats, resync: bool = False,
                 role: Role = Role.UNKNOWN, fallback: bool = False) -> None:
        """``stats``: the stream's TcpStats (only held, for the interface); ``resync``: the
        data does not begin at the connection's start (a join, past a gap); ``fallback``:
        taken for WebSocket by its first bytes alone (not a WebSocket port), so a direction
        that turns out to be no upgrade stops at NOT_WEBSOCKET, its bytes kept, for its
        owner to frame as SIP — never skipped to its end."""
        self.fallback = fallback
        self._head_bytes = 0       # HTTP heads (and bodies) followed so far: MAX_HANDSHAKE in all
        self._framed = False       # a frame seen since the last handshake head
        self.buffer = bytearray()
        self.stats = stats
        self.ws = ws
        self.cut: LostTail | None = None  # begins past this gap, inside a message not yet counted
        self.resync = resync
        self.role = role
        self.phase = Phase.RESYNC if resync else Phase.HANDSHAKE
        self._discard = 0          # bytes of a skipped frame still to come
        self._dropping = False     # continuations of a skipped message still to come
        # the message being joined, one bytearray: a list of parts would hold ~40 bytes of
        # object per frame that its size never counts (an empty frame adds only that)
        self._parts: bytearray | None = None
        self._size = 0             # its bytes so far
        self._frames = 0           # its frames so far (MAX_MESSAGE_FRAMES)
        self._scan = 0             # where the search (handshake end, resync) resumes
        # the header of the frame at the front, parsed once while its payload comes in
        self._header: FrameHeader | None = None
        self._compressed = False   # the message being joined is deflated
        # permessage-deflate: one per direction, its window kept across messages (context takeover)
        self._inflater: zlib._Decompress | None = None

    def __len__(self) -> int:
        """Bytes held: the buffer and the message being joined (what its stream is charged)."""
        return len(self.buffer) + self._size

    @property
    def charge(self) -> int:
        """Memory held for its stream: bytes, and an inflater while there is one."""
        return len(self) + (INFLATER_CHARGE if self._inflater is not None else 0)

    def clear(self) -> None:
        """Everything held thrown away (the caller counts it)."""
        self.buffer.clear()
        self._parts, self._size, self._frames, self._dropping, self._discard = None, 0, 0, False, 0
        self._header, self._inflater = None, None

    @property
    def partial(self) -> bool:
        """Holds the beginning of a message (throwing it away loses one)."""
        return self.phase == Phase.FRAMES and (self._parts is not None or bool(self.buffer))

    def frame(self, max_message: int) -> list[bytes]:
        messages: list[bytes] = []
        buffer = self.buffer
        start = 0
        while start < len(buffer):
            if self._discard:
                n = min(self._discard, len(buffer) - start)
                self._discard -= n
                self.ws.skipped_bytes += n
                start += n
                continue
            phase = self.phase
            end: int | None
            if phase == Phase.FRAMES:
                end = self._control_run(start)
                if end == start:
                    end = self._frame_at(start, max_message, messages)
            elif phase == Phase.HANDSHAKE:
                end = self._handshake(start)
            elif phase == Phase.RESYNC:
                end = self._resynchronise(start, max_message)
            else:
                self.ws.skipped_bytes += len(buffer) - start
                end = len(buffer)
            if end is None or self.phase == Phase.NOT_WEBSOCKET:
                break
            start = end
        if start:
            del buffer[:start]
            self._scan = max(0, self._scan - start)
        return messages

    # -- phases --------------------------------------------------------------------

    def _handshake(self, start: int) -> int | None:
        """Past the upgrade request or its 101 response; None while its head is not all in.
        A response other than 101 (a 401 asking for credentials, then the retried upgrade's
        101) is followed past, MAX_HANDSHAKE bytes of heads in all."""
        buffer = self.buffer
        head_end = buffer.find(b"\r\n\r\n", max(start, self._scan))
        if head_end < 0:
            self._scan = max(start, len(buffer) - 3)  # "\r\n\r" may end it
            if self._head_bytes + len(buffer) - start <= MAX_HANDSHAKE and (
                    _could_begin(buffer, start, b"GET ") or _could_begin(buffer, start, b"HTTP/1.")):
                return None
            return self._not_websocket(start)
        head = bytes(buffer[start:head_end])
        self._head_bytes += head_end + 4 - start
        if self._head_bytes > MAX_HANDSHAKE:
            return self._not_websocket(start)
        if head.startswith(b"GET ") and _UPGRADE.search(head):
            self.role = Role.CLIENT
        elif head.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
            self.role = Role.SERVER
        elif head.startswith(b"HTTP/1.") and self.role != Role.CLIENT:
            return self._other_response(start, head, head_end + 4)
        else:
            return self._not_websocket(start)
        self.ws.handshakes += 1
        self._framed = False
        if not _offers_sip(head):
            self.ws.other_protocols += 1
            self.phase = Phase.GIVEN_UP
            return head_end + 4
        self.phase = Phase.FRAMES
        return head_end + 4

    def _other_response(self, start: int, head: bytes, end: int) -> int | None:
        """Past a response that is no 101 and its body: the next may be (RFC 6455 §4.1 lets
        a client retry with credentials on the same connection)."""
        length = _CONTENT_LENGTH.search(head)
        body = int(length.group(1)) if length else 0
        self._head_bytes += body
        if self._head_bytes > MAX_HANDSHAKE:
            return self._not_websocket(start)
        self._discard = body
        self._scan = 0
        self.ws.skipped_bytes += end - start
        return end

    def _not_websocket(self, start: int) -> int | None:
        self.ws.not_websocket += 1
        if self.fallback:
            # Found by its first bytes alone on a SIP port: a sender's own plain HTTP, or
            # a forged SYN's, must not hide the SIP that follows. Its owner frames it as SIP.
            self.phase = Phase.NOT_WEBSOCKET
            return None
        self.phase = Phase.GIVEN_UP
        self.ws.skipped_bytes += len(self.buffer) - start
        return len(self.buffer)

    def _resynchronise(self, start: int, max_message: int) -> int | None:
        """Past bytes that cannot begin a frame holding a SIP message's start; None
        while the next candidate is not all in."""
        buffer = self.buffer
        for match in _DATA_START.finditer(buffer, max(start, self._scan)):
            at = match.start()
            header = parse_header(buffer, at)
            if header is None or len(buffer) - at < header.size + _START_PEEK:
                self._scan = at
                return self._skipped(start, at)  # wait for more there
            # A length over the limit is never a frame to lock onto: a fake 2^46 one in a
            # message body would otherwise skip the direction's next 64 TiB.
            if header.length < _START_PEEK or header.length > max_message or header.rsv & _RSV23:
                continue
            verdict = self._begins_sip(header, at)
            after = at + header.size + header.length
            if verdict == _REFERS_BACK and len(buffer) < after + 2:
                verdict = None  # random bytes refer back too: only a next frame header tells
            if verdict is None:
                self._scan = at
                return self._skipped(start, at)  # a deflated payload needs more bytes to tell
            if verdict and _next_plausible(buffer, after, header, max_message):
                self.ws.resyncs += 1
                self.phase = Phase.FRAMES
                self.resync = False
                self._scan = 0
                self._inflater = None  # a deflated direction starts a fresh window here
                self._skipped(start, at)
                self.cut = None  # framing resumed at a message's start: the gap took it whole
                return at
        keep = max(start, len(buffer) - MAX_HEADER - _START_PEEK)
        self._scan = keep
        return self._skipped(start, keep)

    def _begins_sip(self, header: FrameHeader, at: int) -> int | None:
        """_BEGINS_SIP when the frame at ``at`` begins a SIP message, _REFERS_BACK when it is
        deflated and refers back into a window never seen, else 0; None while a deflated
        one has not inflated far enough to tell."""
        buffer = self.buffer
        first = at + header.size
        end = first + header.length
        if not header.rsv:
            peek = bytes(buffer[first:first + _START_PEEK])
            if header.mask is not None:
                peek = unmask(peek, header.mask)
            return _BEGINS_SIP if _KNOWN_START.match(peek) else 0
        # permessage-deflate: a fresh inflater over what is in of its payload. A peer that
        # resets its window per message (no context takeover) inflates here; one that keeps
        # it refers back into messages the capture missed, and zlib says so at once: the
        # frame is still a message's start, and its inflate error is counted when it ends.
        whole = len(buffer) >= end
        payload = bytes(buffer[first:min(end, len(buffer))])
        if header.mask is not None:
            payload = unmask(payload, header.mask)
        try:
            peek = zlib.decompressobj(-zlib.MAX_WBITS).decompress(
                payload + _DEFLATE_TAIL if whole else payload, _START_PEEK)
        except zlib.error as error:
            return _REFERS_BACK if _FAR_BACK in str(error) else 0
        if len(peek) >= _START_PEEK:
            return _BEGINS_SIP if _KNOWN_START.match(peek) else 0
        return 0 if whole else None

    def _skipped(self, start: int, end: int) -> int | None:
        """Bytes up to ``end`` thrown away; None when there were none. Past a gap (``cut``),
        the first are the tail of the message whose head the gap took: counted lost."""
        if end <= start:
            return None
        self.ws.skipped_bytes += end - start
        if self.cut is not None:
            self.cut.count_tail(self.stats)
            self.cut = None
        return end

    def _control_run(self, start: int) -> int:
        """Past a run of whole, well-formed control frames (ping, pong, close) at ``start``,
        counted as _frame_at counts them. Segments full of 2-byte pings cost a FrameHeader
        and a pass through the frame loop each otherwise: ~30x SIP over TCP per byte."""
        buffer, ws, role = self.buffer, self.ws, self.role
        end, at = len(buffer), start
        while at + 2 <= end:
            b0, b1 = buffer[at], buffer[at + 1]
            length = b1 & _LEN7
            if b0 not in _FAST_CONTROL or length > MAX_CONTROL_PAYLOAD:
                break
            masked = b1 & _MASKED
            after = at + 2 + length + (4 if masked else 0)
            if after > end:
                break
            ws.frames += 1
            ws.control_frames += 1
            if masked:
                if role == Role.SERVER:
                    ws.masked_from_server += 1
            elif role == Role.CLIENT:
                ws.unmasked_from_client += 1
            at = after
        if at != start:
            self._framed = True
            self._header = None  # a cached header was of the frame just passed
        return at

    def _frame_at(self, start: int, max_message: int, messages: list[bytes]) -> int | None:
        """Past the frame at ``start``, its message (if it ends one) in ``messages``;
        None while the frame is not all in."""
        # the client's next upgrade, when its first was answered other than 101
        if not self._framed and self.role == Role.CLIENT and _could_begin(self.buffer, start, b"GET "):
            if len(self.buffer) - start < 4:
                return None
            self.phase = Phase.HANDSHAKE
            return start
        header = self._header if start == 0 else None
        if header is None:
            header = parse_header(self.buffer, start)
            if header is None:
                return None
        self._header = None
        ws = self.ws
        if header.length < 0:
            ws.bad_lengths += 1
            self._lose_message()
            self.phase = Phase.RESYNC
            ws.skipped_bytes += 2
            return start + 2  # the boundary is lost: search on past this header's start
        opcode = header.opcode
        end = start + header.size + header.length
        if len(self.buffer) < end and self._kept(header, max_message):
            self._header = header  # at the front once frame() trims what came before
            return None  # nothing is counted until the frame is all in
        ws.frames += 1
        self._framed = True
        self._check_mask(header)
        if opcode in _CONTROL:
            if not header.fin or header.length > MAX_CONTROL_PAYLOAD:
                ws.bad_control += 1
            else:
                ws.control_frames += 1
            return self._skip_frame(start, header)
        if opcode != Opcode.CONTINUATION and opcode not in _DATA:
            ws.bad_opcodes += 1
            return self._skip_frame(start, header)
        return self._data_frame(start, header, max_message, messages)

    def _data_frame(self, start: int, header: FrameHeader, max_message: int, messages: list[bytes]) -> int:
        """Past a text, binary or continuation frame, all in unless it is skipped."""
        ws, opcode = self.ws, header.opcode
        if header.rsv & _RSV23 or (header.rsv and opcode == Opcode.CONTINUATION):
            ws.reserved_bits += 1
            return self._drop_message(start, header)
        if opcode == Opcode.CONTINUATION:
            if self._parts is None:
                if not self._dropping:
                    ws.stray_continuations += 1
                elif header.fin:
                    self._dropping = False
                return self._skip_frame(start, header)
        else:
            if self._parts is not None:
                ws.interrupted += 1
            self._lose_message()
            self._parts, self._size, self._frames = bytearray(), 0, 0
            self._compressed = bool(header.rsv)  # RSV1 on the first frame: deflated (RFC 7692 §6)
        self._frames += 1
        if self._size + header.length > max_message or self._frames > MAX_MESSAGE_FRAMES:
            ws.too_large += 1
            return self._drop_message(start, header)
        end = start + header.size + header.length
        payload = bytes(self.buffer[start + header.size:end])
        if header.mask is not None:
            payload = unmask(payload, header.mask)
        parts = self._parts
        assert parts is not None
        self._size += header.length
        if header.fin and self._frames == 1:
            self._deliver(payload, messages, max_message)  # one frame: no copy into parts
        else:
            parts += payload
            if header.fin:
                self._deliver(bytes(parts), messages, max_message)
        return end

    def _kept(self, header: FrameHeader, max_message: int) -> bool:
        """The frame's payload is to be held (else it is skipped as it passes)."""
        opcode = header.opcode
        if header.rsv & _RSV23:
            return False
        if opcode == Opcode.CONTINUATION:
            return not header.rsv and self._parts is not None and self._size + header.length <= max_message
        return opcode in _DATA and header.length <= max_message

    def _deliver(self, message: bytes, messages: list[bytes], max_message: int) -> None:
        ws = self.ws
        if self._frames > 1:
            ws.continued += 1
        self._parts, self._size, self._frames = None, 0, 0
        if self._compressed:
            self._compressed = False
            ws.compressed += 1
            inflated = self._inflate(message, max_message)
            if inflated is None:
                return
            message = inflated
        if message.strip():
            ws.messages += 1
            messages.append(message)
        else:
            ws.keepalives += 1

    def _inflate(self, message: bytes, max_message: int) -> bytes | None:
        """A deflated message inflated, at most ``max_message`` bytes of it; None when it
        cannot be (counted). The window lives on across messages: most peers keep it
        (context takeover), and one that resets it never refers back past a message."""
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(message + _DEFLATE_TAIL, max_message)
        except zlib.error:
            self.ws.inflate_errors += 1
            self._inflater = None  # the window is lost: a fresh one for the next message
            return None
        if inflater.unconsumed_tail:  # past the limit: a bomb, or just too big
            self.ws.too_large += 1
            self._inflater = None
            return None
        if inflater.eof:
            # The message ended its deflate stream (BFINAL, RFC 7692 §7.2.3.3 allows it):
            # the inflater takes nothing more, so the next message needs a fresh one.
            self._inflater = None
        return inflated

    def _check_mask(self, header: FrameHeader) -> None:
        if header.mask is not None:
            if self.role == Role.SERVER:
                self.ws.masked_from_server += 1
        elif self.role == Role.CLIENT:
            self.ws.unmasked_from_client += 1

    def _skip_frame(self, start: int, header: FrameHeader) -> int:
        self._discard = header.length
        return start + header.size

    def _drop_message(self, start: int, header: FrameHeader) -> int:
        """Skip this frame and the rest of its message."""
        if header.rsv & _RSV1:
            self._compressed = True
        self._lose_message()
        self._dropping = not header.fin
        return self._skip_frame(start, header)

    def _lose_message(self) -> None:
        if self._compressed:
            # The inflater's window misses this message: a fresh one, where a reference back
            # into it fails (zlib: "invalid distance too far back", counted), never misreads.
            self._inflater = None
            self._compressed = False
        if self._parts is not None:
            self.ws.skipped_bytes += self._size
        self._parts, self._size, self._frames, self._dropping = None, 0, 0, False


def _next_plausible(buffer: bytearray, at: int, header: FrameHeader, max_message: int) -> bool:
    """What follows a candidate frame found by resync could be the next frame of the
    same direction (or is not in yet): no reserved bits, a known opcode, a length it may
    have, masked as the candidate is. A frame header inside a message body rarely is."""
    if at + 2 > len(buffer):
        return True
    after = parse_header(buffer, at)
    if after is None:
        return True
    if after.rsv & _RSV23 or (after.mask is None) != (header.mask is None) or after.length < 0:
        return False
    if after.opcode in _CONTROL:
        return after.fin and after.length <= MAX_CONTROL_PAYLOAD
    if after.length > max_message:
        return False
    # a message's last frame is followed by a new message, any other by its continuation
    return after.opcode in _DATA if header.fin else after.opcode == Opcode.CONTINUATION


def _offers_sip(head: bytes) -> bool:
    """The handshake names sip among its subprotocols (RFC 7118 §4: both sides must),
    or names none (a peer that leaves it out is still given the benefit of the doubt)."""
    named = [token.strip().lower() for m in _PROTOCOL.finditer(head) for token in m.group(1).split(b",")]
    return not named or b"sip" in named


def _could_begin(buffer: bytearray, start: int, prefix: bytes) -> bool:
    """The bytes at ``start`` are ``prefix`` or, while short, its beginning."""
    head = bytes(buffer[start:start + len(prefix)])
    return prefix.startswith(head) if len(head) < len(prefix) else head == prefix


def looks_like_upgrade(data: bytes | bytearray) -> bool:
    """The first bytes of a direction are an HTTP request or response: a WebSocket
    handshake may follow (SIP never starts so, RFC 3261 §7.1)."""
    return data.startswith((b"GET ", b"HTTP/1."))
