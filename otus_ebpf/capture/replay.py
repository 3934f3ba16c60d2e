"""`otus-ebpf replay FILE`: a pcap or pcapng file through the same user-space
pipeline and reporters as a live capture.

Each frame is classified as the kernel would have done it (userspace.classify
mirrors bpf/otus.c; a parity test holds them equal), so only what the agent
would have captured reaches the pipeline, media flows included once their
SDP has been seen. Times are the file's: records carry the capture time,
and calls expire by it. pcapng keeps each frame's interface and direction
(as otus-ebpf writes them); classic pcap has neither, so its frames count as
ingress on an interface named after the file. ``--speed N`` paces frames by
their timestamps N times faster than captured; ``max`` (the default) reads
as fast as it can.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from otus_ebpf import logs
from otus_ebpf.capture.runner import strict_mode
from otus_ebpf.errors import EXIT_RECORDS_LOST, SetupError
from otus_ebpf.kernel.flows import FlowStats, apply_each
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.fanout import QueuedReporter
from otus_ebpf.outputs.wiring import (
    FrameOutputs,
    account_outputs,
    accounts_line,
    flush_reporters,
    open_frame_outputs,
    open_reporters,
)
from userspace.boundary import Boundary
from userspace.classify import Rules, classify_frame
from userspace.endpoints import FlowEvent
from userspace.event import Direction, Event, Flag, Kind
from userspace.pipeline import Pipeline
from userspace.records import Record

BATCH = 512
_MEDIA = frozenset((Kind.RTP, Kind.RTCP))
_SIGNATURE = int(Flag.SIGNATURE)  # SIP found by its first bytes, where learned media would have come first
EXPIRY_STEP_NS = 100_000_000  # capture time between expiry passes: as often as the live loop
JUMP_NS = 60_000_000_000      # a frame stamped further ahead than this waits for the next to agree
UDP = 17
MAX_PAUSE_S = 60.0  # a gap in the file longer than this is replayed as this
_log = logs.get(__name__)
PCAP_MAGICS = {0xA1B2C3D4: 1_000, 0xA1B23C4D: 1}  # magic -> nanoseconds per timestamp fraction unit
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
_EPB, _IDB, _SPB = 6, 1, 3
_FLAG_DIRECTION_MASK = 0b11
# Bounds on what a file may claim: no frame is larger than the largest
# snaplen any capture tool writes, no block larger than a few frames, and
# a timestamp must fit the 64-bit nanoseconds every record carries.
MAX_FRAME = 262_144
MAX_BLOCK = 16 << 20
MAX_TS_NS = (1 << 63) - 1


class CaptureFileError(SetupError):
    """A capture file broken at ``offset``; the frames before it were replayed."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"malformed capture file at offset {offset}: {reason}")
        self.offset = offset


@dataclass(slots=True)
class CapturedFrame:
    ts_ns: int
    data: bytes
    orig_len: int
    interface: str
    direction: Direction


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


def read_frames(stream: BinaryIO, default_interface: str) -> Iterator[CapturedFrame]:
    """The frames of a pcap (µs or ns) or pcapng file, in file order. What is not
    a capture file at all raises SetupError here, before a frame is asked for (so
    nothing is opened for it); a broken file raises CaptureFileError where it
    breaks, after the frames before it."""
    counted = _Counted(stream)
    head = counted.read(4)
    if len(head) < 4:
        raise SetupError("empty file: neither pcap nor pcapng")
    magic = struct.unpack("<I", head)[0]
    if magic == PCAPNG_SHB:
        return _pcapng(counted)
    if magic in PCAP_MAGICS or struct.unpack(">I", head)[0] in PCAP_MAGICS:
        return _pcap(counted, head, default_interface)
    raise SetupError(f"not a pcap or pcapng file (magic {head.hex()})")


def _pcap(stream: _Counted, head: bytes, interface: str) -> Iterator[CapturedFrame]:
    """The file header is read here, the frames as they are asked for."""
    order = "<" if struct.unpack("<I", head)[0] in PCAP_MAGICS else ">"
    unit = PCAP_MAGICS[struct.unpack(f"{order}I", head)[0]]
    rest = stream.exactly(20, "the pcap file header")
    if struct.unpack(f"{order}I", rest[16:20])[0] & 0x0FFFFFFF != 1:
        raise SetupError("pcap link type is not Ethernet")
    return _pcap_records(stream, struct.Struct(f"{order}IIII"), unit, interface)


