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
import ipaddress
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from otus_ebpf.errors import SetupError
from otus_ebpf.fanout import QueuedReporter
from otus_ebpf.options import AttachOptions
from otus_ebpf.wiring import FrameOutputs, Log, flush_reporters, open_frame_outputs, open_reporters
from userspace.calls import FlowAction, FlowEvent
from userspace.classify import Rules, classify_frame, encode_event
from userspace.event import Direction, Kind
from userspace.pipeline import Pipeline
from userspace.records import Record

BATCH = 512
UDP = 17
PCAP_MAGICS = {0xA1B2C3D4: 1_000, 0xA1B23C4D: 1}  # magic -> nanoseconds per timestamp fraction unit
PCAPNG_SHB = 0x0A0D0D0A
_EPB, _IDB, _SPB = 6, 1, 3
_FLAG_DIRECTION_MASK = 0b11


@dataclass(slots=True)
class CapturedFrame:
    ts_ns: int
    data: bytes
    orig_len: int
    interface: str
    direction: Direction


def read_frames(stream: BinaryIO, default_interface: str) -> Iterator[CapturedFrame]:
    """The frames of a pcap (µs or ns) or pcapng file, in file order."""
    head = stream.read(4)
    if len(head) < 4:
        raise SetupError("empty file: neither pcap nor pcapng")
    magic = struct.unpack("<I", head)[0]
    if magic == PCAPNG_SHB:
        yield from _pcapng(stream, head)
    elif magic in PCAP_MAGICS or struct.unpack(">I", head)[0] in PCAP_MAGICS:
        yield from _pcap(stream, head, default_interface)
    else:
        raise SetupError(f"not a pcap or pcapng file (magic {head.hex()})")


def _pcap(stream: BinaryIO, head: bytes, interface: str) -> Iterator[CapturedFrame]:
    order = "<" if struct.unpack("<I", head)[0] in PCAP_MAGICS else ">"
    unit = PCAP_MAGICS[struct.unpack(f"{order}I", head)[0]]
    rest = stream.read(20)
    if len(rest) < 20 or struct.unpack(f"{order}I", rest[16:20])[0] != 1:
        raise SetupError("pcap link type is not Ethernet")
    record = struct.Struct(f"{order}IIII")
    while len(header := stream.read(record.size)) == record.size:
        seconds, fraction, captured, original = record.unpack(header)
        data = stream.read(captured)
        if len(data) < captured:
            break  # a file cut short: what came before stands
        yield CapturedFrame(seconds * 1_000_000_000 + fraction * unit, data, original, interface,
                            Direction.INGRESS)


def _pcapng(stream: BinaryIO, head: bytes) -> Iterator[CapturedFrame]:
    interfaces: list[tuple[str, int]] = []  # (name, ns per timestamp unit)
    order = "<"
    block_type = PCAPNG_SHB
    while True:
        length_raw = stream.read(4)
        if len(length_raw) < 4:
            return
        if block_type == PCAPNG_SHB:
            body_start = stream.read(4)
            order = "<" if body_start == b"\x4d\x3c\x2b\x1a" else ">"
            length = struct.unpack(f"{order}I", length_raw)[0]
            stream.read(length - 12)
            interfaces = []  # a new section names its interfaces again
        else:
            length = struct.unpack(f"{order}I", length_raw)[0]
            if length < 12:
                raise SetupError(f"bad pcapng block length {length}")
            body = stream.read(length - 12)
            stream.read(4)
            if block_type == _IDB:
                interfaces.append(_interface(body, order, len(interfaces)))
            elif block_type == _EPB:
                frame = _enhanced_packet(body, order, interfaces)
                if frame is not None:
                    yield frame
        raw = stream.read(4)
        if len(raw) < 4:
            return
        block_type = struct.unpack(f"{order}I", raw)[0]


