"""`otus-ebpf attach`: open outputs → open a capture → deliver batches until a
signal → clean up.

Every resource goes on one ExitStack, registered so that it unwinds in the
right order on success, on error and on signal: stop capturing (detach),
deliver what is left, flush the reporters, print the final figures, release
the capture, close the reporters, restore the signal handlers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from otus_ebpf.attach import AttachMethod, XdpMode
from otus_ebpf.capture import (
    Capture,
    CaptureDirection,
    CaptureMode,
    CaptureOptions,
    open_capture,
    preflight,
)
from otus_ebpf.counters import StatsLine
from otus_ebpf.errors import SetupError
from otus_ebpf.fanout import DEFAULT_QUEUE_RECORDS, Fallback, QueuedReporter
from otus_ebpf.hep import HepCollector, HepSender
from otus_ebpf.kafka import KafkaSettings, open_kafka_reporter
from otus_ebpf.loader import KernelSettings
from otus_ebpf.outputs import RotatingFile, StreamSink
from otus_ebpf.percall import PerCallPcap
from userspace.calls import CallLimits
from userspace.pipeline import Pipeline
from userspace.reassembly import ReassemblyLimits
from userspace.records import CallSummary, Record
from userspace.reporters import Reporter, RotatingSink, Rotation
from userspace.reporters.hep import HepIdentity, HepReporter
from userspace.reporters.jsonl import FsyncPolicy, JsonLinesReporter
from userspace.reporters.kafka import BacklogLimits, KafkaReporter, KafkaRouting
from userspace.reporters.pcap import Frame, PcapFormat, PcapReporter
from userspace.tcp import TcpLimits

DEFAULT_OUT_DIR = Path("otus-out")
POLL_TIMEOUT_MS = 100  # how soon a stop signal is noticed
STREAM_REPORT_INTERVAL_S = 30.0  # periodic RTP stream reports during calls
FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class AttachOptions:
    interfaces: tuple[str, ...]
    mode: CaptureMode = CaptureMode.AUTO
    direction: CaptureDirection = CaptureDirection.BOTH
    xdp_mode: XdpMode = XdpMode.AUTO
    method: AttachMethod = AttachMethod.AUTO
    force: bool = False
    out: str | None = None  # path, "-" for stdout, None for the default file
    kafka: KafkaSettings | None = None
    kafka_backlog: BacklogLimits = field(default_factory=BacklogLimits)
    kafka_routing: KafkaRouting = field(default_factory=KafkaRouting)
    hep: tuple[HepCollector, ...] = ()
    fallback: str | None = None  # JSON-lines file for what an output could not take
    queue_records: int = DEFAULT_QUEUE_RECORDS  # per output, between capture and its thread
    hep_identity: HepIdentity = field(default_factory=HepIdentity)
    out_rotation: Rotation = field(default_factory=Rotation)
    out_fsync: FsyncPolicy = FsyncPolicy.NEVER
    pcap: str | None = None  # path of a pcap of every captured frame
    pcap_rotation: Rotation = field(default_factory=Rotation)
    pcap_format: PcapFormat = PcapFormat.PCAP
    pcap_per_call: str | None = None  # directory for one capture file per call
    kernel: KernelSettings = field(default_factory=KernelSettings)
    reassembly: ReassemblyLimits = field(default_factory=ReassemblyLimits)
    tcp: TcpLimits = field(default_factory=TcpLimits)
    calls: CallLimits = field(default_factory=CallLimits)
    stats_interval_s: float = 5.0

    @property
    def capture(self) -> CaptureOptions:
        return CaptureOptions(self.mode, self.direction, self.xdp_mode, self.method, self.force, self.kernel)


def run_attach(options: AttachOptions) -> int:
    options.kernel.validate()
    interfaces = {resolve_interface(name): name for name in options.interfaces}
    require_root()
    preflight(options.capture, interfaces)
    label = ",".join(options.interfaces)
    with contextlib.ExitStack() as stack:
        stop = install_stop_signals(stack)
        reporters, kafka = open_reporters(stack, options, label)
        clock_offset_ns = time.time_ns() - time.monotonic_ns()
        pipeline = Pipeline(interfaces, clock_offset_ns, options.reassembly, options.tcp, options.calls)
        frame_outputs = open_frame_outputs(stack, options)
        pipeline.keep_frames = frame_outputs.wanted
        capture: Capture | None = None

        def deliver(batch: list[bytes]) -> None:
            records = pipeline.process(batch)
            for reporter in reporters:
                reporter.write(records)
            if frame_outputs.wanted:
                frame_outputs.write(pipeline.take_frames(), records)
            if capture is not None:
                capture.apply_flows(pipeline.take_flow_events())

        def stats_line() -> str:
            sections = capture.stats_sections() if capture else []
            return StatsLine(label, sections, pipeline.stats, kafka.stats if kafka else None,
                             pipeline.reassembler.stats, [r.summary() for r in reporters]).format()

        def write(records: list[Record]) -> None:
            for reporter in reporters:
                reporter.write(records)

        def on_stop(leftover: list[bytes]) -> None:
            deliver(leftover)
            write(pipeline.stream_reports(time.time_ns()))  # streams of calls still going
            flush_reporters(reporters)
            if capture is not None:
                log(stats_line())  # the final figures, after everything is delivered

        capture = open_capture(stack, options.capture, interfaces, clock_offset_ns, on_stop, log)
        log(f"capturing: {capture.description}")

        next_stats = time.monotonic() + options.stats_interval_s
        next_reports = time.monotonic() + STREAM_REPORT_INTERVAL_S
        while not stop.is_set():
            deliver(capture.poll(POLL_TIMEOUT_MS))
            expired = pipeline.expire(time.monotonic_ns())
            if expired:
                write(expired)
                frame_outputs.write([], expired)
                capture.apply_flows(pipeline.take_flow_events())
            if time.monotonic() >= next_reports:
                write(pipeline.stream_reports(time.time_ns()))
                next_reports += STREAM_REPORT_INTERVAL_S
            if time.monotonic() >= next_stats:
                log(stats_line())
                next_stats += options.stats_interval_s
        log("stopping: detaching, draining, flushing outputs")
    return 0


def resolve_interface(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise SetupError(f"unknown interface {name!r} (see `ip link`)") from None


def require_root() -> None:
    if os.geteuid() != 0:
        raise SetupError("not root: loading and attaching BPF programs needs root; run with sudo")


def install_stop_signals(stack: contextlib.ExitStack) -> threading.Event:
    """SIGINT/SIGTERM set a flag the poll loop checks; old handlers come back on exit."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(signum, request_stop)
        stack.callback(signal.signal, signum, previous)
    return stop