def _pcap_records(stream: _Counted, record: struct.Struct, unit: int,
                  interface: str) -> Iterator[CapturedFrame]:
    limit = 1_000_000_000 // unit  # fractions of a second
    while True:
        at = stream.offset
        header = stream.read(record.size)
        if not header:
            return
        if len(header) < record.size:
            raise CaptureFileError(at, f"the file ends inside a record header ({len(header)} bytes)")
        seconds, fraction, captured, original = record.unpack(header)
        if captured > MAX_FRAME or fraction >= limit:
            raise CaptureFileError(at, f"record claims {captured} bytes captured, timestamp fraction "
                                       f"{fraction}")
        data = stream.exactly(captured, f"the frame of the record at offset {at}")
        yield CapturedFrame(seconds * 1_000_000_000 + fraction * unit, data, original, interface,
                            Direction.INGRESS)


def _pcapng(stream: _Counted) -> Iterator[CapturedFrame]:
    interfaces: list[tuple[str, int]] = []  # (name, ns per timestamp unit)
    order = "<"
    block_type = PCAPNG_SHB
    at = 0
    while True:
        length_raw = stream.exactly(4, f"the block at offset {at}")
        if block_type == PCAPNG_SHB:
            magic = stream.exactly(4, "a section header")
            order = "<" if magic == struct.pack("<I", PCAPNG_BYTE_ORDER) else ">"
            if magic != struct.pack(f"{order}I", PCAPNG_BYTE_ORDER):
                raise CaptureFileError(at, f"section header with byte-order magic {magic.hex()}")
            length = _block_length(at, struct.unpack(f"{order}I", length_raw)[0], minimum=28)
            stream.exactly(length - 12, "a section header")
            interfaces = []  # a new section names its interfaces again
        else:
            length = _block_length(at, struct.unpack(f"{order}I", length_raw)[0])
            body = stream.exactly(length - 12, f"the block at offset {at}")
            trailer = stream.exactly(4, f"the block at offset {at}")
            if struct.unpack(f"{order}I", trailer)[0] != length:
                raise CaptureFileError(at, "block lengths at its start and end differ")
            if block_type == _IDB:
                interfaces.append(_interface(body, order, len(interfaces), at))
            elif block_type == _EPB:
                frame = _enhanced_packet(body, order, interfaces, at)
                if frame is not None:
                    yield frame
        at = stream.offset
        raw = stream.read(4)
        if not raw:
            return
        if len(raw) < 4:
            raise CaptureFileError(at, "the file ends inside a block type")
        block_type = struct.unpack(f"{order}I", raw)[0]


def _block_length(at: int, length: int, minimum: int = 12) -> int:
    if length < minimum or length % 4 or length > MAX_BLOCK:
        raise CaptureFileError(at, f"block length {length}")
    return length


