"""Scripted calls with media, as datagrams on a timeline: SIP dialogs whose
SDP offer and answer name the codecs, RTP paced every 20 ms with chosen
losses and RFC 4733 DTMF events, RTCP sender reports. The same timeline is
written as a pcap (replay tests) or sent from the lab's namespaces (live)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.frames import ethernet, ipv4, udp
from tests.support.sip_samples import sip_message

PTIME_NS = 20_000_000           # one packet every 20 ms
SAMPLES_PER_PACKET = 160        # 20 ms at 8 kHz
PCMU, PCMA, TELEPHONE_EVENT = 0, 8, 101
OFFERED = {PCMU: "PCMU/8000", PCMA: "PCMA/8000", TELEPHONE_EVENT: "telephone-event/8000"}


def sdp(address: str, port: int, formats: dict[int, str]) -> bytes:
    lines = ["v=0", f"o=- 1 1 IN IP4 {address}", "s=-", f"c=IN IP4 {address}", "t=0 0",
             f"m=audio {port} RTP/AVP {' '.join(map(str, formats))}",
             *(f"a=rtpmap:{pt} {codec}" for pt, codec in formats.items()), "a=ptime:20", "a=sendrecv"]
    if TELEPHONE_EVENT in formats:
        lines.append(f"a=fmtp:{TELEPHONE_EVENT} 0-16")
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class Party:
    address: str
    media_port: int
    user: str
    sip_port: int = 5060


@dataclass(frozen=True)
class Dialog:
    """The SIP of one call between ``caller`` and ``callee``."""

    call_id: str
    caller: Party
    callee: Party
    offer: dict[int, str]
    answer: dict[int, str]

    def _message(self, start: str, cseq: str, to_tag: bool, body: bytes = b"") -> bytes:
        headers = [f"Via: SIP/2.0/UDP {self.caller.address}:{self.caller.sip_port};branch=z9hG4bK{cseq[0]}"
                   f"{zlib.crc32(self.call_id.encode())}",
                   f'From: "Caller {self.caller.user}" <sip:{self.caller.user}@{self.caller.address}>;tag=c1',
                   f"To: <sip:{self.callee.user}@{self.callee.address}>" + (";tag=c2" if to_tag else ""),
                   f"Call-ID: {self.call_id}", f"CSeq: {cseq}", "User-Agent: otus-test/1.0"]
        if body:
            headers.append("Content-Type: application/sdp")
        return sip_message(start, headers, body)

    def invite(self) -> bytes:
        return self._message(f"INVITE sip:{self.callee.user}@{self.callee.address} SIP/2.0", "1 INVITE",
                             False, sdp(self.caller.address, self.caller.media_port, self.offer))

    def ringing(self) -> bytes:
        return self._message("SIP/2.0 180 Ringing", "1 INVITE", True)

    def ok(self) -> bytes:
        return self._message("SIP/2.0 200 OK", "1 INVITE", True,
                             sdp(self.callee.address, self.callee.media_port, self.answer))

    def ack(self) -> bytes:
        return self._message(f"ACK sip:{self.callee.user}@{self.callee.address} SIP/2.0", "1 ACK", True)

    def bye(self) -> bytes:
        return self._message(f"BYE sip:{self.callee.user}@{self.callee.address} SIP/2.0", "2 BYE", True)

    def bye_ok(self) -> bytes:
        return self._message("SIP/2.0 200 OK", "2 BYE", True)


def rtp(seq: int, timestamp: int, ssrc: int, payload_type: int, payload: bytes,
        marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF,
                       timestamp & 0xFFFFFFFF, ssrc) + payload


def dtmf_payload(digit: int, end: bool, duration: int) -> bytes:
    """RFC 4733 §2.3: event, E bit and volume, duration in timestamp units."""
    return struct.pack("!BBH", digit, (0x80 if end else 0) | 10, duration)


@dataclass
class Stream:
    """One direction of media: ``count`` packet slots from ``start_ns``, 20 ms apart.
    A slot in ``lost`` is never sent; a DTMF digit replaces the audio of ``event_slots``
    slots from its start with telephone-event packets (the last one sent three times,
    as RFC 4733 §2.5.1.4 asks)."""

    ssrc: int
    payload_type: int
    count: int
    start_ns: int
    lost: frozenset[int] = frozenset()
    dtmf: dict[int, int] = field(default_factory=dict)  # first slot -> digit
    event_slots: int = 5
    first_seq: int = 1000
    first_timestamp: int = 0

    def packets(self) -> list[tuple[int, bytes]]:
        """(capture time ns, RTP payload) of every packet sent."""
        out: list[tuple[int, bytes]] = []
        event_of: dict[int, tuple[int, int, int]] = {}  # slot -> (digit, event start slot, index)
        for first, digit in self.dtmf.items():
            for i in range(self.event_slots):
                event_of[first + i] = (digit, first, i)
        seq = self.first_seq
        for slot in range(self.count):
            ts_ns = self.start_ns + slot * PTIME_NS
            if slot in event_of:
                digit, first, i = event_of[slot]
                end = i == self.event_slots - 1
                body = dtmf_payload(digit, end, (i + 1) * SAMPLES_PER_PACKET)
                copies = 3 if end else 1
                for copy in range(copies):
                    if slot not in self.lost:
                        out.append((ts_ns + copy * 1_000, rtp(seq, self._timestamp(first), self.ssrc,
                                                      TELEPHONE_EVENT, body, marker=i == 0)))
                    seq += 1
                continue
            if slot not in self.lost:
                out.append((ts_ns, rtp(seq, self._timestamp(slot), self.ssrc, self.payload_type,
                                       b"\xd5" * SAMPLES_PER_PACKET)))
            seq += 1
        return out

    def _timestamp(self, slot: int) -> int:
        return self.first_timestamp + slot * SAMPLES_PER_PACKET

    @property
    def sent(self) -> int:
        return len(self.packets())

    @property
    def expected(self) -> int:
        return self.sent + self.lost_packets

    @property
    def lost_packets(self) -> int:
        """Sequence numbers never sent: a lost event slot loses its three end copies."""
        lost = 0
        for slot in self.lost:
            lost += 3 if any(slot == first + self.event_slots - 1 for first in self.dtmf) else 1
        return lost


def sender_report(ssrc: int, wall_ns: int, packets: int, octets: int, about: int | None = None,
                  lost: int = 0, jitter: int = 0) -> bytes:
    """An RTCP SR (RFC 3550 §6.4.1), with one report block on source ``about`` if given."""
    seconds, fraction = divmod(wall_ns, 1_000_000_000)
    ntp = ((seconds + 2_208_988_800) << 32) | (fraction << 32) // 1_000_000_000
    blocks = b"" if about is None else struct.pack("!IIIIII", about, lost & 0xFFFFFF, 1000, jitter, 0, 0)
    words = (28 + len(blocks)) // 4 - 1
    return struct.pack("!BBHIQIII", 0x80 | (0 if about is None else 1), 200, words, ssrc, ntp, 0, packets,
                       octets) + blocks


@dataclass(frozen=True)
class Datagram:
    ts_ns: int
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def media(stream: Stream, sender: Party, receiver: Party, sport: int | None = None) -> list[Datagram]:
    port = sport if sport is not None else sender.media_port
    return [Datagram(ts, sender.address, port, receiver.address, receiver.media_port, payload)
            for ts, payload in stream.packets()]


def signalling(dialog: Dialog, steps: Iterable[tuple[int, str]]) -> list[Datagram]:
    """(capture time, step name) -> the dialog's datagrams; requests from the caller."""
    out = []
    for ts, step in steps:
        data = getattr(dialog, step)()
        from_caller = step in ("invite", "ack", "bye")
        a, b = (dialog.caller, dialog.callee) if from_caller else (dialog.callee, dialog.caller)
        out.append(Datagram(ts, a.address, a.sip_port, b.address, b.sip_port, data))
    return out


NANOSECOND_PCAP_MAGIC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


def write_pcap(path: Path, datagrams: Sequence[Datagram]) -> None:
    """A nanosecond pcap of the datagrams as Ethernet frames, in time order."""
    write_pcap_in_order(path, sorted(datagrams, key=lambda d: d.ts_ns))


def write_pcap_in_order(path: Path, datagrams: Sequence[Datagram]) -> None:
    """The same in the order given (a pcap merged or edited need not be in time order).
    Written by hand: dpkt's writer takes a float timestamp, whose rounding at
    today's epoch (~0.2 us) would move arrivals across RTP clock ticks."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", NANOSECOND_PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for d in datagrams:
            frame = ethernet(ipv4(udp(d.payload, d.sport, d.dport), src=d.src, dst=d.dst))
            seconds, nanos = divmod(d.ts_ns, 1_000_000_000)
            f.write(struct.pack("<IIII", seconds, nanos, len(frame), len(frame)) + frame)