def _options(data: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        code, size = struct.unpack_from(f"{order}HH", data, offset)
        if code == 0:
            return
        yield code, data[offset + 4:offset + 4 + size]
        offset += 4 + size + (-size % 4)


def _interface(body: bytes, order: str, index: int) -> tuple[str, int]:
    name, unit = f"if{index}", 1_000  # the default resolution is microseconds
    for code, value in _options(body[8:], order):
        if code == 2:
            name = value.decode("utf-8", "replace")
        elif code == 9 and value:
            resolution = value[0]
            unit = 10 ** (9 - resolution) if not resolution & 0x80 and resolution <= 9 else 1
    return name, unit


def _enhanced_packet(body: bytes, order: str, interfaces: list[tuple[str, int]]) -> CapturedFrame | None:
    interface_id, high, low, captured, original = struct.unpack_from(f"{order}IIIII", body)
    if interface_id >= len(interfaces):
        return None
    name, unit = interfaces[interface_id]
    data = body[20:20 + captured]
    direction = Direction.INGRESS
    for code, value in _options(body[20 + captured + (-captured % 4):], order):
        if code == 2 and len(value) == 4 and struct.unpack(f"{order}I", value)[0] & _FLAG_DIRECTION_MASK == 2:
            direction = Direction.EGRESS
    return CapturedFrame(((high << 32) | low) * unit, data, original, name, direction)


def run_replay(path: Path, options: AttachOptions, speed: float | None, log: Log) -> int:
    """Replay ``path`` into the outputs of ``options``; ``speed`` None: as fast as possible."""
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(stream)
        reporters, _kafka = open_reporters(stack, options, path.stem, log)
        frame_outputs = open_frame_outputs(stack, options, log)
        replayer = _Replayer(options, frame_outputs.wanted)
        started, first_ts = time.monotonic(), None
        batch: list[CapturedFrame] = []
        for frame in read_frames(stream, path.stem):
            if speed is not None:
                first_ts = frame.ts_ns if first_ts is None else first_ts
                delay = (frame.ts_ns - first_ts) / 1e9 / speed - (time.monotonic() - started)
                if delay > 0.001:
                    _deliver(replayer, batch, reporters, frame_outputs)
                    batch = []
                    time.sleep(delay)
            batch.append(frame)
            if len(batch) >= BATCH:
                _deliver(replayer, batch, reporters, frame_outputs)
                batch = []
        _deliver(replayer, batch, reporters, frame_outputs)
        last = replayer.stream_reports()
        for reporter in reporters:
            reporter.write(last)
        flush_reporters(reporters, log)
        p = replayer.pipeline.stats
        log(f"replayed {path}: {replayer.frames} frames, {replayer.events} captured, "
            f"{p.records} records, errors={p.event_errors + p.decode_errors + p.sip_errors}")
    return 0


def _deliver(replayer: _Replayer, batch: list[CapturedFrame], reporters: list[QueuedReporter],
             frame_outputs: FrameOutputs) -> None:
    if not batch:
        return
    records = replayer.process(batch)
    for reporter in reporters:
        reporter.write(records)
    if frame_outputs.wanted:
        frame_outputs.write(replayer.pipeline.take_frames(), records)


class _Replayer:
    """Frames to records: the kernel's classification, then the pipeline."""

    def __init__(self, options: AttachOptions, keep_frames: bool) -> None:
        self.interfaces: dict[str, int] = {}
        self._names: dict[int, str] = {}  # the pipeline reads interface names from here
        self.pipeline = Pipeline(self._names, 0, options.reassembly, options.tcp, options.calls)
        self.pipeline.keep_frames = keep_frames
        kernel = options.kernel
        self._media: dict[tuple[bytes, int, int], tuple[Kind, int]] = {}
        self._rules = Rules(frozenset(kernel.sip_ports), kernel.signature, 1, {})
        self._signature = kernel.signature
        self._ports = frozenset(kernel.sip_ports)
        self.frames = self.events = 0
        self._last_ts = 0

    def _ifindex(self, name: str) -> int:
        index = self.interfaces.get(name)
        if index is None:
            index = self.interfaces[name] = len(self.interfaces) + 1
            self._names[index] = name
        return index

    def process(self, batch: list[CapturedFrame]) -> list[Record]:
        events = []
        for frame in batch:
            self.frames += 1
            classified = classify_frame(frame.data, self._rules)
            if classified is None:
                continue
            events.append(encode_event(frame.data, classified, frame.direction, frame.ts_ns,
                                       self._ifindex(frame.interface), frame.orig_len))
            self._last_ts = frame.ts_ns
        self.events += len(events)
        records = self.pipeline.process(events)
        records += self.pipeline.expire(self._last_ts)  # calls expire by capture time
        self._learn(self.pipeline.take_flow_events())
        return records

    def _learn(self, flow_events: list[FlowEvent]) -> None:
        if not flow_events:
            return
        for event in flow_events:
            key = (ipaddress.ip_address(event.address).packed, event.port, UDP)
            if event.action is FlowAction.LEARN:
                self._media[key] = (event.kind, 0)
            else:
                self._media.pop(key, None)
        self._rules = Rules(self._ports, self._signature, 1, dict(self._media))

    def stream_reports(self) -> list[Record]:
        return self.pipeline.stream_reports(self._last_ts)
