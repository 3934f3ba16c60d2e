"""pcap: the captured frames themselves (not reassembled), for Wireshark.

Nanosecond pcap (magic 0xa1b23c4d, link type Ethernet), rotated by size or
age like the JSON lines; every file starts with its own global header, so
each one opens on its own. Frames are what the kernel copied (up to the
snaplen); each record keeps the original length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from userspace.reporters import RotatingSink, Rotation, RotationTracker

PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
PCAP_SNAPLEN = 65_535
NS = 1_000_000_000
_GLOBAL = struct.Struct("=IHHiIII")
_RECORD = struct.Struct("=IIII")

Frame = tuple[int, bytes, int]  # wall-clock ns, captured bytes, original length


def global_header() -> bytes:
    return _GLOBAL.pack(PCAP_MAGIC_NS, 2, 4, 0, 0, PCAP_SNAPLEN, LINKTYPE_ETHERNET)


def encode_frames(frames: Sequence[Frame]) -> bytes:
    parts = []
    for ts_ns, data, orig_len in frames:
        seconds, nanos = divmod(ts_ns, NS)
        parts.append(_RECORD.pack(seconds, nanos, len(data), orig_len))
        parts.append(data)
    return b"".join(parts)


@dataclass(slots=True)
class PcapStats:
    frames: int = 0
    bytes: int = 0
    rotations: int = 0


class PcapReporter:
    def __init__(self, sink: RotatingSink, rotation: Rotation | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """``clock``: monotonic seconds, needed only for age-based rotation."""
        self._sink = sink
        self._files = RotationTracker(rotation or Rotation(), clock)
        self.stats = PcapStats()

    def write_frames(self, frames: Sequence[Frame]) -> None:
        if self._files.too_old():
            self._rotate()
        if not frames:
            return
        data = encode_frames(frames)
        if self._files.too_big_for(len(data)):
            self._rotate()
        if self._files.file_bytes == 0:
            header = global_header()
            self._sink.write(header)
            self._files.wrote(len(header))
        self._sink.write(data)
        self._sink.flush()
        self._files.wrote(len(data))
        self.stats.frames += len(frames)
        self.stats.bytes += len(data)

    def _rotate(self) -> None:
        self._sink.rotate()
        self._files.started_new_file()
        self.stats.rotations += 1

    def close(self) -> None:
        self._sink.close()
