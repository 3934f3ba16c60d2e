"""The datagrams that each stopped the agent before issue 12, built once for
the unit regressions, the live lab test and the fuzz benchmark.

Each is an ordinary-looking SIP message with one unusual-but-legal or
hostile value. ``TRIGGERS`` names them; ``clock_zero_media`` is where the
clock-0 stream's RTP must go.
"""

from __future__ import annotations

import ipaddress
import random
import struct

from otus_ebpf.kernel.abi import pack_flow_key
from otus_ebpf.kernel.flows import FlowStats, apply_each
from tests.support.frames import TCP, ethernet, ipv4, ipv6, raw, ring_record, tcp, udp
from tests.support.sip_samples import sip_message
from userspace.endpoints import FlowEvent
from userspace.event import Kind
from userspace.frame import address_text
from userspace.pipeline import Pipeline

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


# -- generated hostile calls: the property test and scripts/bench/fuzz_pipeline.py ------------

# Numbers as a hostile peer writes them: Unicode digits int() takes or refuses,
# huge, negative, signed, hex, padded, empty, and every port edge.
NUMBERS = ("0", "1", "8000", "90000", "65534", "65535", "65536", "99999", "-1", "+5", "0x10", " 12",
           "12 ", "", "\u00b2", "\u0661\u0662", "\u0663\u0660\u0660\u0660\u0660", "1e3", "08000",
           "4294967296", "9" * 40, "1_000", "NaN", "\u221e")
ADDRESSES = ("10.77.0.1", "10.77.0.2", "0.0.0.0", "::", "fd77::2", "fd77:0:0::1", "FD77::2",
             "::ffff:10.0.0.1", "pbx.example.com", "999.1.1.1", "localhost", "[::1]", "10.0.0.1/127",
             "224.2.1.1/127/3", "\u0661\u0660.\u0660.\u0660.\u0661", "x" * 300, "", "10.0.0.256")
ENCODINGS = ("PCMU", "PCMA", "telephone-event", "opus", "H264", "G729", "", "x" * 100)


def _pick(rng: random.Random, pool: tuple[str, ...]) -> str:
    return rng.choice(pool) if rng.random() < 0.8 else rng.choice(pool) + rng.choice(pool)


def hostile_sdp(rng: random.Random) -> bytes:
    lines = []
    if rng.random() < 0.9:
        lines.append(f"c=IN {rng.choice(('IP4', 'IP6', 'IP4', 'IP9'))} {_pick(rng, ADDRESSES)}")
    for _ in range(rng.choice((0, 1, 1, 2, 3, 20, 70))):
        payload_types = " ".join(_pick(rng, NUMBERS) for _ in range(rng.randrange(0, 4)))
        media = rng.choice(("audio", "video", "image"))
        lines.append(f"m={media} {_pick(rng, NUMBERS)} RTP/AVP {payload_types}")
        if rng.random() < 0.3:
            lines.append(f"c=IN IP4 {_pick(rng, ADDRESSES)}")
        if rng.random() < 0.4:
            tail = f" IN IP4 {_pick(rng, ADDRESSES)}" if rng.random() < 0.5 else ""
            lines.append(f"a=rtcp:{_pick(rng, NUMBERS)}{tail}")
        if rng.random() < 0.2:
            lines.append("a=rtcp-mux")
        for _ in range(rng.randrange(0, 3)):
            channels = f"/{_pick(rng, NUMBERS)}" if rng.random() < 0.2 else ""
            encoding = rng.choice(ENCODINGS)
            lines.append(f"a=rtpmap:{_pick(rng, NUMBERS)} {encoding}/{_pick(rng, NUMBERS)}{channels}")
    return sdp(*lines)


