"""The frames of a pcap or pcapng file, for replay.

dpkt decodes every header and block (dpkt.pcap's file and record headers,
dpkt.pcapng's section, interface and packet blocks with their options);
this module walks the file: what a block may claim, sections, interfaces,
timestamp resolutions, and it turns every complaint, dpkt's included, into
one CaptureFileError saying where the file breaks and why.

dpkt's Reader classes are not used: neither yields a frame's original length
(records count media bytes by it); dpkt.pcapng.Reader applies the first
interface's timestamp resolution to every frame, gives no interface or
direction, does not start again at a new section, and reads a block length
under 8 as "the rest of the file"; both give times as floats (a nanosecond
time of 2026 as a float is off by up to ~120 ns).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import dpkt

from otus_ebpf.errors import SetupError
from userspace.event import Direction

# Bounds on what a file may claim: no frame is larger than the largest
# snaplen any capture tool writes, no block larger than a few frames, and
# a timestamp must fit the 64-bit nanoseconds every record carries.
MAX_FRAME = 262_144
MAX_BLOCK = 16 << 20
MAX_TS_NS = (1 << 63) - 1
NS = 1_000_000_000

_NANO_MAGICS = frozenset((dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.PMUDPCT_MAGIC_NANO))
_LITTLE_ENDIAN_MAGICS = frozenset((dpkt.pcap.PMUDPCT_MAGIC, dpkt.pcap.PMUDPCT_MAGIC_NANO,
                                   dpkt.pcap.PACPDOM_MAGIC))
_LINKTYPE_MASK = 0x0FFFFFFF  # the upper bits of a pcap link type carry FCS flags
_PCAPNG_SHB = struct.pack("<I", dpkt.pcapng.PCAPNG_BT_SHB)  # a palindrome: either byte order
_BYTE_ORDERS = {struct.pack("<I", dpkt.pcapng.BYTE_ORDER_MAGIC): "<",
                struct.pack(">I", dpkt.pcapng.BYTE_ORDER_MAGIC): ">"}
_BLOCK_START = 8    # type and total length
_BLOCK_FRAME = 12   # type, total length, and the total length again at the end
_SHB_MIN = 28
EPB_FLAGS = 2  # epb_flags (pcapng §4.3.1); dpkt has no name for it
_FLAG_DIRECTION_MASK = 0b11
_FLAG_OUTBOUND = 0b10
_UNPARSABLE = (dpkt.UnpackError, struct.error, ValueError)  # what dpkt raises on bad bytes
# Each byte order's block classes; the packet blocks with their fixed part's size.
_BLOCKS: dict[str, dict[int, Any]] = {
    "<": {dpkt.pcapng.PCAPNG_BT_SHB: dpkt.pcapng.SectionHeaderBlockLE,
          dpkt.pcapng.PCAPNG_BT_IDB: dpkt.pcapng.InterfaceDescriptionBlockLE,
          dpkt.pcapng.PCAPNG_BT_EPB: dpkt.pcapng.EnhancedPacketBlockLE,
          dpkt.pcapng.PCAPNG_BT_PB: dpkt.pcapng.PacketBlockLE},
    ">": {dpkt.pcapng.PCAPNG_BT_SHB: dpkt.pcapng.SectionHeaderBlock,
          dpkt.pcapng.PCAPNG_BT_IDB: dpkt.pcapng.InterfaceDescriptionBlock,
          dpkt.pcapng.PCAPNG_BT_EPB: dpkt.pcapng.EnhancedPacketBlock,
          dpkt.pcapng.PCAPNG_BT_PB: dpkt.pcapng.PacketBlock},
}
_PACKET_BLOCKS = {dpkt.pcapng.PCAPNG_BT_EPB: "enhanced packet block",
                  dpkt.pcapng.PCAPNG_BT_PB: "packet block"}  # the obsolete one, as dpkt reads it
_PACKET_HEAD = 32  # a packet block's fields before its data, both trailing lengths counted


class CaptureFileError(SetupError):
    """A capture file broken at ``offset``; the frames before it were replayed."""

    def __init__(self, offset: int, reason: str, path: str = "") -> None:
        named = f"{path}: " if path else ""
        super().__init__(f"{named}malformed capture file at offset {offset}: {reason}")
        self.offset, self.reason = offset, reason


@dataclass(slots=True)
class CapturedFrame:
    ts_ns: int
    data: bytes
    orig_len: int
    interface: str
    direction: Direction


@dataclass(slots=True)
class _Interface:
    name: str
    decimal: bool = True  # resolution a negative power of 10, else of 2 (pcapng §4.2, if_tsresol)
    exponent: int = 6     # microseconds by default
    offset_s: int = 0     # if_tsoffset: seconds to add to every time

    def ts_ns(self, units: int) -> int:
        if not self.decimal:
            scaled = (units * NS) >> self.exponent
        elif self.exponent <= 9:
            scaled = units * 10 ** (9 - self.exponent)
        else:
            scaled = units // 10 ** (self.exponent - 9)
        return scaled + self.offset_s * NS


class _Counted:
    """A file read with its offset kept, so every error can say where."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.offset = 0

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        self.offset += len(data)
        return data

    def exactly(self, size: int, what: str) -> bytes:
        at = self.offset
        data = self.read(size)
        if len(data) < size:
            raise CaptureFileError(at, f"the file ends inside {what} ({len(data)} of {size} bytes)")
        return data


