"""One capture task: outputs, pipeline and capture, started in phases and
stopped in reverse.

Start runs the phases in order — validate, resolve, construct, init, wire,
assemble, start — and everything a phase acquires goes on one ExitStack. If
any phase fails, the stack unwinds at once: what was started is released in
reverse order, and the error names the task and the phase. Stop is
idempotent and safe from any number of threads: the first caller ends the
poll loop and unwinds the stack — detach, drain the rings, deliver, flush
the reporters, release the capture, close the reporters — and the others
wait for it to finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from otus_ebpf.capture import Capture, CaptureMode, OnStop, attach_hooks, open_capture, preflight
from otus_ebpf.counters import StatsLine
from otus_ebpf.errors import SetupError
from otus_ebpf.fanout import QueuedReporter
from otus_ebpf.flows import FlowStats
from otus_ebpf.metrics import TaskSample
from otus_ebpf.options import AttachOptions
from otus_ebpf.sampling import sample_task
from otus_ebpf.wiring import (
    FrameOutputs,
    Log,
    account_outputs,
    accounts_line,
    check_outputs,
    flush_reporters,
    open_frame_outputs,
    open_reporters,
)
from otus_ebpf.workers import WorkersCapture, workers_stats_line
from userspace.boundary import Boundary
from userspace.pipeline import Pipeline, Route
from userspace.records import Record, SipRecord
from userspace.reporters.kafka import KafkaReporter

POLL_TIMEOUT_MS = 100  # how soon a stop request is noticed
STOP_WAIT_S = 30.0  # how long a stop waits for the poll loop to notice
_EXAMPLE_SHOWN = 200  # bytes of the input that hit a bug, in its log line

CaptureOpener = Callable[..., Capture]
HandOffSink = Callable[[list[tuple[int, bytes]]], None]


def strict_mode() -> bool:
    """OTUS_STRICT=1 (the test suite sets it): a bug raises instead of being counted."""
    return os.environ.get("OTUS_STRICT") == "1"


_LIVE_FILTER_FIELDS = ("sip_ports", "signature", "include", "exclude")
# Output settings a running task can swap: new outputs open, the old ones flush and close.
_OUTPUT_FIELDS = ("out", "out_rotation", "out_fsync", "kafka", "kafka_backlog", "kafka_routing", "hep",
                  "hep_identity", "fallback", "queue_records", "pcap", "pcap_rotation", "pcap_format",
                  "pcap_per_call", "stats_interval_s")


def live_changeable(before: AttachOptions, after: AttachOptions, outputs: bool = False) -> bool:
    """Whether ``after`` differs from ``before`` only in filters a running capture
    can change (and, with ``outputs``, in output settings)."""
    kept = {name: getattr(before.kernel, name) for name in _LIVE_FILTER_FIELDS}
    same_kernel = dataclasses.replace(after.kernel, **kept)
    same_outputs = {name: getattr(before, name) for name in _OUTPUT_FIELDS} if outputs else {}
    return dataclasses.replace(after, kernel=same_kernel, **same_outputs) == before


class TaskState(Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class TaskStartError(SetupError):
    def __init__(self, task: str, phase: str, cause: BaseException) -> None:
        super().__init__(f"task {task}: {phase}: {cause}")
        self.phase = phase


def resolve_interface(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise SetupError(f"unknown interface {name!r} (see `ip link`)") from None


def require_root(what: str = "loading and attaching BPF programs") -> None:
    if os.geteuid() != 0:
        raise SetupError(f"not root: {what} needs root; run with sudo")


class Task:
    PHASES = ("validate", "resolve", "construct", "init", "wire", "assemble", "start")

    def __init__(self, name: str, options: AttachOptions, log: Log,
                 capture_opener: CaptureOpener | None = None, worker: bool = False,
                 route: Route | None = None, hand_off: HandOffSink | None = None) -> None:
        """``capture_opener``: open_capture unless given; tests hand in a stand-in for the kernel side.
        ``worker``: this is a worker process's task (otus_ebpf.workers): its parent did the interface
        checks and the attaching, and says when capture begins. ``route`` and ``hand_off``: SIP is
        sharded by Call-ID over workers; messages another worker owns go to ``hand_off``."""
        self._worker = worker
        self._route = route
        self._hand_off = hand_off
        self.name = name
        self.options = options
        self.state = TaskState.NEW
        self.phase: str | None = None
        self._log = log
        self._open_capture = capture_opener
        self._stack = contextlib.ExitStack()
        self._state_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._loop_idle = threading.Event()
        self._loop_idle.set()
        self._stopped = threading.Event()
        self._start_done = threading.Event()
        self._start_done.set()
        self._next_phase = 0
        self._partial = False
        self.interfaces: dict[int, str] = {}
        self.reporters: list[QueuedReporter] = []
        self.kafka: KafkaReporter | None = None
        self.capture: Capture | None = None
        self.pipeline: Pipeline | None = None
        self.frames = FrameOutputs()
        self.recent: deque[SipRecord] | None = None  # the last SIP records, kept for a live view
        self.boundary = Boundary(self._report_bug, strict_mode())
        self.flow_stats = FlowStats()
        self.failure: str | None = None  # why a running task failed
        self._outputs_stack = contextlib.ExitStack()
        self._outputs_lock = threading.RLock()
        self.periodic_stats = True  # a live view shows them instead

    # -- start ----------------------------------------------------------------

    def start(self, through: str | None = None) -> None:
        """Run the phases not yet run, through ``through`` (default: all); a caller
        may stop after "init" to do its own setup before anything is attached."""
        with self._state_lock:
            if self.state is not TaskState.NEW and not (self.state is TaskState.STARTING and self._partial):
                raise RuntimeError(f"task {self.name} is {self.state.value}; a task starts once")
            self.state = TaskState.STARTING
            self._start_done.clear()
        last = self.PHASES.index(through) if through is not None else len(self.PHASES) - 1
        try:
            while self._next_phase <= last:
                self.phase = self.PHASES[self._next_phase]
                getattr(self, f"_{self.phase}")()
                self._next_phase += 1
        except BaseException as exc:
            self._stack.close()  # release what the earlier phases started, in reverse
            self.state = TaskState.FAILED
            self._stopped.set()
            self._start_done.set()
            if isinstance(exc, SetupError | OSError):
                raise TaskStartError(self.name, self.phase or "?", exc) from exc
            raise
        self._partial = self._next_phase < len(self.PHASES)
        if not self._partial:
            self.state = TaskState.RUNNING
            self._start_done.set()

    def abandon(self) -> None:
        """Release a partly started task (its caller's own setup failed)."""
        if self._partial:
            self._stack.close()
            self.state = TaskState.FAILED
            self._partial = False
            self._stopped.set()
            self._start_done.set()

    def _validate(self) -> None:
        self.options.kernel.validate()
        if not self.options.interfaces:
            raise SetupError("no interface to capture on")

    def _resolve(self) -> None:
        self.interfaces = {resolve_interface(name): name for name in self.options.interfaces}
        require_root()
        if not self._worker:
            preflight(self.options.capture, self.interfaces)

    def _construct(self) -> None:
        self._clock_offset_ns = time.time_ns() - time.monotonic_ns()
        o = self.options
        self.pipeline = Pipeline(self.interfaces, self._clock_offset_ns, o.reassembly, o.tcp, o.calls,
                                 self.boundary, self._route)

    def _init(self) -> None:
        self._stack.callback(self._log_accounts)  # the very last word, once the outputs are closed
        if self._worker_processes():  # each worker opens its own outputs; they are checked here first
            check_outputs(self.options, self._log)
        else:
            self._open_outputs()

    def _log_accounts(self) -> None:
        """Where every record went: written, in the fallback, or lost (the operator's last line)."""
        if isinstance(self.capture, WorkersCapture):
            self._log(f"records lost in all workers: {self.records_lost()}")
        elif self.pipeline is not None:
            accounts = account_outputs(self.reporters, self.kafka, self.frames)
            self._log(accounts_line(self.pipeline.stats.records, accounts))

    def records_lost(self) -> int:
        """Records an output could take neither in itself nor in the fallback, and frames
        a frame output could not write (a worker's figures, added up, with worker processes)."""
        if isinstance(self.capture, WorkersCapture):
            return sum(int(p["figures"].get("lost", 0)) for p in self.capture.worker_payloads())
        return sum(a.lost for a in account_outputs(self.reporters, self.kafka, self.frames))

    def _open_outputs(self) -> None:
        self._stack.callback(self._close_outputs)
        self._outputs_stack, self.reporters, self.kafka, self.frames = self._outputs_for(self.options)
        assert self.pipeline is not None
        self.pipeline.keep_frames = self.frames.wanted

    def _close_outputs(self) -> None:
        self._outputs_stack.close()  # whichever outputs are current by then

    def _outputs_for(self, options: AttachOptions) -> tuple[contextlib.ExitStack, list[QueuedReporter],
                                                              KafkaReporter | None, FrameOutputs]:
        """Open a set of outputs on a stack of their own, so they can be swapped while running."""
        with contextlib.ExitStack() as stack:
            reporters, kafka = open_reporters(stack, options, ",".join(options.interfaces), self._log)
            frames = open_frame_outputs(stack, options, self._log)
            return stack.pop_all(), reporters, kafka, frames

    def _wire(self) -> None:
        assert self.pipeline is not None
        self.pipeline.keep_frames = self.frames.wanted

    def _worker_processes(self) -> bool:
        o = self.options
        return (self._open_capture is None and o.worker_processes and o.kernel.shards > 1
                and o.mode is not CaptureMode.AFPACKET and o.out != "-")

    def _assemble(self) -> None:
        on_stop: OnStop = self._on_capture_stop
        if self._worker_processes():
            try:
                capture_options, interfaces = self.options.capture, self.interfaces
                self.capture = WorkersCapture(
                    self._stack, capture_options, self.options, self.name, interfaces, self._log,
                    lambda stack, programs: attach_hooks(stack, programs, capture_options, interfaces),
                    lambda: self._log(self.stats_line()))  # the final figures, once all workers are done
            except SetupError as exc:
                if self.options.mode is CaptureMode.XDP:
                    raise
                self._log(f"eBPF capture unavailable ({exc}); falling back to AF_PACKET")
                self._open_outputs()  # this process reads the sockets, so it writes the records
                self.options = dataclasses.replace(self.options, mode=CaptureMode.AFPACKET)
            else:
                self._log(f"capturing: {self.capture.description}")
                return
        opener = self._open_capture or open_capture
        self.capture = opener(self._stack, self.options.capture, self.interfaces,
                                          self._clock_offset_ns, on_stop, self._log)
        self._log(f"{'reading' if self._worker else 'capturing'}: {self.capture.description}")

    def _start(self) -> None:
        now = time.monotonic()
        self._next_stats = now + self.options.stats_interval_s

    # -- running --------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` (or a stop request) is set; the caller's thread does the work.
        If the loop dies anyway (the capture itself failed), the task is FAILED and
        releases what it holds: it never claims to run when it does not."""
        if self.state not in (TaskState.RUNNING, TaskState.PAUSED):
            return
        self._loop_idle.clear()
        try:
            while not self._stop_requested.is_set() and not (stop is not None and stop.is_set()):
                self.poll_once()
        except Exception as exc:
            self._fail(exc)
        finally:
            self._loop_idle.set()

    def _fail(self, exc: Exception) -> None:
        with self._state_lock:
            if self.state not in (TaskState.RUNNING, TaskState.PAUSED):
                return  # a stop under way: it releases everything
            self.state = TaskState.FAILED
        self.failure = f"{type(exc).__name__}: {exc}"
        self._log(f"task {self.name}: FAILED: {self.failure}\n{_traceback(exc)}")
        try:
            self._stack.close()  # detach, drain, flush what can be
        except Exception as cleanup:
            self._log(f"task {self.name}: releasing after the failure: {type(cleanup).__name__}: {cleanup}")
        finally:
            self._stopped.set()

    def poll_once(self) -> None:
        capture, pipeline = self.capture, self.pipeline
        assert capture is not None and pipeline is not None
        self._deliver(capture.poll(POLL_TIMEOUT_MS))  # a capture that cannot be read fails the task
        expired = pipeline.expire(time.monotonic_ns())
        if expired:
            self._write(expired)
            self._guarded("frames", self.frames.write, [], expired)
        self._apply_flows()
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats += self.options.stats_interval_s
            if self.periodic_stats:
                self._guarded("stats", lambda: self._log(self.stats_line()))

    def _guarded(self, stage: str, step: Callable[..., Any], *args: Any) -> Any:
        """One step of the loop behind a failure boundary: a bug is counted, the loop goes on."""
        try:
            return step(*args)
        except Exception as exc:
            self.boundary.failed(stage, exc)
            return None

    def _deliver(self, batch: list[bytes]) -> None:
        assert self.pipeline is not None
        records = self.pipeline.process(batch)
        with self._outputs_lock:  # a reconfigure may swap the outputs between batches, not within one
            self._write(records)
            if self.frames.wanted:
                self._guarded("frames", self.frames.write, self.pipeline.take_frames(), records)
        self._apply_flows()
        self._hand_over()

    def _hand_over(self) -> None:
        assert self.pipeline is not None
        handoffs = self.pipeline.take_handoffs()
        if handoffs and self._hand_off is not None:
            self._guarded("handoff", self._hand_off, handoffs)

    def _apply_flows(self) -> None:
        assert self.pipeline is not None
        events = self.pipeline.take_flow_events()
        if self.capture is not None:  # even with none of its own: worker processes hand theirs in
            self._guarded("flow_learning", self.capture.apply_flows, events, self.flow_stats, self.boundary)

    def _write(self, records: list[Record]) -> None:
        for reporter in self.reporters:
            self._guarded("output", reporter.write, records)
        if self.recent is not None:
            self.recent.extend(r for r in records if isinstance(r, SipRecord))

    def _report_bug(self, stage: str, kind: str, exc: BaseException, example: bytes | None) -> None:
        """The first of each kind of internal error, with its traceback, in the log."""
        shown = f"; input: {example[:_EXAMPLE_SHOWN]!r}" if example is not None else ""
        self._log(f"task {self.name}: internal error in {stage}: {kind}: {exc} (counted in "
                  f"otus_internal_errors_total; capture goes on){shown}\n{_traceback(exc)}")

    def recent_rows(self) -> list[list[str]]:
        """The latest SIP messages as table rows: time, direction, from, to, message, Call-ID."""
        if isinstance(self.capture, WorkersCapture):
            return sorted(row for p in self.capture.worker_payloads() for row in p["recent"])[-16:]
        rows = []
        for record in list(self.recent or ()):
            m = record.message
            rows.append([time.strftime("%H:%M:%S", time.localtime(record.ts_ns / 1e9)),
                         record.direction.name.lower()[:2], f"{record.src}:{record.sport}",
                         f"{record.dst}:{record.dport}", m.method or f"{m.status} {m.reason or ''}".strip(),
                         m.call_id])
        return rows

    def figures(self) -> dict[str, Any]:
        """The stats line's figures as plain data (a worker process sends them to its task)."""
        assert self.pipeline is not None
        return {"pipeline": dataclasses.asdict(self.pipeline.stats),
                "reassembly": dataclasses.asdict(self.pipeline.reassembler.stats),
                "kafka": dataclasses.asdict(self.kafka.stats) if self.kafka else None,
                "outputs": [r.summary() for r in self.reporters],
                "lost": self.records_lost()}

    def stats_line(self) -> str:
        assert self.pipeline is not None
        sections = self.capture.stats_sections() if self.capture else []
        label = ",".join(self.options.interfaces)
        if isinstance(self.capture, WorkersCapture):
            return workers_stats_line(label, sections, self.capture.worker_payloads())
        return StatsLine(label, sections, self.pipeline.stats, self.kafka.stats if self.kafka else None,
                         self.pipeline.reassembler.stats, [r.summary() for r in self.reporters]).format()

    def metrics_sample(self) -> TaskSample:
        """Every figure of this task, read now (called by the metrics collector's thread)."""
        return sample_task(self)

    def pause(self) -> None:
        """Take no more packets, detach nothing; what is in the rings still comes through."""
        self._set_paused(True)

    def resume(self) -> None:
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        before, after = TaskState.RUNNING, TaskState.PAUSED
        if not paused:
            before, after = after, before
        with self._state_lock:
            if self.state is not before:
                raise ValueError(f"task {self.name} is {self.state.value}, not {before.value}")
            assert self.capture is not None
            self.capture.set_paused(paused)
            self.state = after
        self._log(f"task {self.name}: {'paused' if paused else 'resumed'}")

    def can_reconfigure(self, options: AttachOptions) -> bool:
        """Filters change live in any task; outputs in a task that writes them itself
        (with worker processes the workers own them: the task restarts instead)."""
        own_outputs = not isinstance(self.capture, WorkersCapture)
        return live_changeable(self.options, options, outputs=own_outputs)

    def reconfigure(self, options: AttachOptions) -> None:
        """Take new filters and outputs without detaching or dropping state (dialogs,
        streams, rings); raises ValueError when anything else changed (the caller
        restarts the task then)."""
        if not self.can_reconfigure(options):
            raise ValueError(f"task {self.name}: only filters and outputs change live")
        assert self.capture is not None
        before = self.options
        if options.kernel != before.kernel:
            self.capture.set_filters(before.kernel, options.kernel)
        if any(getattr(options, name) != getattr(before, name) for name in _OUTPUT_FIELDS):
            self._swap_outputs(options)
        self.options = options
        self._log(f"task {self.name}: reconfigured live")

    def _swap_outputs(self, options: AttachOptions) -> None:
        fresh = self._outputs_for(options)  # a bad setting fails here, and nothing changes
        with self._outputs_lock:
            old_stack, old_reporters = self._outputs_stack, self.reporters
            self._outputs_stack, self.reporters, self.kafka, self.frames = fresh
            assert self.pipeline is not None
            self.pipeline.keep_frames = self.frames.wanted
        flush_reporters(old_reporters, self._log)
        old_stack.close()

    # -- stop -----------------------------------------------------------------

    def _on_capture_stop(self, leftover: list[bytes]) -> None:
        """Called by the capture after it detached and drained its rings."""
        assert self.pipeline is not None
        self._deliver(leftover)
        stopped = self.pipeline.finish()  # calls still going: summarised, with their streams so far
        with self._outputs_lock:
            self._write(stopped)
            if self.frames.wanted:
                self._guarded("frames", self.frames.write, self.pipeline.take_frames(), stopped)
        self._apply_flows()
        self._guarded("output", flush_reporters, self.reporters, self._log)
        self._guarded("stats", lambda: self._log(self.stats_line()))  # the final figures

    def stop(self) -> None:
        """Stop once, whoever asks and however often; every caller returns when it is done."""
        self._start_done.wait()  # a start under way finishes (or fails and cleans up) first
        with self._state_lock:
            first = self.state in (TaskState.RUNNING, TaskState.PAUSED)
            if first:
                self.state = TaskState.STOPPING
            elif self.state is TaskState.NEW:
                self.state = TaskState.STOPPED
                self._stopped.set()
            # FAILED: start already released everything; STOPPING: another caller is at it
        if not first:
            self._stopped.wait()
            return
        self._stop_requested.set()
        self._loop_idle.wait(STOP_WAIT_S)  # the poll loop finishes its batch first
        try:
            self._stack.close()
        finally:
            self.state = TaskState.STOPPED
            self._stopped.set()


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
