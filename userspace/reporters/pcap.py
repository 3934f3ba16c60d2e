"""pcap and pcapng: the captured frames themselves (not reassembled), for Wireshark.

pcap: nanosecond pcap (magic 0xa1b23c4d, link type Ethernet). pcapng: a
section header, one interface description per capture interface (its name,
nanosecond timestamps), and enhanced packet blocks whose flags carry the
direction (inbound/outbound) and whose comment says it in words. Files are
rotated by size or age like the JSON lines; every file starts with its own
headers, so each one opens on its own. Frames are what the kernel copied
(up to the snaplen); each record keeps the original length.

pcap: dpkt encodes the file and record headers (dpkt.pcap.LEFileHdr,
LEPktHdr): a whole replay writing a pcap 1.09x as slow as with the
hand-written encoder, as pure Python and with set-up's mypyc build alike
(within the 10 % it may cost). dpkt.pcap.Writer is not used: it writes a
frame's captured length as its original length (a frame cut at the snaplen
would read as whole) and takes times as float seconds (a nanosecond time
of 2026 is off by up to ~120 ns as a float). A pcap record holds seconds in
32 bits: a frame stamped after 2106 is counted in ``unwritable``, not
written.

pcapng is encoded here by hand: with dpkt's block classes (an object per
block and per option) a whole replay writing pcapng was 1.09x as slow as
pure Python and 1.15x with the mypyc build (+9.2 and +4.1 us a frame; the
median of 9 paired runs of 35,000 frames; the encoder alone 2.8-4.1x:
scripts/bench/pcap_io.py, docs/BENCHMARKS.md): past the 10 % on the build
that runs. dpkt could not have said it all anyway: its EnhancedPacketBlock
writes the captured length as the original one, and dpkt.pcapng.Writer
writes microseconds and names every interface in its first bytes, where
ours are named as their first frame comes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import dpkt

from userspace.event import Direction
from userspace.records import Frame
from userspace.reporters import RotatingSink, Rotation, RotationTracker

PCAP_MAGIC_NS = dpkt.pcap.TCPDUMP_MAGIC_NANO
LINKTYPE_ETHERNET = dpkt.pcap.DLT_EN10MB
PCAP_SNAPLEN = 65_535
NS = 1_000_000_000
MAX_PCAP_SECONDS = 0xFFFFFFFF  # a pcap record's seconds field is 32 bits

# pcapng (draft-ietf-opsawg-pcapng): block types, option codes, flag bits.
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_TSRESOL = 2, 9
_EPB_FLAGS = 2
_FLAG_INBOUND, _FLAG_OUTBOUND = 0b01, 0b10
_DIRECTION_FLAGS: dict[int, tuple[int, bytes]] = {Direction.INGRESS: (_FLAG_INBOUND, b"ingress"),
                                                  Direction.EGRESS: (_FLAG_OUTBOUND, b"egress")}
_EPB_HEAD = struct.Struct("=IIIIIII")


class PcapFormat(Enum):
    PCAP = "pcap"
    PCAPNG = "pcapng"


def global_header() -> bytes:
    return bytes(dpkt.pcap.LEFileHdr(magic=PCAP_MAGIC_NS, snaplen=PCAP_SNAPLEN, linktype=LINKTYPE_ETHERNET))


def pcap_writable(frame: Frame) -> bool:
    return 0 <= frame.ts_ns // NS <= MAX_PCAP_SECONDS


def encode_frames(frames: Sequence[Frame]) -> bytes:
    """Frames a pcap can hold (see ``pcap_writable``); the caller counts the others."""
    parts: list[bytes] = []
    for frame in frames:
        if pcap_writable(frame):
            seconds, nanos = divmod(frame.ts_ns, NS)
            header = dpkt.pcap.LEPktHdr(tv_sec=seconds, tv_usec=nanos, caplen=len(frame.data),
                                        len=frame.orig_len)
            parts += (bytes(header), frame.data)
    return b"".join(parts)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("=HH", code, len(value)) + _padded(value)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("=II", block_type, total) + body + struct.pack("=I", total)


def section_header() -> bytes:
    return _block(_SHB, struct.pack("=IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _option(_OPT_END, b""))


def interface_description(name: str) -> bytes:
    options = _option(_IF_NAME, name.encode()) + _option(_IF_TSRESOL, bytes([9])) + _option(_OPT_END, b"")
    return _block(_IDB, struct.pack("=HHI", LINKTYPE_ETHERNET, 0, PCAP_SNAPLEN) + options)


def enhanced_packet(interface_id: int, frame: Frame) -> bytes:
    """Times are 64-bit nanoseconds (the interface's if_tsresol): any ``ts_ns`` fits."""
    flags, words = _DIRECTION_FLAGS[frame.direction]
    options = (_option(_EPB_FLAGS, struct.pack("=I", flags)) + _option(_OPT_COMMENT, words)
               + _option(_OPT_END, b""))
    data = _padded(frame.data)
    total = _EPB_HEAD.size + len(data) + len(options) + 4
    head = _EPB_HEAD.pack(_EPB, total, interface_id, frame.ts_ns >> 32, frame.ts_ns & 0xFFFFFFFF,
                          len(frame.data), frame.orig_len)
    return head + data + options + struct.pack("=I", total)


class FrameEncoder:
    """The bytes of one file in either format; pcapng names each interface
    once per file, before its first frame."""

    def __init__(self, file_format: PcapFormat) -> None:
        self.format = file_format
        self._interfaces: dict[str, int] = {}

    def file_header(self) -> bytes:
        self._interfaces = {}
        return global_header() if self.format is PcapFormat.PCAP else section_header()

    def unwritable(self, frames: Sequence[Frame]) -> int:
        """How many of ``frames`` this format cannot hold (``frames`` leaves them out)."""
        if self.format is PcapFormat.PCAPNG:
            return 0
        return sum(not pcap_writable(frame) for frame in frames)

    def frames(self, frames: Sequence[Frame]) -> bytes:
        if self.format is PcapFormat.PCAP:
            return encode_frames(frames)
        parts = []
        for frame in frames:
            interface_id = self._interfaces.get(frame.interface)
            if interface_id is None:
                interface_id = self._interfaces[frame.interface] = len(self._interfaces)
                parts.append(interface_description(frame.interface))
            parts.append(enhanced_packet(interface_id, frame))
        return b"".join(parts)


@dataclass(slots=True)
class PcapStats:
    frames: int = 0
    bytes: int = 0
    rotations: int = 0
    unwritable: int = 0  # stamped where the format has no room (pcap: after 2106)


class PcapReporter:
    def __init__(self, sink: RotatingSink, rotation: Rotation | None = None,
                 clock: Callable[[], float] | None = None,
                 file_format: PcapFormat = PcapFormat.PCAP) -> None:
        """``clock``: monotonic seconds, needed only for age-based rotation."""
        self._sink = sink
        self._files = RotationTracker(rotation or Rotation(), clock)
        self._encoder = FrameEncoder(file_format)
        self.stats = PcapStats()

    def write_frames(self, frames: Sequence[Frame]) -> None:
        if self._files.too_old():
            self._rotate()
        if not frames:
            return
        if self._files.file_bytes == 0:
            data = self._encoder.file_header() + self._encoder.frames(frames)
        else:
            data = self._encoder.frames(frames)
            if self._files.too_big_for(len(data)):
                self._rotate()  # the new file has its own headers and names its interfaces again
                data = self._encoder.file_header() + self._encoder.frames(frames)
        self._sink.write(data)
        self._sink.flush()
        self._files.wrote(len(data))
        unwritable = self._encoder.unwritable(frames)
        self.stats.unwritable += unwritable
        self.stats.frames += len(frames) - unwritable
        self.stats.bytes += len(data)

    def _rotate(self) -> None:
        self._sink.rotate()
        self._files.started_new_file()
        self.stats.rotations += 1

    def close(self) -> None:
        self._sink.close()