def hostile_call(rng: random.Random, call_id: str) -> list[tuple[bytes, bool]]:
    """(SIP payload, sent by the caller) of one call: an INVITE and maybe an answer
    with hostile SDP and hostile numbers in the headers, maybe a BYE."""
    cseq = _pick(rng, NUMBERS) if rng.random() < 0.2 else "1"
    length = _pick(rng, NUMBERS) if rng.random() < 0.1 else None
    offer = invite(call_id, hostile_sdp(rng), content_length=length, extra=())
    if cseq != "1":
        offer = offer.replace(b"CSeq: 1 INVITE", f"CSeq: {cseq} INVITE".encode())
    messages = [(offer, True)]
    if rng.random() < 0.7:
        answer_sdp = hostile_sdp(rng)
        answer = sip_message("SIP/2.0 200 OK", [
            f"Via: SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK-{call_id}", f"From: <sip:alice@{CALLER}>;tag=a",
            f"To: <sip:bob@{CALLEE}>;tag=b", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
            "Content-Type: application/sdp"], answer_sdp)
        messages.append((answer, False))
    if rng.random() < 0.6:
        bye = invite(call_id).replace(b"INVITE sip:", b"BYE sip:", 1)
        messages.append((bye.replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE"), True))
    return messages


def hostile_media(rng: random.Random) -> bytes:
    """An RTP or RTCP payload with random fields (SSRCs, sequence jumps, report blocks)."""
    if rng.random() < 0.2:
        count = rng.randrange(32)
        blocks = rng.randbytes(24 * rng.randrange(0, count + 1))
        length = rng.choice(((8 + len(blocks)) // 4 - 1, rng.randrange(1 << 16)))
        return struct.pack("!BBHI", 0x80 | count, rng.choice((200, 201, 202)), length & 0xFFFF,
                           rng.getrandbits(32)) + (rng.randbytes(20) if rng.random() < 0.5 else b"") + blocks
    header = struct.pack("!BBHII", rng.choice((0x80, 0x90, 0x40)), rng.randrange(256), rng.getrandbits(16),
                         rng.getrandbits(32), rng.choice((1, 2, rng.getrandbits(32))))
    return header + rng.randbytes(rng.randrange(0, 40))


class CheckedFlowTable:
    """Stands in for the kernel flow map: every endpoint a dialog asks to learn must
    pack into the kernel's key (an IP literal, a port in 1..65535), as the real
    loader does, or this raises and a strict boundary fails the run."""

    def __init__(self) -> None:
        self.learned: dict[tuple[bytes, int], str] = {}

    def learn(self, event: FlowEvent) -> None:
        address = ipaddress.ip_address(event.address)
        if address.is_unspecified or not 0 < event.port < 65536:
            raise AssertionError(f"asked to learn {address}:{event.port}")
        pack_flow_key(event.address, event.port, 17)
        self.learned[event.address, event.port] = event.call_id

    def forget(self, event: FlowEvent) -> None:
        self.learned.pop((event.address, event.port), None)


def drive_hostile(pipeline: Pipeline, table: CheckedFlowTable, stats: FlowStats, rng: random.Random,
                  calls: int, start: int = 0) -> int:
    """``calls`` generated calls through ``pipeline`` and flow learning, media to what
    was learned and to what was not, over UDP and (split into segments) TCP.
    Returns how many events were fed."""
    fed = 0
    ts = start * 1_000_000_000
    for n in range(start, start + calls):
        tcp_stream = rng.random() < 0.2
        seq = 1
        for payload, from_caller in hostile_call(rng, f"gen-{n}"):
            src, dst = (CALLER, CALLEE) if from_caller else (CALLEE, CALLER)
            ts += 1_000_000
            if tcp_stream:
                pieces = [payload[i:i + 97] for i in range(0, len(payload), 97)]
                order = list(range(len(pieces)))
                if rng.random() < 0.3:
                    rng.shuffle(order)
                frames = [ethernet(ipv4(tcp(pieces[i], seq=seq + 97 * i), proto=TCP, src=src, dst=dst))
                          for i in order]
                seq += len(payload)
            else:
                frames = [ethernet(ipv4(udp(payload), src=src, dst=dst))]
            pipeline.process([ring_record(f, ts_ns=ts) for f in frames])
            fed += len(frames)
            apply_each(pipeline.take_flow_events(), table.learn, table.forget, stats, pipeline.boundary)
        endpoints = [*list(table.learned)[-4:], (raw(CALLEE), rng.randrange(1, 65536))]
        for packed, port in endpoints:
            address = address_text(packed)
            for _ in range(rng.randrange(1, 6)):
                ts += 20_000_000
                kind = Kind.RTCP if rng.random() < 0.2 else Kind.RTP
                family = ipv6 if ":" in address else ipv4
                frame = ethernet(family(udp(hostile_media(rng), 40000, port), dst=address),
                                 ethertype=0x86DD if ":" in address else 0x0800)
                pipeline.process([ring_record(frame, ts_ns=ts, kind=kind)])
                fed += 1
        if n % 50 == 0:
            pipeline.expire(ts)
            apply_each(pipeline.take_flow_events(), table.learn, table.forget, stats, pipeline.boundary)
    return fed
