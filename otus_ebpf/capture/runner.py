"""The work of capturing, whichever process does it: events in, records out.

A Runner owns a pipeline and the outputs its records go to, and turns the
batches its capture reads into written records, learned flows and, with
several workers, messages handed to the worker that owns their Call-ID. A
task that captures in its own process runs one; so does each worker
process. A Runner starts, stops and supervises nothing: that is the task's
(otus_ebpf.control.task) and the supervisor's (otus_ebpf.capture.supervisor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from otus_ebpf import logs
from otus_ebpf.capture.processing import open_chain
from otus_ebpf.capture.sampling import StatsLine, TaskSample, add_boundary, add_runner_figures
from otus_ebpf.capture.sources import Capture
from otus_ebpf.kernel.flows import FlowStats
from otus_ebpf.kernel.settings import KernelSettings, MediaMode
from otus_ebpf.kernel.streams import KernelStreams
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.fanout import QueuedReporter
from otus_ebpf.outputs.joined import Forward
from otus_ebpf.outputs.wiring import (
    FrameOutputs,
    account_outputs,
    accounts_line,
    flush_reporters,
    open_frame_outputs,
    open_reporters,
)
from userspace.boundary import Boundary
from userspace.callbook import CallBook, CallDetail, CallRow
from userspace.event import Captured, Direction
from userspace.frame import address_text
from userspace.pipeline import Pipeline, Route
from userspace.records import Record, SipRecord
from userspace.reporters.kafka import KafkaReporter

POLL_TIMEOUT_MS = 100  # how soon a stop request is noticed
MIN_STREAM_SYNC_NS = 1_000_000_000  # the kernel's stream statistics are read at most this often
_EXAMPLE_SHOWN = 200  # bytes of the input that hit a bug, in its log line
HandOffSink = Callable[[list[tuple[int, bytes]]], None]
_log = logs.get(__name__)


def strict_mode() -> bool:
    """OTUS_STRICT=1 (the test suite sets it): a bug raises instead of being counted."""
    return os.environ.get("OTUS_STRICT") == "1"


# The cyclic collector's first-generation threshold (CPython's default is 700). Every
# message allocates a few dozen tracked objects and almost none are cyclic garbage, but
# each collection of the older generations walks every live call, stream and record: at
# the default, 20 % of replay's time went to it (gc disabled: 29 -> 23 us a message).
GC_YOUNG_THRESHOLD = 50_000


def tune_runtime() -> None:
    """For a process that runs the pipeline: what exists when it is called (the modules
    imported at start-up) moves out of the cyclic collector's reach, and collections
    come seventy times less often (cycles are still collected, later). Once per
    process, from the command's entry point (otus_ebpf.cli.main.entry)."""
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def bug_reporter(name: str) -> Callable[[str, str, BaseException, bytes | None], None]:
    """What a Boundary calls with the first of each kind of internal error: a log line
    with the traceback and the input that hit it."""
    def report(stage: str, kind: str, exc: BaseException, example: bytes | None) -> None:
        shown = f"; input: {example[:_EXAMPLE_SHOWN]!r}" if example is not None else ""
        _log.error(f"task {name}: internal error in {stage}: {kind}: {exc} (counted in "
                   f"otus_internal_errors_total; capture goes on){shown}", exc_info=exc)
    return report


def clock_offset() -> int:
    """What turns the kernel's monotonic timestamps into wall-clock ones."""
    return time.time_ns() - time.monotonic_ns()