def open_reporters(stack: contextlib.ExitStack, options: AttachOptions,
                   label: str) -> tuple[list[QueuedReporter], KafkaReporter | None]:
    """Open every output before touching the kernel, so a bad output fails first.
    Each runs behind its own queue and thread (otus_ebpf.fanout); closing
    stops the workers after they have written what is queued."""
    fallback = None
    if options.fallback is not None:
        fallback = Fallback(JsonLinesReporter(RotatingFile(Path(options.fallback)), options.out_rotation,
                                              time.monotonic, options.out_fsync))
        stack.callback(fallback.close)  # after every worker that may hand it records
        log(f"records no output could take go to {options.fallback}")
    reporters: list[QueuedReporter] = []

    def queued(name: str, reporter: Reporter) -> None:
        worker = QueuedReporter(name, reporter, fallback, options.queue_records, on_error=log)
        stack.callback(worker.close)
        reporters.append(worker)

    queued("jsonl", JsonLinesReporter(open_output(options.out, label), options.out_rotation, time.monotonic,
                                      options.out_fsync))
    kafka = None
    if options.kafka is not None:
        spill = fallback.take_encoded if fallback is not None else None
        kafka = open_kafka_reporter(options.kafka, options.kafka_routing, options.kafka_backlog,
                                    time.monotonic, spill)
        queued("kafka", kafka)
    if options.hep:
        queued("hep", HepReporter(HepSender(options.hep, time.monotonic), options.hep_identity))
        log(f"sending HEPv3 to {', '.join(map(str, options.hep))}")
    return reporters, kafka


@dataclass(slots=True)
class FrameOutputs:
    """The outputs of captured frames rather than records: a pcap of
    everything, and a file per call."""

    pcap: PcapReporter | None = None
    per_call: PerCallPcap | None = None

    @property
    def wanted(self) -> bool:
        return self.pcap is not None or self.per_call is not None

    def write(self, frames: list[Frame], records: list[Record]) -> None:
        if self.pcap is not None:
            self.pcap.write_frames(frames)
        if self.per_call is not None:
            self.per_call.write_frames(frames)
            self.per_call.calls_ended(r.call_id for r in records if isinstance(r, CallSummary))


def open_frame_outputs(stack: contextlib.ExitStack, options: AttachOptions) -> FrameOutputs:
    outputs = FrameOutputs()
    if options.pcap is not None:
        outputs.pcap = PcapReporter(RotatingFile(Path(options.pcap)), options.pcap_rotation, time.monotonic,
                                    options.pcap_format)
        stack.callback(outputs.pcap.close)
        log(f"writing captured frames to {options.pcap}")
    if options.pcap_per_call is not None:
        outputs.per_call = PerCallPcap(Path(options.pcap_per_call), options.pcap_format)
        stack.callback(outputs.per_call.close)
        log(f"writing one capture file per call to {options.pcap_per_call}/")
    return outputs


def open_output(out: str | None, label: str) -> RotatingSink:
    """The JSON-lines sink; the reporter closes it."""
    if out == "-":
        return StreamSink(sys.stdout.buffer)
    path = Path(out) if out else DEFAULT_OUT_DIR / f"sip-{label.replace(',', '+')}.jsonl"
    sink = RotatingFile(path)
    log(f"writing records to {path}")
    return sink


def flush_reporters(reporters: list[QueuedReporter]) -> None:
    for reporter in reporters:
        undelivered = reporter.flush(FLUSH_TIMEOUT_S, time.monotonic)
        if undelivered:
            log(f"{reporter.name}: {undelivered} records undelivered at exit")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
