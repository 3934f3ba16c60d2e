"""WebSocket (RFC 6455) bytes for tests, benches and the lab's client and server:
the upgrade handshake for SIP (RFC 7118 §4) and frames, well-formed or not.
Written apart from userspace.websocket (nothing imported from it), so that the
parser is checked against a second reading of the RFC, not against itself."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from enum import IntEnum

from tests.support.sip_samples import INVITE, OK_200

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class Opcode(IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


def unmask(payload: bytes, mask: bytes) -> bytes:
    """Masking and unmasking are the same XOR (§5.3)."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_header(buffer: bytes | bytearray) -> tuple[bool, int, bytes | None, int, int, bool] | None:
    """(fin, opcode, mask, payload length, header size, RSV1) of the frame at the front;
    None while it is not all in."""
    if len(buffer) < 2:
        return None
    n, size = buffer[1] & 0x7F, 2
    if n >= 126:
        width = 2 if n == 126 else 8
        if len(buffer) < 2 + width:
            return None
        n, size = int.from_bytes(buffer[2:2 + width], "big"), 2 + width
    mask = None
    if buffer[1] & 0x80:
        if len(buffer) < size + 4:
            return None
        mask, size = bytes(buffer[size:size + 4]), size + 4
    return bool(buffer[0] & 0x80), buffer[0] & 0x0F, mask, n, size, bool(buffer[0] & 0x40)


def upgrade_request(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==", host: str = "sip.example.com",
                    deflate: bool = False) -> bytes:
    """``deflate``: offer permessage-deflate (RFC 7692), as browsers do."""
    offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    return (f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Protocol: sip\r\n{offer}"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def upgrade_response(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\nSec-WebSocket-Protocol: sip\r\n\r\n")


def frame(payload: bytes, opcode: int = Opcode.TEXT, fin: bool = True, mask: bytes | None = None,
          rsv: int = 0, length: int | None = None) -> bytes:
    """One frame; ``mask`` (4 bytes) masks it as a client must; ``length`` overrides the
    length field (a hostile frame), in the 64-bit form when over 65,535 or negative
    (top bit set)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask is not None else 0
    if n < 0:
        header = bytes((b0, m | 127)) + (n & (2**64 - 1)).to_bytes(8, "big")
    elif n < 126:
        header = bytes((b0, m | n))
    elif n < 65536:
        header = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return header + payload
    return header + mask + unmask(payload, mask)


def client_frame(payload: bytes, opcode: int = Opcode.TEXT, fin: bool = True) -> bytes:
    return frame(payload, opcode, fin, mask=os.urandom(4))


def fragments(payload: bytes, pieces: int, mask: bool, opcode: int = Opcode.TEXT,
              rng: random.Random | None = None) -> bytes:
    """One message in ``pieces`` frames: the first of ``opcode``, then continuations;
    masking keys from ``rng`` when given (a reproducible stream), else random."""
    size = -(-len(payload) // pieces)
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
    out = b""
    for i, chunk in enumerate(chunks):
        out += frame(chunk, opcode if i == 0 else Opcode.CONTINUATION, i == len(chunks) - 1,
                     (rng.randbytes(4) if rng else os.urandom(4)) if mask else None)
    return out


def mutated_stream(rng: random.Random, sips: tuple[bytes, ...] = (INVITE, OK_200)) -> bytes:
    """A WebSocket direction (its handshake, frames of SIP messages, hostile frames), then
    bytes flipped, cut out or repeated."""
    parts = [upgrade_request() if rng.random() < 0.5 else upgrade_response()]
    for _ in range(rng.randint(1, 12)):
        payload = rng.choice((*sips, b"", b"\r\n", bytes(rng.randbytes(rng.randint(0, 300)))))
        kind = rng.random()
        if kind < 0.4:
            parts.append(frame(payload, mask=rng.randbytes(4) if rng.random() < 0.5 else None))
        elif kind < 0.6:
            parts.append(fragments(payload or b"x", rng.randint(1, 5), rng.random() < 0.5, rng=rng))
        else:
            parts.append(frame(payload, opcode=rng.randrange(16), fin=rng.random() < 0.7,
                               rsv=rng.choice((0, 0, 0x10, 0x20, 0x40)),
                               length=rng.choice((None, None, 0, 125, 126, 65536, 1 << 40, -1)),
                               mask=rng.randbytes(4) if rng.random() < 0.5 else None))
    data = bytearray(b"".join(parts))
    for _ in range(rng.randint(0, 4)):
        if not data:
            break
        at = rng.randrange(len(data))
        choice = rng.random()
        if choice < 0.4:
            data[at] = rng.randrange(256)
        elif choice < 0.7:
            del data[at:at + rng.randint(1, 40)]
        else:
            data[at:at] = data[at:at + rng.randint(1, 40)]
    return bytes(data)
