"""One capture task: outputs, pipeline and capture, started in phases and
stopped in reverse.

Start runs the phases in order — validate, resolve, construct, init,
assemble, start — and everything a phase acquires goes on one ExitStack. If
any phase fails, the stack unwinds at once: what was started is released in
reverse order, and the error names the task and the phase. Stop is
idempotent and safe from any number of threads: the first caller ends the
poll loop and unwinds the stack — detach, drain the rings, deliver, flush
the reporters, release the capture, close the reporters — and the others
wait for it to finish.

What the task runs is an Engine: a Runner reading its capture in this
process (otus_ebpf.capture.runner), or a Supervisor of worker processes
(otus_ebpf.capture.supervisor). The task only starts, pauses, reconfigures and
stops it, and asks it for its figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from otus_ebpf import logs
from otus_ebpf.capture.runner import Runner, bug_reporter, strict_mode
from otus_ebpf.capture.sampling import TaskSample
from otus_ebpf.capture.sources import Capture, CaptureMode, attach_hooks, open_capture, preflight
from otus_ebpf.capture.supervisor import Supervisor, WorkerStartError
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.loader import LoadedPrograms
from otus_ebpf.kernel.settings import KernelSettings, MediaMode
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.joined import JoinedOutputs
from otus_ebpf.outputs.wiring import check_outputs, open_output
from userspace.boundary import Boundary
from userspace.callbook import ROWS_SHOWN, CallDetail, CallRow

STOP_WAIT_S = 30.0  # how long a stop waits for the poll loop to notice

CaptureOpener = Callable[..., Capture]
_log = logs.get(__name__)


class StopFlag(Protocol):
    """A threading.Event, or a flag a signal handler sets (otus_ebpf.signals)."""

    def is_set(self) -> bool: ...


class Engine(Protocol):
    """What a task runs: its own capture and Runner, or a Supervisor of workers."""

    owns_outputs: bool  # whether its outputs can be swapped while it runs

    @property
    def description(self) -> str: ...

    def poll_once(self) -> None: ...

    def set_paused(self, paused: bool) -> None: ...

    def set_filters(self, before: KernelSettings, after: KernelSettings) -> None: ...

    def swap_outputs(self, options: AttachOptions) -> None: ...

    def stats_line(self) -> str: ...

    def sample(self, sample: TaskSample, capturing: bool) -> TaskSample: ...

    def keep_recent(self, count: int) -> None: ...

    def recent_rows(self) -> list[list[str]]: ...

    def watch_calls(self) -> None: ...

    def calls(self, query: str, sort: str, limit: int) -> list[CallRow]: ...

    def call_detail(self, call_id: str) -> CallDetail | None: ...

    def records_lost(self) -> int: ...

    def accounts_line(self) -> str: ...


# Not the tunnels (decap, vxlan_ports, mirrors): each runner's pipeline (in every worker) reads a
# tunnelled record's outer headers with them, so a change restarts the task.
_LIVE_FILTER_FIELDS = ("sip_ports", "signature", "include", "exclude", "drop_methods", "dedup",
                       "dedup_window_ms")
# Output settings a running task can swap: new outputs open, the old ones flush and close.
_OUTPUT_FIELDS = ("out", "out_rotation", "out_fsync", "kafka", "kafka_backlog", "kafka_routing", "hep",
                  "hep_identity", "fallback", "queue_records", "pcap", "pcap_rotation", "pcap_format",
                  "pcap_per_call", "stats_interval_s")


def live_changeable(before: AttachOptions, after: AttachOptions, outputs: bool = False) -> bool:
    """Whether ``after`` differs from ``before`` only in filters a running capture
    can change (and, with ``outputs``, in output settings)."""
    if before.media != after.media:
        return False  # the kernel's media mode and each runner's way of measuring are set at start
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
    PHASES = ("validate", "resolve", "construct", "init", "assemble", "start")

    def __init__(self, name: str, options: AttachOptions,
                 capture_opener: CaptureOpener | None = None) -> None:
        """``capture_opener``: open_capture unless given; tests hand in a stand-in for the kernel side."""
        self.name = name
        self.options = options
        self.state = TaskState.NEW
        self.phase: str | None = None
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
        self.boundary = Boundary(bug_reporter(name), strict_mode())
        self.runner: Runner | None = None  # when this process captures itself
        self.engine: Engine | None = None
        self._joined: JoinedOutputs | None = None
        self._recent: int | None = None
        self._watching = False  # a live view reads its calls (calls, call_detail)
        self.failure: str | None = None  # why a running task failed
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
        preflight(self.options.capture, self.interfaces)

    def _construct(self) -> None:
        if self.options.kernel.media is None and self.options.media is MediaMode.PACKETS:
            _log.info("media: every RTP packet goes up, for the pcap output (--media stats keeps RTP "
                     "statistics in the kernel, and the pcap without RTP)")
        if not self._worker_processes():
            self.runner = Runner(self.interfaces, self.options, self.boundary)
            self._keep_for_views()

    def _init(self) -> None:
        self._stack.callback(self._log_accounts)  # the very last word, once the outputs are closed
        if self.runner is not None:
            self.runner.open_outputs(self._stack, self.options)
            return
        if self.options.per_worker_files and self.options.out == "-":
            raise SetupError("per-worker files need a file for the records, not stdout (--out -)")
        check_outputs(self.options)  # what each worker will open on its own
        if not self.options.per_worker_files:
            label = ",".join(self.options.interfaces)
            self._joined = JoinedOutputs(open_output(self.options.out, label), self.options)
            self._stack.callback(self._joined.close)

    def _log_accounts(self) -> None:
        """Where every record went: written, in the fallback, or lost (the operator's last line)."""
        if self.engine is not None:
            lost = self.engine.records_lost()  # then the line must show at --log-level warning too
            _log.log(logging.WARNING if lost else logging.INFO, self.engine.accounts_line())

    def records_lost(self) -> int:
        """Records an output could take neither in itself nor in the fallback, and frames
        a frame output could not write (the workers' and their writer's, with workers)."""
        return self.engine.records_lost() if self.engine is not None else 0

    def _worker_processes(self) -> bool:
        o = self.options
        return (self._open_capture is None and o.worker_processes and o.kernel.shards > 1
                and o.mode is not CaptureMode.AFPACKET)

    def _assemble(self) -> None:
        if self.runner is None:
            try:
                self.engine = self._supervise()
            except WorkerStartError:
                raise
            except SetupError as exc:
                if self.options.mode is CaptureMode.XDP:
                    raise
                _log.warning(f"eBPF capture unavailable ({exc}); falling back to AF_PACKET")
                self.options = dataclasses.replace(self.options, mode=CaptureMode.AFPACKET)
                self._capture_here()
            else:
                self._keep_for_views()
                _log.info(f"capturing: {self.engine.description}")
            return
        self._capture_here()

    def _supervise(self) -> Supervisor:
        """Workers on a stack of their own: if anything fails (an attach, say), what was
        started — workers, programs, threads — is released before a fall back."""
        options, interfaces = self.options.capture, self.interfaces

        def attach(stack: contextlib.ExitStack, programs: LoadedPrograms) -> list[str]:
            return attach_hooks(stack, programs, options, interfaces)

        with contextlib.ExitStack() as started:
            supervisor = Supervisor(started, self.options, self.name, interfaces, attach,
                                    self._joined, self.boundary)
            self._stack.enter_context(started.pop_all())
        return supervisor

    def _capture_here(self) -> None:
        """This process reads the capture: a Runner of its own (and, after a fall back from
        worker processes, the outputs it writes itself instead of the joined ones)."""
        if self.runner is None:
            if self._joined is not None:
                self._joined.close()
                self._joined = None
            self.runner = Runner(self.interfaces, self.options, self.boundary)
            self._keep_for_views()
            self.runner.open_outputs(self._stack, self.options)
        runner: Runner = self.runner
        opener = self._open_capture or open_capture
        runner.capture = opener(self._stack, self.options.capture, self.interfaces,
                                runner.clock_offset_ns, runner.on_capture_stop)
        runner.measure_in_kernel(runner.capture.stream_source(), None)
        self.engine = runner
        _log.info(f"capturing: {runner.capture.description}")

    def _start(self) -> None:
        self._next_stats = time.monotonic() + self.options.stats_interval_s

    # -- running --------------------------------------------------------------

    def run(self, stop: StopFlag | None = None) -> None:
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
        _log.error(f"task {self.name}: FAILED: {self.failure}", exc_info=exc)
        try:
            self._stack.close()  # detach, drain, flush what can be
        except Exception as cleanup:
            _log.error(f"task {self.name}: releasing after the failure: {type(cleanup).__name__}: {cleanup}")
        finally:
            self._stopped.set()

    def poll_once(self) -> None:
        assert self.engine is not None
        self.engine.poll_once()
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats += self.options.stats_interval_s
            if self.periodic_stats:
                try:
                    _log.info(self.stats_line())
                except Exception as exc:
                    self.boundary.failed("stats", exc)

    def keep_recent(self, count: int) -> None:
        """Keep the last ``count`` SIP messages for a live view (recent_rows)."""
        self._recent = count
        self._keep_for_views()

    def watch_calls(self) -> None:
        """Keep the calls a live view shows from now on, also across a restart."""
        self._watching = True
        self._keep_for_views()

    def _keep_for_views(self) -> None:
        engine = self.engine or self.runner  # a runner exists before it becomes the engine
        if engine is None:
            return
        if self._recent is not None:
            engine.keep_recent(self._recent)
        if self._watching:
            engine.watch_calls()

    def calls(self, query: str = "", sort: str = "start", limit: int = ROWS_SHOWN) -> list[CallRow]:
        """The call list of a live view (watch_calls first), each row naming this task."""
        engine = self.engine
        if engine is None:
            return []
        return [row._replace(task=self.name) for row in engine.calls(query, sort, limit)]

    def call_detail(self, call_id: str) -> CallDetail | None:
        engine = self.engine
        return engine.call_detail(call_id) if engine is not None else None

    def recent_rows(self) -> list[list[str]]:
        """The latest SIP messages as table rows: time, direction, from, to, message, Call-ID."""
        return self.engine.recent_rows() if self.engine is not None else []

    @property
    def capture_mode(self) -> str:
        """How it captures once started, ``auto`` resolved: xdp or afpacket."""
        if isinstance(self.engine, Supervisor):
            return CaptureMode.XDP.value
        if self.runner is not None and self.runner.capture is not None:
            return self.runner.capture.mode.value
        return self.options.mode.value

    def stats_line(self) -> str:
        if self.engine is None:
            return f"otus-ebpf: {','.join(self.options.interfaces)} {self.state.value}"
        return self.engine.stats_line()

    def metrics_sample(self) -> TaskSample:
        """Every figure of this task, read now (called by the metrics collector's thread)."""
        sample = TaskSample(self.state.value)
        if self.engine is None:
            return sample
        return self.engine.sample(sample, self.state in (TaskState.RUNNING, TaskState.PAUSED))

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
            assert self.engine is not None
            self.engine.set_paused(paused)
            self.state = after
        _log.info(f"task {self.name}: {'paused' if paused else 'resumed'}")

    def can_reconfigure(self, options: AttachOptions) -> bool:
        """Filters change live in any task; outputs in a task that writes them itself
        (with worker processes the workers own some of them: the task restarts instead)."""
        own_outputs = self.engine is not None and self.engine.owns_outputs
        return live_changeable(self.options, options, outputs=own_outputs)

    def reconfigure(self, options: AttachOptions) -> None:
        """Take new filters and outputs without detaching or dropping state (dialogs,
        streams, rings); raises ValueError when anything else changed (the caller
        restarts the task then)."""
        if not self.can_reconfigure(options):
            raise ValueError(f"task {self.name}: only filters and outputs change live")
        assert self.engine is not None
        before = self.options
        if options.kernel != before.kernel:
            self.engine.set_filters(before.kernel, options.kernel)
        if any(getattr(options, name) != getattr(before, name) for name in _OUTPUT_FIELDS):
            self.engine.swap_outputs(options)
        self.options = options
        _log.info(f"task {self.name}: reconfigured live")

    # -- stop -----------------------------------------------------------------

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
