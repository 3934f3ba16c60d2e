"""The body of one worker process: a Runner reading one ring shard (or the
events its parent dispatches to it), started by the supervisor
(otus_ebpf.capture.supervisor) after the fork.

Everything a worker says to its parent goes down one pipe, in order, from
a thread of its own (the Outbox): its figures twice a second, the media
endpoints it learns and forgets (the parent is the one writer of the flow
map), the SIP messages it framed for a Call-ID another worker owns, and its
encoded records for the files the parent writes for every worker
(otus_ebpf.outputs.joined). The worker's loop never waits on its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from otus_ebpf import logs
from otus_ebpf.capture.runner import Runner, bug_reporter, strict_mode
from otus_ebpf.capture.sampling import TaskSample, sample_to_json
from otus_ebpf.capture.sources import CaptureMode, OnStop
from otus_ebpf.kernel.flows import FlowStats
from otus_ebpf.kernel.loader import LoadedPrograms
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.streams import KernelStreams
from otus_ebpf.options import AttachOptions
from otus_ebpf.signals import SignalFlag
from userspace.boundary import Boundary
from userspace.callbook import detail_json
from userspace.endpoints import FlowEvent

REPORT_INTERVAL_S = 0.5
HANDOFF_WAIT_MS = 10  # a worker looks for hand-offs at least this often, its ring busy or not
DISPATCH_BATCH = 4096  # events a worker takes from its pipe before it processes them
FORWARD_BYTES = 64 << 20  # encoded records on their way to the parent before the worker waits
FORWARD_WAIT_S = 10.0  # how long it waits before the batch counts as failed (to the fallback, or lost)
RECENT_KEPT = 16
STOP_GRACE_S = 30.0
ORPHAN_CHECK_S = 0.5
ORPHAN_GRACE_S = 5.0  # for an orphaned worker's Kafka and HEP outputs to flush
SendFlows = Callable[[list[FlowEvent]], None]
_log = logs.get(__name__)


class ViewRequest(NamedTuple):
    """What a live view wants in a worker's reports: the rows for a query, and one call
    whole, until ``until`` (CLOCK_MONOTONIC, the machine's: a view that stops asking
    costs the worker nothing after it)."""

    query: str
    sort: str
    limit: int
    follow: str | None  # a Call-ID
    until: float


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker is told at its fork."""

    index: int
    workers: int
    task_name: str
    options: AttachOptions
    interfaces: dict[int, str]
    programs: LoadedPrograms
    dispatched: bool   # events come from the parent's reader, not from a shard of its own
    joined: bool       # the file outputs are the parent's
    clock_offset_ns: int  # the task's: a message framed by one worker and recorded by another keeps its time
    log_level: str = logs.DEFAULT_LEVEL  # the task's, told rather than inherited through the fork


class _WorkerCapture:
    """A worker's view of the kernel: events from somewhere; its flow changes go to
    the parent, the one writer of the flow map (otus_ebpf.kernel.flows.SharedFlows)."""

    description = "events"
    mode = CaptureMode.XDP  # workers read the programs' rings

    def __init__(self, shard: int, send_flows: SendFlows, programs: LoadedPrograms) -> None:
        self._shard = shard
        self._send_flows = send_flows
        self._programs = programs  # forked: the parent's maps, this process's own fds

    def poll(self, timeout_ms: int) -> list[bytes]:
        raise NotImplementedError

    def apply_flows(self, events: list[FlowEvent], stats: FlowStats, boundary: Boundary) -> None:
        if events:  # the media of a flow comes to the ring of the worker that learned it
            self._send_flows([dataclasses.replace(e, shard=self._shard) for e in events])

    def stats_sections(self) -> list[str]:
        return []  # the kernel's counters are the parent's to report

    def counters(self) -> dict[str, dict[str, int]]:
        return {}  # the kernel's counters are the parent's to report

    def set_filters(self, before: Any, after: Any) -> None:
        return None  # the maps are shared: the parent changes them

    def set_paused(self, paused: bool) -> None:
        return None  # the parent pauses the programs

    def stream_source(self) -> KernelStreams | None:
        return KernelStreams(self._programs.bpf)