def _options(data: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        code, size = struct.unpack_from(f"{order}HH", data, offset)
        if code == 0:
            return
        yield code, data[offset + 4:offset + 4 + size]
        offset += 4 + size + (-size % 4)


def _interface(body: bytes, order: str, index: int, at: int) -> tuple[str, int]:
    if len(body) < 8:
        raise CaptureFileError(at, f"interface description of {len(body)} bytes")
    name, unit = f"if{index}", 1_000  # the default resolution is microseconds
    for code, value in _options(body[8:], order):
        if code == 2:
            name = value.decode("utf-8", "replace")
        elif code == 9 and value:
            resolution = value[0]
            unit = 10 ** (9 - resolution) if not resolution & 0x80 and resolution <= 9 else 1
    return name, unit


def _enhanced_packet(body: bytes, order: str, interfaces: list[tuple[str, int]],
                     at: int) -> CapturedFrame | None:
    if len(body) < 20:
        raise CaptureFileError(at, f"enhanced packet block of {len(body)} bytes")
    interface_id, high, low, captured, original = struct.unpack_from(f"{order}IIIII", body)
    if 20 + captured > len(body) or captured > MAX_FRAME:
        raise CaptureFileError(at, f"enhanced packet claims {captured} bytes in a block of {len(body) + 12}")
    if interface_id >= len(interfaces):
        return None
    name, unit = interfaces[interface_id]
    ts_ns = ((high << 32) | low) * unit
    if ts_ns > MAX_TS_NS:
        raise CaptureFileError(at, f"timestamp {(high << 32) | low} units is past the year 2262")
    data = body[20:20 + captured]
    direction = Direction.INGRESS
    for code, value in _options(body[20 + captured + (-captured % 4):], order):
        if code == 2 and len(value) == 4 and struct.unpack(f"{order}I", value)[0] & _FLAG_DIRECTION_MASK == 2:
            direction = Direction.EGRESS
    return CapturedFrame(ts_ns, data, original, name, direction)


def run_replay(path: Path, options: AttachOptions, speed: float | None) -> int:
    """Replay ``path`` into the outputs of ``options``; ``speed`` None: as fast as possible.
    Returns 0, or EXIT_RECORDS_LOST when an output lost records; a file broken
    part way raises CaptureFileError once what came before it is written."""
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from None
    broken: CaptureFileError | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(stream)
        frames = read_frames(stream, path.stem)  # not a capture file: said before any output exists
        reporters, kafka = open_reporters(stack, options, path.stem)
        frame_outputs = open_frame_outputs(stack, options)
        replayer = _Replayer(options, frame_outputs.wanted)
        try:
            _replay_frames(frames, replayer, reporters, frame_outputs, speed)
        except CaptureFileError as exc:
            broken = exc  # what came before is delivered below, then the error is said
        last = replayer.pipeline.finish()  # calls still going at the end of the file
        for reporter in reporters:
            reporter.write(last)
        if frame_outputs.wanted:
            frame_outputs.write(replayer.pipeline.take_frames(), last)
        flush_reporters(reporters)
        p = replayer.pipeline.stats
        errors = p.event_errors + p.decode_errors + p.sip_errors
        produced = replayer.records + len(last)
        clock = replayer.clock
        odd_times = (f", stamped_back={clock.stamped_back} stamped_ahead={clock.stamped_ahead}"
                     if clock.stamped_back or clock.stamped_ahead else "")
        internal = replayer.pipeline.boundary.total
        _log.info(f"replayed {path}: {replayer.frames} frames, {replayer.events} captured, "
                  f"{produced} records, errors={errors}, internal_errors={internal}{odd_times}")
    accounts = account_outputs(reporters, kafka, frame_outputs)
    lost = any(a.lost for a in accounts)
    _log.log(logging.WARNING if lost else logging.INFO, accounts_line(produced, accounts))
    if broken is not None:
        raise broken
    return EXIT_RECORDS_LOST if lost else 0


def _replay_frames(frames: Iterator[CapturedFrame], replayer: _Replayer, reporters: list[QueuedReporter],
                   frame_outputs: FrameOutputs, speed: float | None) -> None:
    started, first_ts = time.monotonic(), None
    batch: list[CapturedFrame] = []
    try:
        for frame in frames:
            if speed is not None:
                first_ts = frame.ts_ns if first_ts is None else first_ts
                delay = (frame.ts_ns - first_ts) / 1e9 / speed - (time.monotonic() - started)
                if delay > 0.001:
                    _deliver(replayer, batch, reporters, frame_outputs)
                    batch = []
                    time.sleep(min(delay, MAX_PAUSE_S))
            batch.append(frame)
            if len(batch) >= BATCH:
                _deliver(replayer, batch, reporters, frame_outputs)
                batch = []
    finally:
        _deliver(replayer, batch, reporters, frame_outputs)  # what was read before a broken block too


def _deliver(replayer: _Replayer, batch: list[CapturedFrame], reporters: list[QueuedReporter],
             frame_outputs: FrameOutputs) -> None:
    if not batch:
        return
    records = replayer.process(batch)
    for reporter in reporters:
        reporter.write(records)
    if frame_outputs.wanted:
        frame_outputs.write(replayer.pipeline.take_frames(), records)


class ExpiryClock:
    """The capture time calls and streams expire by. A pcap may be merged or
    edited: it never goes back, and one frame stamped far ahead of the rest does
    not move it (it would time out every call at once, then expire nothing for
    as long) — a jump is believed when the next frame lands past it too, as
    after a real gap in a capture. Both are counted."""

    def __init__(self) -> None:
        self.now = 0
        self.stamped_back = 0    # frames stamped before the latest time
        self.stamped_ahead = 0   # lone frames stamped more than JUMP_NS ahead, not believed
        self._ahead: int | None = None

    def see(self, ts_ns: int) -> None:
        if not self.now:
            self.now = ts_ns
            return
        if ts_ns - self.now > JUMP_NS:
            if self._ahead is None:
                self._ahead = ts_ns  # believed if the next frame agrees
                return
            self.now, self._ahead = ts_ns, None
            return
        if self._ahead is not None:
            self.stamped_ahead += 1
            self._ahead = None
        if ts_ns < self.now:
            self.stamped_back += 1
        else:
            self.now = ts_ns


class _Replayer:
    """Frames to records: the kernel's classification, then the pipeline."""

    def __init__(self, options: AttachOptions, keep_frames: bool) -> None:
        self.interfaces: dict[str, int] = {}
        self._names: dict[int, str] = {}  # the pipeline reads interface names from here
        boundary = Boundary(self._report_bug, strict_mode())
        self.pipeline = Pipeline(self._names, 0, options.reassembly, options.tcp, options.calls, boundary)
        self.pipeline.keep_frames = keep_frames
        kernel = options.kernel
        # Learned endpoints, as the kernel's flow map would hold them; the rules see the
        # same dict, so learning is one assignment, not a copy of every endpoint.
        self._media: dict[tuple[bytes, int, int], tuple[Kind, int]] = {}
        self._rules = Rules(frozenset(kernel.sip_ports), kernel.signature, 1, self._media)
        self.frames = self.events = self.records = 0
        self.clock = ExpiryClock()
        self._next_expiry = 0
        self.flow_stats = FlowStats()

    def _ifindex(self, name: str) -> int:
        index = self.interfaces.get(name)
        if index is None:
            index = self.interfaces[name] = len(self.interfaces) + 1
            self._names[index] = name
        return index

    def process(self, batch: list[CapturedFrame]) -> list[Record]:
        """Frames in capture order, as the kernel sees them: a SIP frame's learning
        (its SDP's media) applies before the next frame whose classification it
        could change (media, a signature match, one not captured) is classified.
        Frames on a SIP port and fragments do not depend on it: a run of them
        goes through the pipeline together, as media frames do, until capture
        time reaches the next expiry step."""
        records: list[Record] = []
        events: list[Event] = []
        learning = False  # events holds a message that may learn or forget media
        for frame in batch:
            self.frames += 1
            event = self._classify(frame)
            if learning and (event is None or event.kind in _MEDIA or event.flags & _SIGNATURE):
                records += self._run(events)
                events, learning = [], False
                event = self._classify(frame)
            if event is None:
                continue
            events.append(event)
            self.clock.see(frame.ts_ns)
            learning = learning or event.kind not in _MEDIA
            if self.clock.now >= self._next_expiry:  # calls expire by capture time, here as live
                records += self._run(events)
                events, learning = [], False
        records += self._run(events)
        return records

    def _classify(self, frame: CapturedFrame) -> Event | None:
        return classify_frame(frame.data, self._rules, frame.direction, frame.ts_ns,
                              self._ifindex(frame.interface), frame.orig_len)

    def _run(self, events: list[Event]) -> list[Record]:
        if not events:
            return []
        self.events += len(events)
        records = self.pipeline.process(events)
        now = self.clock.now
        if now >= self._next_expiry:  # calls expire by capture time
            records += self.pipeline.expire(now)
            self._next_expiry = now + EXPIRY_STEP_NS
        self._learn(self.pipeline.take_flow_events())
        self.records += len(records)
        return records

    def _learn(self, flow_events: list[FlowEvent]) -> None:
        if not flow_events:
            return
        media = self._media

        def learn(event: FlowEvent) -> None:
            media[event.address, event.port, UDP] = (event.kind, 0)

        def forget(event: FlowEvent) -> None:
            media.pop((event.address, event.port, UDP), None)

        apply_each(flow_events, learn, forget, self.flow_stats, self.pipeline.boundary)

    def _report_bug(self, stage: str, kind: str, exc: BaseException, example: bytes | None) -> None:
        shown = f"; input: {example[:200]!r}" if example is not None else ""
        _log.error(f"replay: internal error in {stage}: {kind}: {exc} (counted; replay goes on){shown}",
                   exc_info=exc if _log.isEnabledFor(logging.DEBUG) else None)


