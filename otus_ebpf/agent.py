"""`otus-ebpf attach`: load → attach → drain the rings until a signal → clean up.

Every resource goes on one ExitStack, registered so that it unwinds in the
right order on success, on error and on signal: detach first (no new
packets), then drain what is left in the rings, flush the reporters, print
the final figures, unload the programs, close the reporters, restore the
signal handlers.
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
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from otus_ebpf.attach import AttachMethod, XdpMode, attach_tc_egress, attach_xdp, refuse_foreign_xdp
from otus_ebpf.counters import StatsLine, read_kernel_counters
from otus_ebpf.errors import SetupError
from otus_ebpf.kafka import KafkaSettings, make_producer
from otus_ebpf.loader import KernelSettings, LoadedPrograms, import_bcc, load_programs
from otus_ebpf.ring import open_reader
from userspace.pipeline import Pipeline
from userspace.reporters import Reporter
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.kafka import KafkaReporter

DEFAULT_OUT_DIR = Path("otus-out")
POLL_TIMEOUT_MS = 100  # how soon a stop signal is noticed
FLUSH_TIMEOUT_S = 10.0
OUT_FILE_MODE = 0o640


class CaptureDirection(Enum):
    INGRESS = "ingress"
    EGRESS = "egress"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class AttachOptions:
    interfaces: tuple[str, ...]
    direction: CaptureDirection = CaptureDirection.BOTH
    xdp_mode: XdpMode = XdpMode.AUTO
    method: AttachMethod = AttachMethod.AUTO
    force: bool = False
    out: str | None = None  # path, "-" for stdout, None for the default file
    kafka: KafkaSettings | None = None
    kernel: KernelSettings = field(default_factory=KernelSettings)
    stats_interval_s: float = 5.0


def run_attach(options: AttachOptions) -> int:
    options.kernel.validate()
    interfaces = {resolve_interface(name): name for name in options.interfaces}
    require_root()
    import_bcc()
    if options.direction is not CaptureDirection.EGRESS:
        for ifindex, name in interfaces.items():
            refuse_foreign_xdp(ifindex, name, options.force)
    label = ",".join(options.interfaces)
    with contextlib.ExitStack() as stack:
        stop = install_stop_signals(stack)
        reporters, kafka = open_reporters(stack, options, label)
        programs = load_programs(options.kernel)
        stack.callback(programs.close)
        reader = open_reader(programs.bpf, programs.delivery, programs.shards)
        pipeline = Pipeline(interfaces, time.time_ns() - time.monotonic_ns())

        def deliver(batch: list[bytes]) -> None:
            records = pipeline.process(batch)
            for reporter in reporters:
                reporter.write(records)

        def stats_line() -> str:
            return StatsLine(label, read_kernel_counters(programs.bpf), pipeline.stats,
                             kafka.stats if kafka else None).format()

        capturing = False

        def final_figures() -> None:
            if capturing:
                log(stats_line())

        # Unwinds bottom-up: detach, drain, flush, then the final figures.
        stack.callback(final_figures)
        stack.callback(flush_reporters, reporters)
        stack.callback(lambda: deliver(reader.drain()))
        attach_all(stack, programs, interfaces, options)
        capturing = True

        next_stats = time.monotonic() + options.stats_interval_s
        while not stop.is_set():
            deliver(reader.poll(POLL_TIMEOUT_MS))
            if time.monotonic() >= next_stats:
                log(stats_line())
                next_stats += options.stats_interval_s
        log("stopping: detaching, draining the rings, flushing outputs")
    return 0


def attach_all(stack: contextlib.ExitStack, programs: LoadedPrograms, interfaces: dict[int, str],
               options: AttachOptions) -> None:
    for ifindex, name in interfaces.items():
        hooks = []
        if options.direction is not CaptureDirection.EGRESS:
            how = attach_xdp(stack, programs.xdp_fd, ifindex, name, options.xdp_mode, options.method,
                             options.force)
            hooks.append(f"ingress XDP ({how})")
        if options.direction is not CaptureDirection.INGRESS:
            how = attach_tc_egress(stack, programs.tc_fd, ifindex, name, options.method)
            hooks.append(f"egress TC ({how})")
        log(f"attached to {name}: {', '.join(hooks)}; {programs.shards} shard(s), "
            f"{programs.delivery.value} delivery")


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
                   label: str) -> tuple[list[Reporter], KafkaReporter | None]:
    """Open every output before touching the kernel, so a bad output fails first."""
    reporters: list[Reporter] = []
    jsonl = JsonLinesReporter(open_output(stack, options.out, label))
    stack.callback(jsonl.close)
    reporters.append(jsonl)
    kafka = None
    if options.kafka is not None:
        kafka = KafkaReporter(make_producer(options.kafka), options.kafka.topic)
        stack.callback(kafka.close)
        reporters.append(kafka)
    return reporters, kafka


def open_output(stack: contextlib.ExitStack, out: str | None, label: str) -> BinaryIO:
    if out == "-":
        return sys.stdout.buffer
    path = Path(out) if out else DEFAULT_OUT_DIR / f"sip-{label.replace(',', '+')}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, OUT_FILE_MODE)
    except OSError as exc:
        raise SetupError(f"cannot open output {path}: {exc.strerror}") from None
    sink = stack.enter_context(os.fdopen(fd, "ab"))
    log(f"writing SIP records to {path}")
    return sink


def flush_reporters(reporters: list[Reporter]) -> None:
    for reporter in reporters:
        undelivered = reporter.flush(FLUSH_TIMEOUT_S)
        if undelivered:
            log(f"{type(reporter).__name__}: {undelivered} records undelivered at exit")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
