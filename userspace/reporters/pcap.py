"""pcap and pcapng: the captured frames themselves (not reassembled), for Wireshark.

pcap: nanosecond pcap (magic 0xa1b23c4d, link type Ethernet). pcapng: a
section header, one interface description per capture interface (its name,
nanosecond timestamps), and enhanced packet blocks whose flags carry the
direction (inbound/outbound) and whose comment says it in words. Files are
rotated by size or age like the JSON lines; every file starts with its own
headers, so each one opens on its own. Frames are what the kernel copied
(up to the snaplen); each record keeps the original length.

dpkt encodes the headers and blocks (dpkt.pcap's file and record headers,
dpkt.pcapng's blocks and options). Its Writer classes are not used: both
write a frame's captured length as its original length (a frame cut at the
snaplen would read as whole), take times as float seconds (a nanosecond time
of 2026 is off by up to ~120 ns as a float; dpkt.pcapng.Writer writes
microseconds), and dpkt.pcapng.Writer names every interface in its first
bytes, where ours are named as their first frame comes. dpkt's enhanced
packet block likewise sets the original length to the captured one, so
that one field is put back by hand (``_ORIGINAL_LENGTH``). A pcap record
holds seconds in 32 bits: a frame stamped after 2106 is counted in
``unwritable``, not written (pcapng holds 64-bit times).
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
# Little-endian, as dpkt's writers write on the machines this runs on; every reader takes either order.
_RECORD = dpkt.pcap.LEPktHdr
_OPTION = dpkt.pcapng.PcapngOptionLE

# pcapng (draft-ietf-opsawg-pcapng): option codes and flag bits dpkt has no name for.
_EPB_FLAGS = 2
_FLAG_INBOUND, _FLAG_OUTBOUND = 0b01, 0b10
_NANOSECONDS = 9  # if_tsresol: 10^-9 s
_ORIGINAL_LENGTH = struct.Struct("<I")  # where dpkt's EPB put the captured length a second time
_ORIGINAL_LENGTH_AT = 24


def _options(*options: tuple[int, bytes]) -> list[object]:
    return [*(_OPTION(code=code, data=value) for code, value in options),
            _OPTION(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT)]


_DIRECTION_OPTIONS: dict[int, list[object]] = {
    Direction.INGRESS: _options((_EPB_FLAGS, struct.pack("<I", _FLAG_INBOUND)),
                                (dpkt.pcapng.PCAPNG_OPT_COMMENT, b"ingress")),
    Direction.EGRESS: _options((_EPB_FLAGS, struct.pack("<I", _FLAG_OUTBOUND)),
                               (dpkt.pcapng.PCAPNG_OPT_COMMENT, b"egress")),
}


class PcapFormat(Enum):
    PCAP = "pcap"
    PCAPNG = "pcapng"


def global_header() -> bytes:
    return bytes(dpkt.pcap.LEFileHdr(magic=PCAP_MAGIC_NS, snaplen=PCAP_SNAPLEN, linktype=LINKTYPE_ETHERNET))


def pcap_writable(frame: Frame) -> bool:
    return 0 <= frame.ts_ns // NS <= MAX_PCAP_SECONDS


def encode_frames(frames: Sequence[Frame]) -> bytes:
    """Frames a pcap can hold (see ``pcap_writable``); the caller counts the others."""
    parts = []
    for frame in frames:
        if pcap_writable(frame):
            seconds, nanos = divmod(frame.ts_ns, NS)
            parts.append(bytes(_RECORD(tv_sec=seconds, tv_usec=nanos, caplen=len(frame.data),
                                       len=frame.orig_len)))
            parts.append(frame.data)
    return b"".join(parts)


def section_header() -> bytes:
    return bytes(dpkt.pcapng.SectionHeaderBlockLE(opts=_options()))


def interface_description(name: str) -> bytes:
    options = _options((dpkt.pcapng.PCAPNG_OPT_IF_NAME, name.encode()),
                       (dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL, bytes([_NANOSECONDS])))
    return bytes(dpkt.pcapng.InterfaceDescriptionBlockLE(snaplen=PCAP_SNAPLEN, opts=options))


def enhanced_packet(interface_id: int, frame: Frame) -> bytes:
    block = bytearray(bytes(dpkt.pcapng.EnhancedPacketBlockLE(
        iface_id=interface_id, ts_high=frame.ts_ns >> 32, ts_low=frame.ts_ns & 0xFFFFFFFF,
        pkt_data=frame.data, opts=_DIRECTION_OPTIONS[frame.direction])))
    _ORIGINAL_LENGTH.pack_into(block, _ORIGINAL_LENGTH_AT, frame.orig_len)
    return bytes(block)


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
