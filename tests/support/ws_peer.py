"""A SIP-over-WebSocket client and server (RFC 7118) on plain sockets, for the lab.

    python -m tests.support.ws_peer server ADDRESS PORT [PORT...]
    python -m tests.support.ws_peer client ADDRESS PORT CALLS [deflate]

The server answers every upgrade with ``101`` (Sec-WebSocket-Protocol: sip),
then each INVITE with 100, 180 and 200 (the 200 split over three frames, a
pong between them) and each BYE with 200; it skips ACKs. The client masks
every frame (RFC 6455 §5.3), sends a ping first, then per call an INVITE (every
other one split over continuation frames), reads its three responses, an
ACK, a BYE and reads its 200. One connection carries all the calls. With
``deflate`` the client offers permessage-deflate (RFC 7692), the server takes
it, and both sides deflate every message, each keeping its window across
messages (context takeover), as browsers and most servers do.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import zlib

from tests.support.websocket import (
    Opcode,
    accept_key,
    frame,
    parse_header,
    unmask,
    upgrade_request,
)

_KEY = re.compile(rb"^sec-websocket-key:[ \t]*(\S+)", re.I | re.M)
_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.1


class Codec:
    """One side's messages as frames: deflated when permessage-deflate was agreed."""

    def __init__(self, deflate: bool, masked: bool) -> None:
        self.deflate, self.masked = deflate, masked
        self._compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def frames(self, message: bytes, opcode: int = Opcode.TEXT, pieces: int = 1, pong: bool = False) -> bytes:
        """The message in ``pieces`` frames (a pong after the first when ``pong``)."""
        rsv = 0
        if self.deflate:
            data = self._compressor.compress(message) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
            message, rsv = data[:-len(_TAIL)], 0x40
        size = -(-len(message) // pieces)
        chunks = [message[i:i + size] for i in range(0, len(message), size)] or [b""]
        out = b""
        for i, chunk in enumerate(chunks):
            out += frame(chunk, opcode if i == 0 else Opcode.CONTINUATION, i == len(chunks) - 1,
                         os.urandom(4) if self.masked else None, rsv if i == 0 else 0)
            if i == 0 and pong:
                out += frame(b"", Opcode.PONG, mask=os.urandom(4) if self.masked else None)
        return out

    def read(self, sock: socket.socket, pending: bytearray) -> bytes | None:
        message = read_message(sock, pending)
        if message is None or not message[1]:
            return None if message is None else message[0]
        return self._inflater.decompress(message[0] + _TAIL)


def read_head(sock: socket.socket, pending: bytearray) -> bytes:
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the handshake")
        pending += chunk
    end = pending.index(b"\r\n\r\n") + 4
    head = bytes(pending[:end])
    del pending[:end]
    return head


def read_message(sock: socket.socket, pending: bytearray) -> tuple[bytes, bool] | None:
    """The next data message and whether it is deflated (RSV1 on its first frame),
    control frames skipped; None at the end of the stream."""
    parts: list[bytes] = []
    deflated = False
    while True:
        header = parse_header(pending)
        if header is not None and len(pending) >= header[4] + header[3]:
            fin, opcode, mask, length, size, rsv1 = header
            payload = bytes(pending[size:size + length])
            del pending[:size + length]
            if mask is not None:
                payload = unmask(payload, mask)
            if opcode >= Opcode.CLOSE:
                continue
            deflated = deflated or (rsv1 and not parts)
            parts.append(payload)
            if fin:
                return b"".join(parts), deflated
            continue
        chunk = sock.recv(65536)
        if not chunk:
            return None
        pending += chunk


def response(request: bytes, status: str) -> bytes:
    """A response to ``request`` that copies its dialog headers (RFC 3261 §8.2.6.2)."""
    lines = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    kept = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower()
            in (b"via", b"from", b"to", b"call-id", b"cseq")]
    kept = [line + b";tag=ws-server" if line.lower().startswith(b"to:") and b"tag=" not in line else line
            for line in kept]
    return b"\r\n".join([f"SIP/2.0 {status}".encode(), *kept, b"Content-Length: 0"]) + b"\r\n\r\n"


def request(method: str, call: int, cseq: int, address: str, port: int, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n" \
           b"m=audio 49170 RTP/AVP 0\r\n" if method == "INVITE" else b""
    lines = [f"{method} sip:bob@{address} SIP/2.0",
             f"Via: SIP/2.0/WS client.invalid;branch=z9hG4bK-{call}-{cseq}",
             "Max-Forwards: 70", f"To: <sip:bob@{address}>{tag}",
             f"From: <sip:alice@client.invalid>;tag=alice-{call}",
             f"Call-ID: ws-{port}-{call}@client.invalid", f"CSeq: {cseq} {method}",
             "Contact: <sip:alice@client.invalid;transport=ws>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def serve_connection(conn: socket.socket) -> None:
    pending = bytearray()
    with conn:
        head = read_head(conn, pending)
        key = _KEY.search(head)
        assert key is not None, head
        deflate = b"permessage-deflate" in head
        codec = Codec(deflate, masked=False)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(key.group(1)) + b"\r\n"
                     + (b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b"")
                     + b"Sec-WebSocket-Protocol: sip\r\n\r\n")
        while (message := codec.read(conn, pending)) is not None:
            method = message.split(b" ", 1)[0]
            if method == b"INVITE":
                conn.sendall(codec.frames(response(message, "100 Trying"))
                             + codec.frames(response(message, "180 Ringing"))
                             + codec.frames(response(message, "200 OK"), pieces=3, pong=True))
            elif method == b"BYE":
                conn.sendall(codec.frames(response(message, "200 OK"), Opcode.BINARY))


def server(address: str, ports: list[int]) -> None:
    listeners = []
    for port in ports:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(16)
        listeners.append(listener)
    print("listening", flush=True)

    def accept(listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()

    threads = [threading.Thread(target=accept, args=(listener,), daemon=True) for listener in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def client(address: str, port: int, calls: int, deflate: bool) -> None:
    with socket.create_connection((address, port), timeout=10) as sock:
        pending = bytearray()
        sock.sendall(upgrade_request(host=address, deflate=deflate))
        head = read_head(sock, pending)
        assert head.startswith(b"HTTP/1.1 101"), head
        codec = Codec(b"permessage-deflate" in head, masked=True)
        sock.sendall(frame(b"hello", Opcode.PING, mask=os.urandom(4)))
        for call in range(calls):
            invite = request("INVITE", call, 1, address, port)
            sock.sendall(codec.frames(invite, pieces=3 if call % 2 else 1))
            answers = [codec.read(sock, pending) for _ in range(3)]
            assert all(a is not None and a.startswith(b"SIP/2.0 ") for a in answers), answers
            sock.sendall(codec.frames(request("ACK", call, 1, address, port, "ws-server"))
                         + codec.frames(request("BYE", call, 2, address, port, "ws-server")))
            ok = codec.read(sock, pending)
            assert ok is not None and ok.startswith(b"SIP/2.0 200"), ok
        sock.sendall(frame(b"\x03\xe8", Opcode.CLOSE, mask=os.urandom(4)))
    print(f"done {calls} calls", flush=True)


if __name__ == "__main__":
    role, host = sys.argv[1], sys.argv[2]
    if role == "server":
        server(host, [int(p) for p in sys.argv[3:]])
    else:
        client(host, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:] == ["deflate"])
