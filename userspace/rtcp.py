"""RTCP (RFC 3550 §6.4): sender and receiver reports, read from a compound packet.

``parse_rtcp(payload)`` returns the SR/RR packets in it as ``RtcpReport``s,
with their report blocks and (SR) sender information; other packet types
(SDES, BYE, APP, XR, feedback) are walked over. A compound cut short (a
snaplen, a short datagram) keeps what is whole before the cut and says so
(``RtcpCompound.cut``). ``RtcpReport.homer_json`` gives the JSON Homer
stores for HEP payload type 5 (the field names heplify-server reads:
report_blocks[].fraction_lost, packets_lost, ia_jitter, dlsr, ...).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from userspace.errors import Malformed

RTP_VERSION = 2
RTCP_SR, RTCP_RR = 200, 201
# RFC 5761 §4: RTCP packet types 192-223 collide with no RTP payload type in use.
RTCP_TYPES = range(192, 224)
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900 to 1970
NS = 1_000_000_000
MAX_PACKETS = 32  # in one compound: more is not RTCP
_HEADER = struct.Struct("!BBHI")
_SENDER = struct.Struct("!IIIII")
_BLOCK = struct.Struct("!IIIIII")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int              # the source it reports on
    fraction_lost: int     # of 256
    cumulative_lost: int   # signed 24 bits
    highest_seq: int
    jitter: int            # in that source's clock units
    lsr: int
    dlsr: int              # 1/65536 s


@dataclass(frozen=True, slots=True)
class SenderInfo:
    ntp_seconds: int
    ntp_fraction: int
    rtp_timestamp: int
    packets: int
    octets: int


@dataclass(frozen=True, slots=True)
class RtcpReport:
    packet_type: int       # 200 SR, 201 RR
    ssrc: int              # of its sender
    blocks: tuple[ReportBlock, ...]
    sender: SenderInfo | None = None

    def homer_json(self) -> dict[str, object]:
        sender = self.sender
        return {
            "ssrc": self.ssrc, "type": self.packet_type, "report_count": len(self.blocks),
            "report_blocks": [{"source_ssrc": b.ssrc, "fraction_lost": b.fraction_lost,
                               "packets_lost": b.cumulative_lost, "highest_seq_no": b.highest_seq,
                               "ia_jitter": b.jitter, "lsr": b.lsr, "dlsr": b.dlsr} for b in self.blocks],
            "sender_information": {} if sender is None else {
                "ntp_timestamp_sec": sender.ntp_seconds,
                "ntp_timestamp_usec": sender.ntp_fraction * 1_000_000 >> 32,
                "rtp_timestamp": sender.rtp_timestamp, "packets": sender.packets, "octets": sender.octets},
        }


def is_rtcp(payload: bytes) -> bool:
    """RTP or RTCP on one port (RFC 5761 §4): RTCP's second byte is 192..223."""
    return len(payload) >= 2 and payload[1] in RTCP_TYPES


@dataclass(frozen=True, slots=True)
class RtcpCompound:
    reports: tuple[RtcpReport, ...]
    cut: bool  # it ended inside a packet (a snaplen, a short datagram) or had more than MAX_PACKETS


def parse_rtcp(payload: bytes) -> RtcpCompound:
    """The SR and RR reports of a compound. A compound cut short keeps what is
    whole before the cut (the sender info, the report blocks that fit) and says
    it was cut; only a broken structure raises Malformed."""
    reports: list[RtcpReport] = []
    offset = 0
    for _ in range(MAX_PACKETS):
        if offset + _HEADER.size > len(payload):
            return RtcpCompound(tuple(reports), cut=offset < len(payload))
        first, packet_type, words, ssrc = _HEADER.unpack_from(payload, offset)
        length = (words + 1) * 4
        if first >> 6 != RTP_VERSION:
            raise Malformed("rtcp", offset, f"version {first >> 6}")
        if packet_type in (RTCP_SR, RTCP_RR):
            if length < _HEADER.size:  # no room for the SSRC it must carry
                raise Malformed("rtcp", offset, f"report of type {packet_type} in {length} bytes")
            report = _report(payload, offset, min(offset + length, len(payload)), packet_type, first & 0x1F,
                             ssrc)
            if report is not None:
                reports.append(report)
        offset += length
        if offset > len(payload):
            return RtcpCompound(tuple(reports), cut=True)
    return RtcpCompound(tuple(reports), cut=offset < len(payload))


def _report(payload: bytes, offset: int, end: int, packet_type: int, count: int,
            ssrc: int) -> RtcpReport | None:
    """The report in payload[offset:end], with what of it is whole; None for an
    SR cut before its sender info."""
    position = offset + _HEADER.size
    sender = None
    if packet_type == RTCP_SR:
        if position + _SENDER.size > end:
            return None
        sender = SenderInfo(*_SENDER.unpack_from(payload, position))
        position += _SENDER.size
    blocks = []
    for _ in range(count):
        if position + _BLOCK.size > end:
            break
        source, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(payload, position)
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        blocks.append(ReportBlock(source, lost_word >> 24, cumulative, highest, jitter, lsr, dlsr))
        position += _BLOCK.size
    return RtcpReport(packet_type, ssrc, tuple(blocks), sender)


def round_trip_ms(block: ReportBlock, arrival_wall_ns: int) -> float | None:
    """RTT seen by the reporter's peer (RFC 3550 §6.4.1): arrival - LSR - DLSR."""
    if not block.lsr:
        return None
    seconds, rest = divmod(arrival_wall_ns, NS)
    arrival = ((seconds + NTP_UNIX_OFFSET) & 0xFFFF) << 16 | (rest * 65536 // NS)
    return round(((arrival - block.lsr - block.dlsr) & 0xFFFFFFFF) * 1000 / 65536, 3)