class CaptureFile:
    """A pcap (µs or ns) or pcapng file. What is not a capture file at all
    raises SetupError here, before a frame is asked for (so nothing is opened
    for it); a broken file raises CaptureFileError from ``frames`` where it
    breaks, after the frames before it. Packets replay cannot place (of an
    interface no block described, simple packet blocks, which name none) or
    whose options dpkt cannot read are counted in ``skipped``."""

    def __init__(self, stream: BinaryIO, default_interface: str) -> None:
        self._stream = _Counted(stream)
        self._default_interface = default_interface
        self.skipped = 0
        self._head = self._stream.read(4)
        if len(self._head) < 4:
            raise SetupError("empty file: neither pcap nor pcapng")
        if self._head == _PCAPNG_SHB:
            return
        magic = struct.unpack(">I", self._head)[0]
        if magic not in dpkt.pcap.MAGIC_TO_PKT_HDR:
            raise SetupError(f"not a pcap or pcapng file (magic {self._head.hex()})")
        head = self._head + self._stream.exactly(dpkt.pcap.FileHdr.__hdr_len__ - 4, "the pcap file header")
        file_header = (dpkt.pcap.LEFileHdr if magic in _LITTLE_ENDIAN_MAGICS else dpkt.pcap.FileHdr)(head)
        if file_header.linktype & _LINKTYPE_MASK != dpkt.pcap.DLT_EN10MB:
            raise SetupError("pcap link type is not Ethernet")
        self._record = dpkt.pcap.MAGIC_TO_PKT_HDR[magic]
        self._unit_ns = 1 if magic in _NANO_MAGICS else 1_000

    def frames(self) -> Iterator[CapturedFrame]:
        if self._head == _PCAPNG_SHB:
            return self._pcapng()
        return self._pcap()

    def _pcap(self) -> Iterator[CapturedFrame]:
        stream, record, unit = self._stream, self._record, self._unit_ns
        size, limit = record.__hdr_len__, NS // unit  # fractions of a second
        interface = self._default_interface
        while True:
            at = stream.offset
            raw = stream.read(size)
            if not raw:
                return
            if len(raw) < size:
                raise CaptureFileError(at, f"the file ends inside a record header ({len(raw)} bytes)")
            header = record(raw)
            if header.caplen > MAX_FRAME or header.tv_usec >= limit:
                raise CaptureFileError(at, f"record claims {header.caplen} bytes captured, "
                                           f"timestamp fraction {header.tv_usec}")
            data = stream.exactly(header.caplen, f"the frame of the record at offset {at}")
            yield CapturedFrame(header.tv_sec * NS + header.tv_usec * unit, data, header.len, interface,
                                Direction.INGRESS)

    def _pcapng(self) -> Iterator[CapturedFrame]:
        stream = self._stream
        interfaces: list[_Interface] = []
        order, block_type, at = "<", dpkt.pcapng.PCAPNG_BT_SHB, 0
        while True:
            length_raw = stream.exactly(4, f"the block at offset {at}")
            if block_type == dpkt.pcapng.PCAPNG_BT_SHB:
                magic = stream.exactly(4, "a section header")
                if magic not in _BYTE_ORDERS:
                    raise CaptureFileError(at, f"section header with byte-order magic {magic.hex()}")
                order = _BYTE_ORDERS[magic]
                length = _block_length(at, struct.unpack(f"{order}I", length_raw)[0], _SHB_MIN)
                rest = stream.exactly(length - _BLOCK_FRAME, "a section header")
                block = _PCAPNG_SHB + length_raw + magic + rest
                _parsed(_BLOCKS[order][block_type], block, at, "section header")
                interfaces = []  # a new section names its interfaces again
            else:
                length = _block_length(at, struct.unpack(f"{order}I", length_raw)[0])
                block = (struct.pack(f"{order}I", block_type) + length_raw
                         + stream.exactly(length - _BLOCK_START, f"the block at offset {at}"))
                if block[-4:] != length_raw:
                    raise CaptureFileError(at, "block lengths at its start and end differ")
                if block_type == dpkt.pcapng.PCAPNG_BT_IDB:
                    idb = _parsed(_BLOCKS[order][block_type], block, at,
                                  f"interface description of {length - _BLOCK_FRAME} bytes")
                    interfaces.append(_interface(idb, len(interfaces), order))
                elif block_type in _PACKET_BLOCKS:
                    frame = self._packet(block_type, block, order, interfaces, at)
                    if frame is not None:
                        yield frame
                elif block_type == dpkt.pcapng.PCAPNG_BT_SPB:
                    self.skipped += 1
            at = stream.offset
            raw = stream.read(4)
            if not raw:
                return
            if len(raw) < 4:
                raise CaptureFileError(at, "the file ends inside a block type")
            block_type = struct.unpack(f"{order}I", raw)[0]

    def _packet(self, block_type: int, block: bytes, order: str, interfaces: list[_Interface],
                at: int) -> CapturedFrame | None:
        what = _PACKET_BLOCKS[block_type]
        if len(block) < _PACKET_HEAD:
            raise CaptureFileError(at, f"{what} of {len(block) - _BLOCK_FRAME} bytes")
        try:
            packet = _BLOCKS[order][block_type](block)
        except _UNPARSABLE:  # its options (the framing is checked): e.g. a comment that is not UTF-8
            self.skipped += 1
            return None
        if _PACKET_HEAD + packet.caplen > len(block) or packet.caplen > MAX_FRAME:
            raise CaptureFileError(at, f"{what} claims {packet.caplen} bytes in a block of {len(block)}")
        if packet.iface_id >= len(interfaces):
            self.skipped += 1
            return None
        interface = interfaces[packet.iface_id]
        units = (packet.ts_high << 32) | packet.ts_low
        ts_ns = interface.ts_ns(units)
        if not 0 <= ts_ns <= MAX_TS_NS:
            raise CaptureFileError(at, f"timestamp {units} units is before 1970 or past the year 2262")
        direction = Direction.INGRESS
        for option in packet.opts:
            if (option.code == EPB_FLAGS and len(option.data) == 4
                    and struct.unpack(f"{order}I", option.data)[0] & _FLAG_DIRECTION_MASK == _FLAG_OUTBOUND):
                direction = Direction.EGRESS
        return CapturedFrame(ts_ns, packet.pkt_data, packet.pkt_len, interface.name, direction)


def read_frames(stream: BinaryIO, default_interface: str) -> Iterator[CapturedFrame]:
    """The frames of a pcap or pcapng file in file order (see CaptureFile)."""
    return CaptureFile(stream, default_interface).frames()


def _block_length(at: int, length: int, minimum: int = _BLOCK_FRAME) -> int:
    if length < minimum or length % 4 or length > MAX_BLOCK:
        raise CaptureFileError(at, f"block length {length}")
    return length


def _parsed(block_class: Any, block: bytes, at: int, what: str) -> Any:
    try:
        return block_class(block)
    except _UNPARSABLE as exc:
        raise CaptureFileError(at, f"{what}: {exc or type(exc).__name__}") from None


def _interface(idb: Any, index: int, order: str) -> _Interface:
    interface = _Interface(f"if{index}")
    for option in idb.opts:
        if option.code == dpkt.pcapng.PCAPNG_OPT_IF_NAME:
            interface.name = option.data.decode("utf-8", "replace")
        elif option.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and option.data:
            interface.decimal = not option.data[0] & 0x80
            interface.exponent = option.data[0] & 0x7F
        elif option.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(option.data) == 8:
            interface.offset_s = struct.unpack(f"{order}q", option.data)[0]
    return interface