class _ShardCapture(_WorkerCapture):
    """Binding: the worker reads its own shard's ring, and the messages other
    workers framed for Call-IDs it owns (hand-offs, through the parent)."""

    def __init__(self, stack: contextlib.ExitStack, programs: LoadedPrograms, shard: int,
                 handoffs: Connection, on_stop: OnStop, send_flows: SendFlows) -> None:
        super().__init__(shard, send_flows, programs)
        self._reader = open_reader(programs, only=(shard,))
        self._handoffs = handoffs
        self.description = f"shard {shard}"
        stack.callback(lambda: on_stop(self._reader.drain() + _take_all(handoffs)))

    def poll(self, timeout_ms: int) -> list[bytes]:
        return self._reader.poll(min(timeout_ms, HANDOFF_WAIT_MS)) + _take_all(self._handoffs)


def _take_all(connection: Connection) -> list[bytes]:
    """Whatever batches the pipe holds now, without waiting."""
    batch: list[bytes] = []
    with contextlib.suppress(EOFError, OSError):
        while connection.poll(0):
            batch += connection.recv()
    return batch


class _PipeCapture(_WorkerCapture):
    """Dispatch: the worker takes the batches the parent's reader sends it. One
    ring: the kernel copies the owner (this worker) into each media event of a
    flow learned here, and the dispatcher hands it back."""

    def __init__(self, stack: contextlib.ExitStack, index: int, events: Connection, on_stop: OnStop,
                 send_flows: SendFlows, programs: LoadedPrograms) -> None:
        super().__init__(index, send_flows, programs)
        self._events = events
        self.description = "events from the dispatcher"
        stack.callback(lambda: on_stop(self._take(wait=0.0, everything=True)))

    def poll(self, timeout_ms: int) -> list[bytes]:
        return self._take(wait=timeout_ms / 1000, everything=False)

    def _take(self, wait: float, everything: bool) -> list[bytes]:
        batch: list[bytes] = []
        with contextlib.suppress(EOFError, OSError):
            while self._events.poll(wait if not batch else 0):
                batch += self._events.recv()
                if not everything and len(batch) >= DISPATCH_BATCH:
                    break
        return batch


def worker_main(spec: WorkerSpec, control: Connection, reports: Connection, events: Connection,
                inherited: list[Connection], parent: int) -> None:
    """The body of a worker process (forked: it shares the loaded programs)."""
    stop = _become_worker(inherited, parent)
    sys.stderr = sys.__stderr__  # not the parent's held lines (a live view holds the terminal): its own
    index = spec.index
    logs.configure(spec.log_level, prefix=f"[w{index}] ")  # every line this process says is this worker's
    outbox = Outbox(reports, index)
    status = 0
    try:
        _serve(spec, control, events, outbox, stop)
    except BaseException as exc:  # a worker reports why it died, then dies
        with contextlib.suppress(Exception):
            outbox.send("failed", f"{type(exc).__name__}: {exc}")
        status = 1
    finally:
        with contextlib.suppress(Exception):
            outbox.close(STOP_GRACE_S)
            reports.close()
        os._exit(status)  # not the parent's exit handlers: they belong to the parent


def _serve(spec: WorkerSpec, control: Connection, events: Connection, outbox: Outbox,
           stop: SignalFlag) -> None:
    index = spec.index
    boundary = Boundary(bug_reporter(f"{spec.task_name}/w{index}"), strict_mode())
    runner = Runner(spec.interfaces, spec.options, boundary,
                    route=(index, spec.workers) if spec.workers > 1 else None,
                    hand_off=lambda handoffs: outbox.send("handoff", handoffs),
                    forward=outbox.forward if spec.joined else None, clock_offset_ns=spec.clock_offset_ns)
    runner.keep_recent(RECENT_KEPT)

    def send_flows(changes: list[FlowEvent]) -> None:
        outbox.send("flows", changes)

    view: list[ViewRequest] = []  # the latest a live view asked for, none until one opens

    def report(kind: str) -> None:
        sample = runner.sample(TaskSample("running"), capturing=True)
        outbox.send(kind, {"sample": sample_to_json(sample), "figures": runner.figures(),
                           "recent": runner.recent_rows(), "worker": index, **view_report(runner, view)})

    def listen() -> None:
        with contextlib.suppress(EOFError, OSError):
            while (word := control.recv()) != "stop":  # or the parent went away
                if isinstance(word, ViewRequest):
                    runner.watch_calls()
                    view[:] = [word]
        stop.set()

    failure: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                runner.poll_once()
        except BaseException as exc:
            failure.append(exc)

    with contextlib.ExitStack() as stack:
        runner.open_outputs(stack, spec.options)
        if spec.dispatched:
            runner.capture = _PipeCapture(stack, index, events, runner.on_capture_stop, send_flows,
                                          spec.programs)
        else:
            runner.capture = _ShardCapture(stack, spec.programs, index, events, runner.on_capture_stop,
                                           send_flows)
        runner.measure_in_kernel(runner.capture.stream_source(), index)
        _log.info(f"reading: {runner.capture.description}")
        outbox.send("ready", None)
        threading.Thread(target=listen, daemon=True).start()
        looping = threading.Thread(target=loop, name="otus-runner", daemon=True)
        looping.start()
        while looping.is_alive():
            looping.join(REPORT_INTERVAL_S)
            report("sample")
        if failure:
            raise failure[0]
    report("final")  # after the drain, the last batch and the flush