class Runner:
    owns_outputs = True  # its outputs can be swapped while it runs

    def __init__(self, interfaces: dict[int, str], options: AttachOptions, boundary: Boundary,
                 route: Route | None = None, hand_off: HandOffSink | None = None,
                 forward: Forward | None = None, clock_offset_ns: int | None = None) -> None:
        """``route`` and ``hand_off``: SIP is sharded by Call-ID over workers; messages
        another worker owns go to ``hand_off``. ``forward``: the file outputs are the
        parent's (otus_ebpf.outputs.joined); this runner's records go there, encoded.
        ``clock_offset_ns``: the task's, so that every worker stamps a frame alike."""
        self._hand_off = hand_off
        self._forward = forward
        self.label = ",".join(options.interfaces)
        self.boundary = boundary
        self.clock_offset_ns = clock_offset() if clock_offset_ns is None else clock_offset_ns
        self.pipeline = Pipeline(interfaces, self.clock_offset_ns, options.reassembly, options.tcp,
                                 options.calls, boundary, route, frozenset(options.kernel.ws_ports),
                                 options.kernel.tunnels)
        self.pipeline.opened_rules = options.kernel.opened_rules()
        self.capture: Capture | None = None
        self.media = options.media
        self.streams: KernelStreams | None = None  # the kernel measures RTP (measure_in_kernel)
        self._stream_sync_ns = max(MIN_STREAM_SYNC_NS, int(options.calls.rtp_report_interval_s * 1e9) // 2)
        self._next_stream_sync = 0
        self.reporters: list[QueuedReporter] = []
        self.kafka: KafkaReporter | None = None
        self.frames = FrameOutputs()
        self.flow_stats = FlowStats()
        self.recent: deque[SipRecord] | None = None  # the last SIP records, kept for a live view
        self.book: CallBook | None = None  # the calls an interactive view shows (watch_calls)
        self.chain = open_chain(options, boundary)  # the records' processors, before every output
        self._outputs_stack = contextlib.ExitStack()
        self._outputs_lock = threading.RLock()

    # -- outputs --------------------------------------------------------------

    def open_outputs(self, stack: contextlib.ExitStack, options: AttachOptions) -> None:
        """Open the outputs ``options`` name; ``stack`` closes whichever are current then."""
        stack.callback(self._close_outputs)
        self._outputs_stack, self.reporters, self.kafka, self.frames = self._outputs_for(options)
        self.pipeline.keep_frames = self.frames.wanted

    def _close_outputs(self) -> None:
        self._outputs_stack.close()  # whichever outputs are current by then

    def _outputs_for(self, options: AttachOptions) -> tuple[contextlib.ExitStack, list[QueuedReporter],
                                                              KafkaReporter | None, FrameOutputs]:
        """A set of outputs on a stack of their own, so that they can be swapped while running."""
        with contextlib.ExitStack() as stack:
            reporters, kafka = open_reporters(stack, options, self.label, self._forward)
            frames = open_frame_outputs(stack, options, self._forward)
            return stack.pop_all(), reporters, kafka, frames

    def swap_outputs(self, options: AttachOptions) -> None:
        fresh = self._outputs_for(options)  # a bad setting fails here, and nothing changes
        with self._outputs_lock:
            old_stack, old_reporters = self._outputs_stack, self.reporters
            self._outputs_stack, self.reporters, self.kafka, self.frames = fresh
            self.pipeline.keep_frames = self.frames.wanted
        flush_reporters(old_reporters)
        old_stack.close()

    # -- the loop ---------------------------------------------------------------

    def measure_in_kernel(self, streams: KernelStreams | None, worker: int | None) -> None:
        """The kernel's programs keep RTP statistics (unless media goes up packet by
        packet, or is off, or the capture has no kernel: None): read them every half
        report interval. ``worker``: this runner's flows are the ones learned with
        that shard (None: every one)."""
        if streams is not None and self.media is MediaMode.STATS:
            self.streams = streams
            self.pipeline.measure_in_kernel(streams, worker)

    def poll_once(self) -> None:
        """One turn: read a batch, process it, expire what timed out, read the kernel's
        stream statistics when due, learn flows."""
        assert self.capture is not None
        self.deliver(self.capture.poll(POLL_TIMEOUT_MS))  # a capture that cannot be read raises
        now = time.monotonic_ns()
        expired = self.pipeline.expire(now)
        if self.streams is not None and now >= self._next_stream_sync:
            self._next_stream_sync = now + self._stream_sync_ns
            expired += self.pipeline.sync_streams(now)
        if expired:
            self._write(expired)
            self._guarded("frames", self.frames.write, [], expired)
        self._apply_flows()

    def deliver(self, batch: Sequence[Captured]) -> None:
        records = self.pipeline.process(batch)
        with self._outputs_lock:  # a swap of the outputs happens between batches, not within one
            self._write(records)
            if self.frames.wanted:
                self._guarded("frames", self.frames.write, self.pipeline.take_frames(), records)
        self._apply_flows()
        handoffs = self.pipeline.take_handoffs()
        if handoffs and self._hand_off is not None:
            self._guarded("handoff", self._hand_off, handoffs)

    def on_capture_stop(self, leftover: Sequence[Captured]) -> None:
        """Called by the capture after it detached and drained its rings: the last
        batch, then every call still going summarised, then the outputs flushed."""
        self.deliver(leftover)
        stopped = self.pipeline.finish()
        with self._outputs_lock:
            self._write(stopped)
            if self.frames.wanted:
                self._guarded("frames", self.frames.write, self.pipeline.take_frames(), stopped)
        self._apply_flows()
        self._guarded("output", flush_reporters, self.reporters)
        self._guarded("stats", lambda: _log.info(self.stats_line()))  # the final figures

    def _apply_flows(self) -> None:
        events = self.pipeline.take_flow_events()
        if self.media is MediaMode.OFF:
            return  # media not followed: nothing learned
        if self.capture is not None and events:
            self._guarded("flow_learning", self.capture.apply_flows, events, self.flow_stats, self.boundary)

    def _write(self, records: list[Record]) -> None:
        if self.chain:
            records = self.chain.process(records)
        for reporter in self.reporters:
            self._guarded("output", reporter.write, records)
        if self.recent is not None:
            self.recent.extend(r for r in records if isinstance(r, SipRecord))
        if self.book is not None:
            self._guarded("view", self.book.take, records)

    def _guarded(self, stage: str, step: Callable[..., Any], *args: Any) -> Any:
        """One step behind a failure boundary: a bug is counted, the loop goes on."""
        try:
            return step(*args)
        except Exception as exc:
            self.boundary.failed(stage, exc)
            return None

    @property
    def description(self) -> str:
        return self.capture.description if self.capture is not None else "nothing yet"

    def set_paused(self, paused: bool) -> None:
        assert self.capture is not None
        self.capture.set_paused(paused)

    def set_filters(self, before: KernelSettings, after: KernelSettings) -> None:
        assert self.capture is not None
        self.capture.set_filters(before, after)
        self.pipeline.opened_rules = after.opened_rules()

    # -- figures ------------------------------------------------------------------

    def records_lost(self) -> int:
        """Records an output could take neither in itself nor in the fallback, and
        frames a frame output could not write."""
        return sum(a.lost for a in account_outputs(self.reporters, self.kafka, self.frames))

    def accounts_line(self) -> str:
        """Where every record went: written, in the fallback, or lost (the operator's last line)."""
        accounts = account_outputs(self.reporters, self.kafka, self.frames)
        return accounts_line(self.pipeline.stats.records, accounts)

    def figures(self) -> dict[str, Any]:
        """The stats line's figures as plain data (a worker process sends them to its parent)."""
        return {"pipeline": dataclasses.asdict(self.pipeline.stats),
                "reassembly": dataclasses.asdict(self.pipeline.reassembler.stats),
                "kafka": dataclasses.asdict(self.kafka.stats) if self.kafka else None,
                "outputs": [r.summary() for r in self.reporters],
                "lost": self.records_lost()}

    def stats_line(self) -> str:
        sections = self.capture.stats_sections() if self.capture else []
        return StatsLine(self.label, sections, self.pipeline.stats, self.kafka.stats if self.kafka else None,
                         self.pipeline.reassembler.stats, [r.summary() for r in self.reporters]).format()

    def sample(self, sample: TaskSample, capturing: bool) -> TaskSample:
        if capturing and self.capture is not None:
            sample.capturers = self.capture.counters()
        add_boundary(sample, self.boundary)
        add_runner_figures(sample, self)
        return sample

    def keep_recent(self, count: int) -> None:
        if self.recent is None or self.recent.maxlen != count:
            self.recent = deque(self.recent or (), maxlen=count)

    def watch_calls(self) -> None:
        if self.book is None:
            self.book = CallBook()

    def calls(self, query: str, sort: str, limit: int) -> list[CallRow]:
        return self.book.rows(query, sort, limit) if self.book is not None else []

    def call_detail(self, call_id: str) -> CallDetail | None:
        return self.book.detail(call_id) if self.book is not None else None

    def recent_rows(self) -> list[list[str]]:
        """The latest SIP messages as table rows: time, direction, from, to, message, Call-ID."""
        rows = []
        for record in list(self.recent or ()):
            m = record.message
            rows.append([time.strftime("%H:%M:%S", time.localtime(record.ts_ns / 1e9)),
                         Direction(record.direction).name.lower()[:2],
                         f"{address_text(record.src)}:{record.sport}",
                         f"{address_text(record.dst)}:{record.dport}",
                         m.method or f"{m.status} {m.reason or ''}".strip(),
                         m.call_id])
        return rows
