"""The frames of a pcap or pcapng file, for replay.

pcap: dpkt decodes the file and record headers (dpkt.pcap.FileHdr and the
record header its magic calls for): a whole replay of a pcap 1.03x as
slow as with the hand-written reader as pure Python, 0.97x with set-up's
mypyc build. dpkt.pcap.Reader itself is not used: it yields neither a
frame's original length (records count media bytes by it) nor exact
nanoseconds (floats and Decimals).

pcapng is read here by hand: with dpkt's block classes (an object per block
and per option) a whole replay of a pcapng was 1.23x as slow as pure Python
and 1.29x with the mypyc build (+11.7 and +13.9 us a frame; the median of 9
paired runs of 35,000 frames; the reader alone 2.8-3.0x:
scripts/bench/pcap_io.py, docs/BENCHMARKS.md), past the 10 % a replay may
lose to it. dpkt.pcapng.Reader could not have served anyway: it applies the
first interface's timestamp resolution to every frame, gives no interface or
direction, does not start again at a new section, and reads a block length
under 8 as "the rest of the file".

Either way this module walks the file: what a record or block may claim,
sections, interfaces and their timestamp resolutions, and every complaint
is one CaptureFileError saying where the file breaks and why.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

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

# pcapng (draft-ietf-opsawg-pcapng): block types, option codes, flag bits.
_SHB, _IDB, _PB, _SPB, _EPB = 0x0A0D0D0A, 1, 2, 3, 6
_SHB_RAW = struct.pack("<I", _SHB)  # a palindrome: either byte order
_BYTE_ORDERS = {struct.pack("<I", 0x1A2B3C4D): "<", struct.pack(">I", 0x1A2B3C4D): ">"}
_OPT_END, _IF_NAME, _IF_TSRESOL, _IF_TSOFFSET, _EPB_FLAGS = 0, 2, 9, 14, 2
_FLAG_DIRECTION_MASK, _FLAG_OUTBOUND = 0b11, 0b10
_BLOCK_FRAME = 12   # type, total length, and the total length again at the end
_SHB_MIN = 28
_EPB_FIXED = 20     # interface, timestamp high and low, captured and original length


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
    interface no block described; simple and obsolete packet blocks) are
    counted in ``skipped``."""

    def __init__(self, stream: BinaryIO, default_interface: str) -> None:
        self._stream = _Counted(stream)
        self._default_interface = default_interface
        self.skipped = 0
        self._head = self._stream.read(4)
        if len(self._head) < 4:
            raise SetupError("empty file: neither pcap nor pcapng")
        if self._head == _SHB_RAW:
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
        if self._head == _SHB_RAW:
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
        order, block_type, at = "<", _SHB, 0
        while True:
            length_raw = stream.exactly(4, f"the block at offset {at}")
            if block_type == _SHB:
                magic = stream.exactly(4, "a section header")
                if magic not in _BYTE_ORDERS:
                    raise CaptureFileError(at, f"section header with byte-order magic {magic.hex()}")
                order = _BYTE_ORDERS[magic]
                length = _block_length(at, struct.unpack(f"{order}I", length_raw)[0], _SHB_MIN)
                stream.exactly(length - _BLOCK_FRAME, "a section header")
                interfaces = []  # a new section names its interfaces again
            else:
                length = _block_length(at, struct.unpack(f"{order}I", length_raw)[0])
                body = stream.exactly(length - _BLOCK_FRAME, f"the block at offset {at}")
                if stream.exactly(4, f"the block at offset {at}") != length_raw:
                    raise CaptureFileError(at, "block lengths at its start and end differ")
                if block_type == _IDB:
                    interfaces.append(_interface(body, order, len(interfaces), at))
                elif block_type == _EPB:
                    frame = self._enhanced_packet(body, order, interfaces, at)
                    if frame is not None:
                        yield frame
                elif block_type in (_PB, _SPB):
                    self.skipped += 1  # obsolete, or no interface or time to replay it by
            at = stream.offset
            raw = stream.read(4)
            if not raw:
                return
            if len(raw) < 4:
                raise CaptureFileError(at, "the file ends inside a block type")
            block_type = struct.unpack(f"{order}I", raw)[0]

    def _enhanced_packet(self, body: bytes, order: str, interfaces: list[_Interface],
                         at: int) -> CapturedFrame | None:
        if len(body) < _EPB_FIXED:
            raise CaptureFileError(at, f"enhanced packet block of {len(body)} bytes")
        interface_id, high, low, captured, original = struct.unpack_from(f"{order}IIIII", body)
        if _EPB_FIXED + captured > len(body) or captured > MAX_FRAME:
            raise CaptureFileError(at, f"enhanced packet claims {captured} bytes in a block of "
                                       f"{len(body) + _BLOCK_FRAME}")
        if interface_id >= len(interfaces):
            self.skipped += 1
            return None
        interface = interfaces[interface_id]
        units = (high << 32) | low
        ts_ns = interface.ts_ns(units)
        if not 0 <= ts_ns <= MAX_TS_NS:
            raise CaptureFileError(at, f"timestamp {units} units is before 1970 or past the year 2262")
        direction = Direction.INGRESS
        for code, value in _options(body[_EPB_FIXED + captured + (-captured % 4):], order):
            if (code == _EPB_FLAGS and len(value) == 4
                    and struct.unpack(f"{order}I", value)[0] & _FLAG_DIRECTION_MASK == _FLAG_OUTBOUND):
                direction = Direction.EGRESS
        data = body[_EPB_FIXED:_EPB_FIXED + captured]
        return CapturedFrame(ts_ns, data, original, interface.name, direction)


def read_frames(stream: BinaryIO, default_interface: str) -> Iterator[CapturedFrame]:
    """The frames of a pcap or pcapng file in file order (see CaptureFile)."""
    return CaptureFile(stream, default_interface).frames()


def _block_length(at: int, length: int, minimum: int = _BLOCK_FRAME) -> int:
    if length < minimum or length % 4 or length > MAX_BLOCK:
        raise CaptureFileError(at, f"block length {length}")
    return length


def _options(data: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        code, size = struct.unpack_from(f"{order}HH", data, offset)
        if code == _OPT_END:
            return
        yield code, data[offset + 4:offset + 4 + size]
        offset += 4 + size + (-size % 4)


def _interface(body: bytes, order: str, index: int, at: int) -> _Interface:
    if len(body) < 8:
        raise CaptureFileError(at, f"interface description of {len(body)} bytes")
    interface = _Interface(f"if{index}")
    for code, value in _options(body[8:], order):
        if code == _IF_NAME:
            interface.name = value.decode("utf-8", "replace")
        elif code == _IF_TSRESOL and value:
            interface.decimal = not value[0] & 0x80
            interface.exponent = value[0] & 0x7F
        elif code == _IF_TSOFFSET and len(value) == 8:
            interface.offset_s = struct.unpack(f"{order}q", value)[0]
    return interface
