"""The datagrams that each stopped the agent before issue 12, built once for
the unit regressions, the live lab test and the fuzz benchmark.

Each is an ordinary-looking SIP message with one unusual-but-legal or
hostile value. ``TRIGGERS`` names them; ``clock_zero_media`` is where the
clock-0 stream's RTP must go.
"""

from __future__ import annotations

import struct

from tests.support.sip_samples import sip_message

CALLER, CALLEE = "10.77.0.1", "10.77.0.2"
CLOCK_ZERO_PORT = 31000  # where the clock-0 call's callee says its media goes


def sdp(*lines: str, address: str = CALLER) -> bytes:
    head = ["v=0", f"o=- 1 1 IN IP4 {address}", "s=-", "t=0 0"]
    return ("\r\n".join([*head, *lines]) + "\r\n").encode()


def invite(call_id: str, body: bytes = b"", *, content_length: str | None = None,
           extra: tuple[str, ...] = ()) -> bytes:
    """An INVITE from CALLER; ``content_length`` replaces the true value when given."""
    headers = [f"Via: SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK-{call_id}", "Max-Forwards: 70",
               f"From: <sip:alice@{CALLER}>;tag=a-{call_id}", f"To: <sip:bob@{CALLEE}>",
               f"Call-ID: {call_id}", "CSeq: 1 INVITE", f"Contact: <sip:alice@{CALLER}:5060>", *extra]
    if body:
        headers.append("Content-Type: application/sdp")
    if content_length is not None:
        headers.append(f"Content-Length: {content_length}")
        return sip_message(f"INVITE sip:bob@{CALLEE} SIP/2.0", headers, body, content_length=False)
    return sip_message(f"INVITE sip:bob@{CALLEE} SIP/2.0", headers, body)


TRIGGERS: dict[str, bytes] = {
    # RFC 8866 §5.7 allows a host name: it killed flow learning (ipaddress.ip_address).
    "sdp_host_name": invite("h-host", sdp("c=IN IP4 pbx.example.com", "m=audio 30000 RTP/AVP 0")),
    # str.isdigit() accepts a superscript two; int() refuses it.
    "content_length_superscript": invite("h-cl", content_length="²"),
    "sdp_port_superscript": invite("h-port", sdp(f"c=IN IP4 {CALLER}", "m=audio ² RTP/AVP 0")),
    "sdp_payload_type_superscript": invite("h-pt", sdp(f"c=IN IP4 {CALLER}", "m=audio 30010 RTP/AVP ²")),
    "sdp_rtpmap_superscript": invite("h-map", sdp(f"c=IN IP4 {CALLER}", "m=audio 30020 RTP/AVP 0",
                                                  "a=rtpmap:² PCMU/8000")),
    "sdp_rtcp_superscript": invite("h-rtcp", sdp(f"c=IN IP4 {CALLER}", "m=audio 30030 RTP/AVP 0",
                                                 "a=rtcp:²")),
    "sdp_clock_superscript": invite("h-clk", sdp(f"c=IN IP4 {CALLER}", "m=audio 30040 RTP/AVP 0",
                                                 "a=rtpmap:0 PCMU/²")),
    # RTCP on port + 1 = 65536 broke the flow key pack.
    "sdp_port_65535": invite("h-65535", sdp(f"c=IN IP4 {CALLER}", "m=audio 65535 RTP/AVP 0")),
    # A clock rate of 0 divided by zero once RTP arrived (clock_zero_media).
    "sdp_clock_zero": invite("h-clock0", sdp(f"c=IN IP4 {CALLEE}", f"m=audio {CLOCK_ZERO_PORT} RTP/AVP 0",
                                             "a=rtpmap:0 PCMU/0", address=CALLEE)),
    # Rich markup and a terminal escape in a Call-ID froze the live view / reached the terminal.
    "call_id_markup": invite("[/]"),
    "call_id_escape": invite("esc\x1b]0;owned\x07\x1b[2J-call"),
}


def clock_zero_media() -> tuple[str, int]:
    return CALLEE, CLOCK_ZERO_PORT


def rtp_packet(seq: int, ssrc: int, payload_type: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq & 0xFFFF, seq * 160, ssrc) + b"\xd5" * 160


def flow_flood(calls: int, streams: int = 16, first_port: int = 20000) -> list[bytes]:
    """INVITEs announcing ``streams`` media lines each, every call at an address of
    its own in 10.200.0.0/16: 2 x streams new endpoints a call (RTP and RTCP)."""
    messages = []
    for n in range(calls):
        lines = [f"c=IN IP4 10.200.{n >> 8 & 0xFF}.{n & 0xFF}"]
        lines += [f"m=audio {first_port + 2 * i} RTP/AVP 0" for i in range(streams)]
        messages.append(invite(f"flood-{n}", sdp(*lines)))
    return messages
