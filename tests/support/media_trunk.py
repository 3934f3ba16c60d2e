"""A trunk's calls with their RTP, as three pcap files for tcpreplay: the
calls' set-up (INVITE, 100, 180, 200 with SDP, ACK), their RTP (one stream
each, SBC to core, round-robin, every packet a new sequence number), and
their teardown (BYE, 200). Used by the live media test and by
scripts/bench/live_media.py; the SIP comes from tests/support/trunk.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tests.support.trunk import (
    CORE,
    SBC,
    UDP_HEADER,
    UDP_PROTO,
    Call,
    PcapWriter,
    Wire,
    call_messages,
    ipv4_header,
    udp_datagram,
    write_udp_messages,
)

SETUP_MESSAGES = 5      # INVITE, 100, 180, 200, ACK; then BYE, 200
RTP_PORT_A, RTP_PORT_B = 20_000, 40_000
ETH_IPV4, DONT_FRAGMENT, RTP_HEADER = 0x0800, 0x4000, 12
MIN_FRAME = 14 + 20 + UDP_HEADER + RTP_HEADER


@dataclass(frozen=True)
class MediaTrunk:
    setup: Path
    rtp: Path
    teardown: Path
    packets: int         # RTP packets in the rtp file
    per_stream: int


def trunk_calls(streams: int) -> list[Call]:
    return [Call(n, f"media-{n}@{SBC[0]}", f"{n}a", f"{n}b", (f"z9hG4bK-{n}-i", f"z9hG4bK-{n}-a",
                                                               f"z9hG4bK-{n}-b"),
                 RTP_PORT_A + 2 * n, RTP_PORT_B + 2 * n) for n in range(streams)]


def _signalling(path: Path, wire: Wire, calls: list[Call], part: slice) -> None:
    with path.open("wb") as f:
        messages = (m for call in calls for m in call_messages(call, SBC, CORE)[part])
        write_udp_messages(PcapWriter(f), wire, messages)


def _rtp(path: Path, wire: Wire, calls: list[Call], per_stream: int, frame_size: int) -> int:
    """Fixed IP id (don't fragment): each stream's headers are computed once."""
    payload = b"\xd5" * (max(MIN_FRAME, frame_size) - MIN_FRAME)
    rtp_size = RTP_HEADER + len(payload)
    ethernet = wire.mac_b + wire.mac_a + struct.pack("!H", ETH_IPV4)
    prefixes = [ethernet + ipv4_header(SBC[0], CORE[0], UDP_PROTO, UDP_HEADER + rtp_size, 0, DONT_FRAGMENT)
                + udp_datagram(call.rtp_a, call.rtp_b, bytes(rtp_size))[:UDP_HEADER] for call in calls]
    header = struct.Struct("!BBHII")
    with path.open("wb") as f:
        pcap = PcapWriter(f, gap_us=4)
        for i in range(per_stream):
            for n, prefix in enumerate(prefixes):
                pcap.write(prefix + header.pack(0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, n + 1) + payload)
    return per_stream * len(prefixes)


def write_media_trunk(workdir: Path, streams: int, per_stream: int, mac_a: bytes, mac_b: bytes,
                      frame_size: int = 74) -> MediaTrunk:
    """``mac_a``: the sender's (the SBC side), ``mac_b``: the receiver's."""
    wire = Wire(SBC, CORE, mac_a, mac_b)
    calls = trunk_calls(streams)
    files = MediaTrunk(workdir / "setup.pcap", workdir / "rtp.pcap", workdir / "teardown.pcap", 0, per_stream)
    _signalling(files.setup, wire, calls, slice(0, SETUP_MESSAGES))
    _signalling(files.teardown, wire, calls, slice(SETUP_MESSAGES, None))
    packets = _rtp(files.rtp, wire, calls, per_stream, frame_size)
    return MediaTrunk(files.setup, files.rtp, files.teardown, packets, per_stream)
