"""A SIP-over-TLS server and client on Python's ``ssl`` (the system's libssl.so.3), for the lab.

    python -m tests.support.tls_peer server ADDRESS PORT CERT KEY
    python -m tests.support.tls_peer client ADDRESS PORT CALLS RTP_PACKETS
    python -m tests.support.tls_peer https-server ADDRESS PORT CERT KEY
    python -m tests.support.tls_peer https-client ADDRESS PORT MARKER

The client registers, then per call sends an INVITE with SDP (every other one
split over three TLS writes, so over three records), reads the server's
100, 180 and 200 — which the server writes in one call, so in one record —
sends an ACK and an in-dialog INFO (one write with the ACK: two messages in
one record), reads the INFO's 200, sends RTP to the media address the 200's
SDP announced (from 0.3 s after the answer, every 5 ms, from the port its own
offer announced; to MEDIA_BASE_PORT + 2 * call when the answer has no SDP, as
a stateless server's has not), then a BYE, and reads its 200. One connection carries all of
it. The HTTPS pair exchanges a request and a response holding MARKER: TLS
traffic that is not SIP.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)", re.I | re.M)
MEDIA_BASE_PORT = 31000  # the server announces MEDIA_BASE_PORT + 2 * call
MEDIA_START_S = 0.3


def read_message(conn: ssl.SSLSocket, pending: bytearray) -> bytes | None:
    """The next SIP message (Content-Length framing); None at the end of the stream."""
    while True:
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            length = _CONTENT_LENGTH.search(bytes(pending[:end]))
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(pending) >= total:
                message = bytes(pending[:total])
                del pending[:total]
                return message
        chunk = conn.recv(65536)
        if not chunk:
            return None
        pending += chunk


def headers(first: str, call_id: str, cseq: str, via_host: str, body: bytes = b"",
            to_tag: str = "") -> bytes:
    lines = [first, f"Via: SIP/2.0/TLS {via_host};branch=z9hG4bK-{call_id}-{cseq.split(maxsplit=1)[0]}",
             "From: <sips:alice@client.invalid>;tag=a1", f"To: <sips:bob@server.invalid>{to_tag}",
             f"Call-ID: {call_id}", f"CSeq: {cseq}", "Max-Forwards: 70",
             "Contact: <sips:alice@client.invalid>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sdp(address: str, port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def response(request: bytes, status: str, body: bytes = b"", address: str = "") -> bytes:
    """A response copying the request's Via, From, To (tagged), Call-ID and CSeq."""
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    keep = [line for line in head[1:] if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")]
    to = next(line for line in head if line.lower().startswith("to:"))
    lines = [f"SIP/2.0 {status}", *keep, to if ";tag=" in to else to + ";tag=b1"]
    if body:
        lines += ["Content-Type: application/sdp", f"Contact: <sips:bob@{address}>"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def serve(address: str, port: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server((address, port))
    print("listening", flush=True)
    while True:
        raw, _peer = listener.accept()
        threading.Thread(target=_session, args=(context.wrap_socket(raw, server_side=True), address),
                         daemon=True).start()


def _session(conn: ssl.SSLSocket, address: str) -> None:
    pending = bytearray()
    calls = 0
    with conn:
        while (message := read_message(conn, pending)) is not None:
            method = message.split(b" ", 1)[0]
            if method == b"INVITE":
                answer = sdp(address, MEDIA_BASE_PORT + 2 * calls)
                calls += 1
                conn.sendall(response(message, "100 Trying") + response(message, "180 Ringing")
                             + response(message, "200 OK", answer, address))  # one write: one record
            elif method in (b"REGISTER", b"INFO", b"BYE"):
                conn.sendall(response(message, "200 OK"))


def client(address: str, port: int, calls: int, rtp_packets: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the lab's certificate is made for the test
    local = socket.create_connection((address, port))
    with context.wrap_socket(local) as conn:
        me = conn.getsockname()[0]
        pending = bytearray()
        conn.sendall(headers("REGISTER sips:server.invalid SIP/2.0", "tls-register@client.invalid",
                             "1 REGISTER", me))
        assert read_message(conn, pending) is not None
        for call in range(calls):
            call_id = f"tls-{call}@client.invalid"
            invite = headers(f"INVITE sips:bob@{address} SIP/2.0", call_id, "1 INVITE", me,
                             sdp(me, 40000 + 2 * call))
            if call % 2:  # one message over three writes, so three TLS records
                third = len(invite) // 3
                for piece in (invite[:third], invite[third:2 * third], invite[2 * third:]):
                    conn.sendall(piece)
            else:
                conn.sendall(invite)
            answers = [read_message(conn, pending) for _ in range(3)]
            ok = answers[-1]
            assert ok is not None and ok.startswith(b"SIP/2.0 200"), answers
            announced = re.search(rb"m=audio (\d+)", ok)  # a stateless server answers without SDP
            media_port = int(announced.group(1)) if announced else MEDIA_BASE_PORT + 2 * call
            conn.sendall(headers(f"ACK sips:bob@{address} SIP/2.0", call_id, "1 ACK", me, to_tag=";tag=b1")
                         + headers(f"INFO sips:bob@{address} SIP/2.0", call_id, "2 INFO", me,
                                   to_tag=";tag=b1"))  # two messages in one write
            assert read_message(conn, pending) is not None
            time.sleep(MEDIA_START_S)  # as a phone starts its media once answered, not in the same ms
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as media:
                media.bind((me, 40000 + 2 * call))  # from the endpoint its offer announced
                for seq in range(rtp_packets):
                    header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1000 + call)
                    media.sendto(header + bytes(160), (address, media_port))
                    time.sleep(0.005)
            conn.sendall(headers(f"BYE sips:bob@{address} SIP/2.0", call_id, "3 BYE", me, to_tag=";tag=b1"))
            assert read_message(conn, pending) is not None
    print(f"done {calls} calls", flush=True)


class _Marked(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.path.encode()  # the marker, echoed back
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def https_server(address: str, port: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = HTTPServer((address, port), _Marked)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()


def https_client(address: str, port: int, marker: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection((address, port))) as conn:
        conn.sendall(f"GET /{marker} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert marker.encode() in reply, reply
    print("fetched", flush=True)


def main(argv: list[str]) -> None:
    role, address, port = argv[0], argv[1], int(argv[2])
    if role == "server":
        serve(address, port, argv[3], argv[4])
    elif role == "client":
        client(address, port, int(argv[3]), int(argv[4]))
    elif role == "https-server":
        https_server(address, port, argv[3], argv[4])
    else:
        https_client(address, port, argv[3])


if __name__ == "__main__":
    main(sys.argv[1:])
