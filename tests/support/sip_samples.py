"""SIP messages for tests, built with \\r\\n line ends and a true Content-Length."""

from __future__ import annotations


def sip_message(start_line: str, headers: list[str], body: bytes = b"",
                content_length: bool = True) -> bytes:
    lines = [start_line, *headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SDP = b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n" \
      b"t=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

INVITE = sip_message("INVITE sip:bob@biloxi.example.com SIP/2.0", [
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
    "Content-Type: application/sdp",
], SDP)

OK_200 = sip_message("SIP/2.0 200 OK", [
    "Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bKnashds8;received=192.0.2.3",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
])

# RFC 3261 §7.3.3 compact forms and a folded header (§7.3.1).
COMPACT_BYE = (
    b"BYE sip:alice@pc33.atlanta.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKnashds10\r\n"
    b"f: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"t: Alice <sip:alice@atlanta.example.com>\r\n"
    b"  ;tag=1928301774\r\n"
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 231 BYE\r\n"
    b"l: 0\r\n\r\n"
)


def request(method: str, n: int = 1, extra: list[str] | None = None) -> bytes:
    """A request of ``method``, its transaction and call numbered ``n`` (an OPTIONS ping, a NOTIFY)."""
    return sip_message(f"{method} sip:core@10.1.0.2 SIP/2.0", [
        f"Via: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK-{method.lower()}-{n}",
        "Max-Forwards: 70",
        "To: <sip:core@10.1.0.2>",
        f"From: <sip:edge@10.1.0.1>;tag=edge-{n}",
        f"Call-ID: {method.lower()}-{n}@10.1.0.1",
        f"CSeq: {n} {method}",
        *(extra or []),
    ])


def response(status: str, method: str, n: int = 1, cseq_line: str | None = None,
             before_cseq: list[str] | None = None) -> bytes:
    """The answer ``status`` ("200 OK") to ``request(method, n)``; ``cseq_line`` replaces its
    CSeq header, ``before_cseq`` are headers put ahead of it."""
    return sip_message(f"SIP/2.0 {status}", [
        f"Via: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK-{method.lower()}-{n};received=10.1.0.1",
        "To: <sip:core@10.1.0.2>;tag=core-1",
        f"From: <sip:edge@10.1.0.1>;tag=edge-{n}",
        f"Call-ID: {method.lower()}-{n}@10.1.0.1",
        *(before_cseq or []),
        cseq_line if cseq_line is not None else f"CSeq: {n} {method}",
    ])
