"""SIP trunk traffic between two hosts, written as pcap files for live load tests.

A load test replays these files with ``tcpreplay --pps=N`` onto a veth and
checks what the agent reports. The traffic is that of a busy trunk between an
SBC (``a``) and a core (``b``): many complete calls (INVITE, 100, 180, 200
with SDP, ACK, BYE, 200), interleaved so that up to ``concurrent`` dialogs
are live at once, which is what exercises the agent's per-call state.

Two transports:

* UDP, one datagram per message; a message larger than the MTU is split into
  IPv4 fragments the way a host would (``pad_invite`` makes the INVITEs that
  large on purpose, with the padding after the Call-ID so it lands in a later
  fragment than the start of the message).
* TCP, every message over one connection, with a real handshake, segments cut
  at the MSS, consistent sequence and acknowledgement numbers and a FIN
  exchange.

The frames reach a real Linux kernel on the far end of the veth, so every
IPv4 header checksum and every TCP checksum is correct; UDP checksums are 0,
which IPv4 allows and which the kernel accepts. Only the standard library is
used, and the output depends on nothing but the arguments (a seed drives every
random-looking identifier), so a failing load test can be replayed exactly.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Literal

Endpoint = tuple[str, int]
Direction = Literal["a->b", "b->a"]
Message = tuple[Direction, bytes]

SBC: Endpoint = ("10.77.0.1", 5060)
CORE: Endpoint = ("10.77.0.2", 5060)
TCP_CLIENT: Endpoint = ("10.77.0.1", 40000)  # the SBC's ephemeral port for its connection to the core
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")

MESSAGES_PER_CALL = 7
USER_AGENT = "otus-trunk-gen/1.0"
PAD_HEADER = b"X-Pad: "            # plus the filler and CRLF: the smallest padding is this + 2 bytes
RTP_PORT_A, RTP_PORT_B = 16384, 40000
RTP_PORTS_PER_SIDE = 12000          # even ports from each base: distinct for this many calls

UDP_PROTO, TCP_PROTO = 17, 6
ETH_IPV4 = 0x0800
IPV4_HEADER = 20
UDP_HEADER = 8
IP_MF = 0x2000
TCP_FIN, TCP_SYN, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x08, 0x10
PCAP_MAGIC, LINKTYPE_ETHERNET, SNAPLEN = 0xA1B2C3D4, 1, 65535
START_S = 1_700_000_000             # a fixed capture time keeps the files byte-identical


# --- SIP -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """Everything that makes one call's messages unique."""

    n: int
    call_id: str
    from_tag: str
    to_tag: str
    branches: tuple[str, str, str]   # INVITE, ACK and BYE: one per transaction
    rtp_a: int
    rtp_b: int


def new_call(n: int, rng: random.Random, a: Endpoint) -> Call:
    def token() -> str:
        return f"{rng.getrandbits(48):012x}"

    # The call number in each identifier keeps them distinct even if two random parts collide.
    slot = 2 * (n % RTP_PORTS_PER_SIDE)
    return Call(n=n, call_id=f"trunk-{n}-{token()}@{a[0]}", from_tag=f"{n}a{token()}",
                to_tag=f"{n}b{token()}",
                branches=(f"z9hG4bK-{n}-i-{token()}", f"z9hG4bK-{n}-a-{token()}", f"z9hG4bK-{n}-b-{token()}"),
                rtp_a=RTP_PORT_A + slot, rtp_b=RTP_PORT_B + slot)