def view_report(runner: Runner, view: list[ViewRequest]) -> dict[str, Any]:
    """The rows and the followed call a live view asked for, as plain data."""
    if not view or time.monotonic() > view[0].until:
        return {}
    query, sort, limit, follow, _until = view[0]
    rows = [list(row) for row in runner.calls(query, sort, limit)]
    detail = runner.call_detail(follow) if follow is not None else None
    return {"calls": rows, "followed": detail_json(detail) if detail is not None else None}


class Outbox:
    """A worker's messages to its parent, sent by a thread of their own. The loop's
    thread must never wait on the parent: in dispatch mode the parent can be waiting
    on this worker's event pipe, which only the loop's thread empties. Encoded
    records (``forward``) are bounded in bytes: past the bound, the output's own
    thread waits, and its queue overflows, counted."""

    def __init__(self, connection: Connection, index: int, budget: int = FORWARD_BYTES) -> None:
        self._connection = connection
        self._index = index
        self._budget = budget
        self._queue: queue.SimpleQueue[tuple[tuple[str, int, Any], int] | None] = queue.SimpleQueue()
        self._room = threading.Condition()
        self._bytes = 0  # forwarded records not yet in the pipe
        self._broken = False  # the parent is gone: nothing more can reach it
        self._thread = threading.Thread(target=self._run, name="otus-outbox", daemon=True)
        self._thread.start()

    def send(self, kind: str, payload: Any) -> None:
        self._queue.put(((kind, self._index, payload), 0))

    def forward(self, output: str, payload: Any, records: int, size: int, wait: bool) -> None:
        """Encoded records for one of the parent's files (otus_ebpf.outputs.joined.Forward)."""
        with self._room:
            if not self._room.wait_for(lambda: self._broken or self._bytes == 0
                                       or self._bytes + size <= self._budget, FORWARD_WAIT_S if wait else 0):
                raise OSError(errno.ENOBUFS, f"the task's writer took none of {self._bytes} bytes "
                                             f"in {FORWARD_WAIT_S:.0f} s")
            if self._broken:
                raise OSError(errno.EPIPE, "the task's process is gone")
            self._bytes += size
        self._queue.put((("out", self._index, (output, payload, records, size)), size))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            message, size = item
            try:
                self._connection.send(message)
            except (OSError, ValueError):  # the parent is gone; this process follows it (PR_SET_PDEATHSIG)
                self._break()
                return
            except BaseException as exc:  # cannot pickle, no memory: nothing more reaches the parent
                _log.error(f"outbox: {type(exc).__name__}: {exc}; exiting")
                self._break()
                os._exit(1)  # the supervisor says so and starts the worker again
            if size:
                with self._room:
                    self._bytes -= size
                    self._room.notify_all()

    def _break(self) -> None:
        with self._room:
            self._broken = True
            self._room.notify_all()

    def close(self, timeout: float) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)


def _become_worker(inherited: list[Connection], parent: int) -> SignalFlag:
    """Let go of the parent's pipe ends, die with the parent, leave ^C and SIGHUP to
    it; the event is set by SIGTERM."""
    for connection in inherited:  # the parent's ends: held here, a dead parent would never be noticed
        with contextlib.suppress(OSError):
            connection.close()
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group: the parent decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = SignalFlag()  # set in a signal handler: no lock (otus_ebpf.signals)
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    threading.Thread(target=_watch_parent, args=(parent, stop), name="otus-orphan", daemon=True).start()
    return stop


def _watch_parent(parent: int, stop: SignalFlag) -> None:
    """Orphaned, a worker has nowhere to send its records (the files are the parent's):
    it stops at once and is gone within ORPHAN_GRACE_S, whatever it was waiting on."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    stop.set()
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """The backstop: the kernel sends SIGTERM when the parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)