def sdp(address: str, port: int, session: int) -> bytes:
    lines = ["v=0", f"o=- {session} 1 IN IP4 {address}", "s=-", f"c=IN IP4 {address}", "t=0 0",
             f"m=audio {port} RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
             "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def sip(start_line: str, headers: list[str], body: bytes = b"") -> bytes:
    """A message with Content-Length computed from the body's bytes (CRLF line ends)."""
    tail = ["Content-Type: application/sdp"] if body else []
    tail += [f"User-Agent: {USER_AGENT}", f"Content-Length: {len(body)}"]
    return ("\r\n".join([start_line, *headers, *tail]) + "\r\n\r\n").encode() + body


def padding(size: int) -> list[str]:
    """An X-Pad header line that adds exactly ``size`` bytes (CRLF included) to a message."""
    if size == 0:
        return []
    filler = size - len(PAD_HEADER) - 2
    if filler < 0:
        raise ValueError(f"pad_invite must be 0 or at least {len(PAD_HEADER) + 2}, not {size}")
    return [PAD_HEADER.decode() + "x" * filler]


def call_messages(call: Call, a: Endpoint, b: Endpoint, transport: str = "UDP",
                  pad_invite: int = 0) -> list[Message]:
    """The seven messages of one call, in the order they are sent."""
    a_uri, b_uri = f"sip:sbc@{a[0]}:{a[1]}", f"sip:core@{b[0]}:{b[1]}"
    from_ = f"From: <sip:+1555{call.n:07d}@{a[0]}>;tag={call.from_tag}"
    to = f"To: <sip:+1666{call.n:07d}@{b[0]}>"
    to_tagged = f"{to};tag={call.to_tag}"
    via = [f"Via: SIP/2.0/{transport} {a[0]}:{a[1]};branch={branch}" for branch in call.branches]
    cid = f"Call-ID: {call.call_id}"
    ruri = f"sip:+1666{call.n:07d}@{b[0]}:{b[1]}"

    def request(method: str, uri: str, via_: str, to_: str, cseq: int, extra: list[str], body: bytes = b""
                ) -> bytes:
        return sip(f"{method} {uri} SIP/2.0", [via_, "Max-Forwards: 70", from_, to_, cid, *extra,
                                               f"CSeq: {cseq} {method}", f"Contact: <{a_uri}>"], body)

    def reply(status: str, via_: str, to_: str, cseq: str, extra: list[str], body: bytes = b"") -> bytes:
        return sip(f"SIP/2.0 {status}", [via_, from_, to_, cid, f"CSeq: {cseq}", *extra], body)

    contact_b = [f"Contact: <{b_uri}>"]
    return [
        ("a->b", request("INVITE", ruri, via[0], to, 1, padding(pad_invite), sdp(a[0], call.rtp_a, call.n))),
        ("b->a", reply("100 Trying", via[0], to, "1 INVITE", [])),
        ("b->a", reply("180 Ringing", via[0], to_tagged, "1 INVITE", contact_b)),
        ("b->a", reply("200 OK", via[0], to_tagged, "1 INVITE", contact_b, sdp(b[0], call.rtp_b, call.n))),
        # The ACK to a 2xx and the BYE are new transactions sent to the core's Contact: new branches.
        ("a->b", request("ACK", b_uri, via[1], to_tagged, 1, [])),
        ("a->b", request("BYE", b_uri, via[2], to_tagged, 2, [])),
        ("b->a", reply("200 OK", via[2], to_tagged, "2 BYE", [])),
    ]


def trunk_messages(calls: int, seed: int = 1, pad_invite: int = 0, concurrent: int = 100,
                   a: Endpoint = SBC, b: Endpoint = CORE, transport: str = "UDP") -> list[Message]:
    """Every message of ``calls`` calls in send order, as (direction, bytes).

    Round-robin over a window of at most ``concurrent`` live calls. Each turn
    a new call sends its INVITE if the window has room, then the call at the
    head of the queue sends its next message and goes back to the tail. One
    new call per turn fills the window gradually, so its calls are at
    different stages (a trunk carries INVITEs, ringing and BYEs of different
    calls side by side, not lockstep batches); once full, a call ending makes
    room for the next. Order within a call is kept."""
    if concurrent < 1:
        raise ValueError("concurrent must be at least 1")
    rng = random.Random(seed)
    pending = (deque(call_messages(new_call(n, rng, a), a, b, transport, pad_invite)) for n in range(calls))
    live: deque[deque[Message]] = deque()
    out: list[Message] = []
    while True:
        if len(live) < concurrent:
            for call in islice(pending, 1):
                out.append(call.popleft())
                live.append(call)
        if not live:
            return out
        call = live.popleft()
        out.append(call.popleft())
        if call:
            live.append(call)


# --- frames ----------------------------------------------------------------------------------------

def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(src: str, dst: str, proto: int, payload_len: int, ident: int, flags_offset: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, IPV4_HEADER + payload_len, ident, flags_offset, 64, proto,
                         0, socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def udp_datagram(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, UDP_HEADER + len(payload), 0) + payload  # checksum 0: none


def tcp_segment(src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int, payload: bytes = b"",
                options: bytes = b"") -> bytes:
    """A TCP segment whose checksum covers the IPv4 pseudo-header, as the receiver verifies."""
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, offset << 4, flags, 65535, 0, 0) + options
    pseudo = struct.pack("!4s4sBBH", socket.inet_aton(src[0]), socket.inet_aton(dst[0]), 0, TCP_PROTO,
                         len(header) + len(payload))
    total = checksum(pseudo + header + payload)
    return header[:16] + struct.pack("!H", total) + header[18:] + payload


def ipv4_fragments(l4: bytes, mtu: int) -> list[tuple[int, bytes]]:
    """(flags and offset field, data) per fragment; every fragment but the last
    carries a multiple of 8 bytes, since offsets count 8-byte units."""
    room = (mtu - IPV4_HEADER) // 8 * 8
    if room <= 0:
        raise ValueError(f"mtu {mtu} leaves no room for a fragment")
    return [((start // 8) | (IP_MF if start + room < len(l4) else 0), l4[start:start + room])
            for start in range(0, len(l4), room)]


@dataclass
class Wire:
    """Both hosts' addresses and the state shared by every frame of a file."""

    a: Endpoint
    b: Endpoint
    mac_a: bytes
    mac_b: bytes
    ident: int = 0

    def ends(self, direction: Direction) -> tuple[Endpoint, Endpoint, bytes, bytes]:
        if direction == "a->b":
            return self.a, self.b, self.mac_a, self.mac_b
        return self.b, self.a, self.mac_b, self.mac_a

    def frames(self, direction: Direction, proto: int, l4: bytes, mtu: int = 65535) -> list[bytes]:
        """Ethernet II frames carrying one IPv4 packet, fragmented to fit ``mtu``."""
        if IPV4_HEADER + len(l4) > 0xFFFF:
            raise ValueError(f"{len(l4)} bytes do not fit in one IPv4 datagram")
        src, dst, src_mac, dst_mac = self.ends(direction)
        # One IP ID per datagram, shared by its fragments; it repeats only after 65535 datagrams.
        self.ident = (self.ident + 1) & 0xFFFF
        eth = dst_mac + src_mac + struct.pack("!H", ETH_IPV4)
        return [eth + ipv4_header(src[0], dst[0], proto, len(data), self.ident, flags_offset) + data
                for flags_offset, data in ipv4_fragments(l4, mtu)]


class PcapWriter:
    """A classic microsecond libpcap file; frames ``gap_us`` apart (tcpreplay --pps ignores the times)."""

    def __init__(self, out: BinaryIO, gap_us: int = 100) -> None:
        self.out, self.gap_us, self.count = out, gap_us, 0
        out.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))

    def write(self, frame: bytes) -> None:
        seconds, micros = divmod(self.count * self.gap_us, 1_000_000)
        self.out.write(struct.pack("<IIII", START_S + seconds, micros, len(frame), len(frame)) + frame)
        self.count += 1


# --- files -----------------------------------------------------------------------------------------

def write_udp_pcap(path: str | Path, calls: int, seed: int = 1, pad_invite: int = 0, mtu: int = 1500,
                   concurrent: int = 100, a: Endpoint = SBC, b: Endpoint = CORE, src_mac: bytes = MAC_A,
                   dst_mac: bytes = MAC_B, gap_us: int = 100) -> int:
    """One UDP datagram per message, IPv4-fragmented above ``mtu``. ``src_mac``
    is the SBC's (a's) address, ``dst_mac`` the core's. Returns the number of
    SIP messages written."""
    messages = trunk_messages(calls, seed, pad_invite, concurrent, a, b, "UDP")
    with Path(path).open("wb") as f:
        write_udp_messages(PcapWriter(f, gap_us), Wire(a, b, src_mac, dst_mac), messages, mtu)
    return len(messages)


def write_udp_messages(pcap: PcapWriter, wire: Wire, messages: Iterable[Message], mtu: int = 65535) -> None:
    """One UDP datagram a message, IPv4-fragmented above ``mtu``."""
    for direction, payload in messages:
        src, dst, _, _ = wire.ends(direction)
        for frame in wire.frames(direction, UDP_PROTO, udp_datagram(src[1], dst[1], payload), mtu):
            pcap.write(frame)


@dataclass
class TcpSide:
    """One end's next sequence number."""

    seq: int


def write_tcp_pcap(path: str | Path, calls: int, seed: int = 1, mss: int = 1400, pad_invite: int = 0,
                   concurrent: int = 100, a: Endpoint = TCP_CLIENT, b: Endpoint = CORE,
                   src_mac: bytes = MAC_A, dst_mac: bytes = MAC_B, gap_us: int = 100) -> int:
    """Every message over one TCP connection that ``a`` opens to ``b``:
    handshake, each message in segments of at most ``mss`` bytes (PSH on the
    last), FIN from both ends. Returns the number of SIP messages written."""
    if mss < 1:
        raise ValueError("mss must be at least 1")
    messages = trunk_messages(calls, seed, pad_invite, concurrent, a, b, "TCP")
    rng = random.Random(f"tcp-{seed}")   # initial sequence numbers, apart from the SIP identifiers
    wire = Wire(a, b, src_mac, dst_mac)
    sides = {"a->b": TcpSide(rng.getrandbits(32)), "b->a": TcpSide(rng.getrandbits(32))}
    mss_option = struct.pack("!BBH", 2, 4, mss)
    peer: dict[Direction, Direction] = {"a->b": "b->a", "b->a": "a->b"}

    with Path(path).open("wb") as f:
        pcap = PcapWriter(f, gap_us)

        def send(direction: Direction, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
            me, other = sides[direction], sides[peer[direction]]
            src, dst, _, _ = wire.ends(direction)
            ack = other.seq if flags & TCP_ACK else 0
            for frame in wire.frames(direction, TCP_PROTO, tcp_segment(src, dst, me.seq, ack, flags, payload,
                                                                       options)):
                pcap.write(frame)
            # SYN and FIN each take one sequence number, data one per byte.
            me.seq = (me.seq + len(payload) + bool(flags & (TCP_SYN | TCP_FIN))) & 0xFFFFFFFF

        send("a->b", TCP_SYN, options=mss_option)
        send("b->a", TCP_SYN | TCP_ACK, options=mss_option)
        send("a->b", TCP_ACK)
        for direction, payload in messages:
            chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)]
            for i, chunk in enumerate(chunks):
                send(direction, TCP_ACK | (TCP_PSH if i == len(chunks) - 1 else 0), chunk)
        send("a->b", TCP_FIN | TCP_ACK)
        send("b->a", TCP_FIN | TCP_ACK)
        send("a->b", TCP_ACK)
    return len(messages)
