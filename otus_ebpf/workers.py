"""Worker processes, one per ring shard ("binding" dispatch), so that parsing
is not held to one core by the GIL.

The task's process loads the programs, forks the workers, and only then
attaches: every worker inherits the maps and opens the ring of its own
shard (the kernel writes each conversation to one shard, and a media flow to
the shard that learned it, so a worker sees whole dialogs). Each worker is a
task of its own — pipeline, reporters, flow learning — with its own output
files (``NAME.wN.EXT``). Twice a second it reports its figures to the
parent, which adds them up for the stats line, /metrics and the live view.

Stop runs in this order: detach the programs (the parent's ExitStack),
tell every worker to stop — each drains its ring, delivers, flushes its
reporters, reports a last time and exits — then unload the programs. A
worker that does not finish within the grace period is killed, and said so.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import queue
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from otus_ebpf.capture import CaptureOptions, OnStop
from otus_ebpf.counters import StatsLine, format_kernel_counts, read_kernel_counters, read_shard_failures
from otus_ebpf.flows import FlowStats, SharedFlows, apply_each, endpoint_address
from otus_ebpf.loader import LoadedPrograms, load_programs
from otus_ebpf.maps import Endpoint
from otus_ebpf.metrics import TaskSample, sample_from_json, sample_to_json
from otus_ebpf.options import AttachOptions, Dispatch, Strategy
from otus_ebpf.ring import Reader, open_reader
from userspace.boundary import Boundary
from userspace.endpoints import FlowEvent
from userspace.event import EVENT_FIELDS, struct_format
from userspace.pipeline import PipelineStats
from userspace.reassembly import ReassemblyStats
from userspace.reporters.kafka import KafkaStats

REPORT_INTERVAL_S = 0.5
HANDOFF_WAIT_MS = 10  # a worker looks for hand-offs at least this often, its ring busy or not
HANDOFF_QUEUE_BYTES = 64 << 20  # hand-offs waiting for one worker's pipe before more are dropped (counted)
DISPATCH_BATCH = 4096  # events a worker takes from its pipe before it processes them
SendFlows = Callable[[list[FlowEvent]], None]
# Where the kernel's symmetric flow hash sits in an event record (userspace.event).
_FLOW_HASH = struct.calcsize(struct_format(EVENT_FIELDS[:[f[0] for f in EVENT_FIELDS].index("flow_hash")]))
STOP_GRACE_S = 30.0
DEFAULT_OUT_DIR = Path("otus-out")


def worker_options(options: AttachOptions, index: int, label: str) -> AttachOptions:
    """A worker's settings: its own output files, the shared per-call directory."""
    def suffixed(path: str | None) -> str | None:
        if path is None:
            return None
        p = Path(path)
        return str(p.with_name(f"{p.stem}.w{index}{p.suffix}"))

    out = options.out or str(DEFAULT_OUT_DIR / f"sip-{label.replace(',', '+')}.jsonl")
    kernel = dataclasses.replace(options.kernel)
    return dataclasses.replace(options, out=suffixed(out), pcap=suffixed(options.pcap),
                               fallback=suffixed(options.fallback), kernel=kernel)


class _WorkerCapture:
    """A worker's view of the kernel: events from somewhere; its flow changes go to
    the parent, the one writer of the flow map (otus_ebpf.flows.SharedFlows)."""

    description = "events"

    def __init__(self, programs: LoadedPrograms, shard: int, send_flows: SendFlows) -> None:
        self._programs = programs
        self._shard = shard
        self._send_flows = send_flows
        self.lost = 0

    def poll(self, timeout_ms: int) -> list[bytes]:
        raise NotImplementedError

    def apply_flows(self, events: list[FlowEvent], stats: FlowStats, boundary: Boundary) -> None:
        if events:  # the media of a flow comes to the ring of the worker that learned it
            self._send_flows([dataclasses.replace(e, shard=self._shard) for e in events])

    def stats_sections(self) -> list[str]:
        return [f"perf_lost={self.lost}"] if self.lost else []

    def counters(self) -> dict[str, dict[str, int]]:
        return {}  # the kernel's counters are the parent's to report

    def set_filters(self, before: Any, after: Any) -> None:
        return None  # the maps are shared: the parent changes them

    def set_paused(self, paused: bool) -> None:
        return None  # the parent pauses the programs


class _ShardCapture(_WorkerCapture):
    """Binding: the worker reads its own shard's ring, and the messages other
    workers framed for Call-IDs it owns (hand-offs, through the parent)."""

    def __init__(self, stack: contextlib.ExitStack, programs: LoadedPrograms, shard: int,
                 handoffs: Connection, on_stop: OnStop, send_flows: SendFlows) -> None:
        super().__init__(programs, shard, send_flows)
        self._reader = open_reader(programs.bpf, programs.delivery, programs.shards, only=(shard,))
        self._handoffs = handoffs
        self.description = f"shard {shard}"
        stack.callback(lambda: on_stop(self._reader.drain() + _take_all(handoffs)))

    def poll(self, timeout_ms: int) -> list[bytes]:
        batch = self._reader.poll(min(timeout_ms, HANDOFF_WAIT_MS)) + _take_all(self._handoffs)
        self.lost = self._reader.lost
        return batch


def _take_all(connection: Connection) -> list[bytes]:
    """Whatever batches the pipe holds now, without waiting."""
    batch: list[bytes] = []
    with contextlib.suppress(EOFError, OSError):
        while connection.poll(0):
            batch += connection.recv()
    return batch


class _PipeCapture(_WorkerCapture):
    """Dispatch: the worker takes the batches the task's reader sends it."""

    def __init__(self, stack: contextlib.ExitStack, programs: LoadedPrograms, index: int, events: Connection,
                 on_stop: OnStop, send_flows: SendFlows) -> None:
        # One ring: the kernel copies the owner (this worker) into each media event
        # of a flow learned here, and the dispatcher hands it back.
        super().__init__(programs, index, send_flows)
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


def _worker_main(index: int, task_name: str, options: AttachOptions, programs: LoadedPrograms,
                 control: Connection, reports: Connection, events: Connection, dispatched: bool,
                 inherited: list[Connection], parent: int) -> None:
    """The body of a worker process (forked: it shares the loaded programs)."""
    from otus_ebpf.task import Task, TaskState  # noqa: PLC0415 - the task module imports this one

    stop = _become_worker(inherited, parent)
    status = 0

    def log(message: str) -> None:
        print(f"[w{index}] {message}", file=sys.stderr, flush=True)

    outbox = _Outbox(reports)
    send = outbox.send

    def send_flows(changes: list[FlowEvent]) -> None:
        send(("flows", index, changes))

    def hand_off(handoffs: list[tuple[int, bytes]]) -> None:
        send(("handoff", index, handoffs))

    def opener(stack: contextlib.ExitStack, _options: CaptureOptions, _interfaces: dict[int, str],
               _offset: int, on_stop: OnStop, _log: Any) -> _WorkerCapture:
        if dispatched:
            return _PipeCapture(stack, programs, index, events, on_stop, send_flows)
        return _ShardCapture(stack, programs, index, events, on_stop, send_flows)

    workers = options.kernel.shards
    task = Task(f"{task_name}/w{index}", options, log, opener, worker=True,
                route=(index, workers) if workers > 1 else None, hand_off=hand_off)
    task.recent = deque(maxlen=16)
    task.periodic_stats = False

    def report(kind: str) -> None:
        payload = {"sample": sample_to_json(task.metrics_sample()), "figures": task.figures(),
                   "recent": task.recent_rows(), "worker": index}
        send((kind, index, payload))

    def listen() -> None:
        with contextlib.suppress(EOFError, OSError):
            control.recv()  # "stop", or the parent went away
        stop.set()

    try:
        task.start()
        threading.Thread(target=listen, daemon=True).start()
        runner = threading.Thread(target=task.run, args=(stop,), daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(REPORT_INTERVAL_S)
            report("sample")
        if task.state is TaskState.FAILED:
            raise RuntimeError(task.failure or "the worker's task failed")
        task.stop()
        report("final")
    except BaseException as exc:  # a worker reports why it died, then dies
        with contextlib.suppress(Exception):
            send(("failed", index, f"{type(exc).__name__}: {exc}"))
        status = 1
    finally:
        with contextlib.suppress(Exception):
            outbox.close(STOP_GRACE_S)
            reports.close()
        os._exit(status)  # not the parent's exit handlers: they belong to the parent


class _Outbox:
    """A worker's messages to its parent, sent by a thread of their own. The task's
    thread must never wait on the parent: in dispatch mode the parent can be waiting
    on this worker's event pipe, which only the task's thread empties."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._queue: queue.SimpleQueue[tuple[str, int, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="otus-outbox", daemon=True)
        self._thread.start()

    def send(self, message: tuple[str, int, Any]) -> None:
        self._queue.put(message)

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self._connection.send(message)
            except (OSError, ValueError):
                return  # the parent is gone; this process follows it (PR_SET_PDEATHSIG)

    def close(self, timeout: float) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)


def _become_worker(inherited: list[Connection], parent: int) -> threading.Event:
    """Let go of the parent's pipe ends, die with the parent, leave ^C and SIGHUP to
    it; the event is set by SIGTERM."""
    for connection in inherited:  # the parent's ends: held here, a dead parent would never be noticed
        with contextlib.suppress(OSError):
            connection.close()
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group: the parent decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    return stop


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """The backstop: the kernel sends SIGTERM when the parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


@dataclasses.dataclass(slots=True)
class _Worker:
    index: int
    process: Any
    control: Connection
    reports: Connection
    events: Connection  # batches of events: hand-offs, and in dispatch mode everything
    latest: dict[str, Any] | None = None
    final: bool = False
    failed: str | None = None
    deaths: int = 0              # in a row, for the restart backoff
    restart_at: float | None = None
    started: float = 0.0         # monotonic

    sending: threading.Lock = dataclasses.field(default_factory=threading.Lock)  # one writer of events

    def connections(self) -> list[Connection]:
        return [self.control, self.reports, self.events]


RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HEALTHY_AFTER_S = 60.0  # a worker up this long has its backoff reset


class WorkersCapture:
    """The Capture of a task whose parsing runs in worker processes. A worker
    that dies is said so, counted, and started again after a backoff."""

    def __init__(self, stack: contextlib.ExitStack, options: CaptureOptions, task_options: AttachOptions,
                 task_name: str, interfaces: dict[int, str], log: Callable[[str], None],
                 attach: Callable[[contextlib.ExitStack, LoadedPrograms], list[str]],
                 on_stopped: Callable[[], None]) -> None:
        """``on_stopped``: called when every worker has finished (the final figures are in)."""
        self._log = log
        self._on_stopped = on_stopped
        count = options.kernel.shards
        dispatching = task_options.dispatch is Dispatch.DISPATCH
        kernel = dataclasses.replace(options.kernel, route_by_call_id=True)
        kernel = dataclasses.replace(kernel, shards=1) if dispatching else kernel
        programs = load_programs(kernel)
        stack.callback(programs.close)  # last: after the workers have drained their rings
        self._programs = programs
        self._round_robin = task_options.strategy is Strategy.ROUND_ROBIN
        self._next = 0
        self._reader: Reader | None = open_reader(programs.bpf, programs.delivery, 1) if dispatching else None
        self._dispatching = dispatching
        self._task_name = task_name
        self._task_options = task_options
        self._label = ",".join(interfaces.values())
        self._context = multiprocessing.get_context("fork")
        self._workers: list[_Worker] = []
        self._stopping = False
        self._retired: list[dict[str, Any]] = []
        self.restarts = 0
        self.dispatch_dropped = 0  # events for a worker that was down, or whose pipe refused them
        self._flows = SharedFlows()  # the workers' endpoints; this process writes the flow map
        self._flow_writes: list[FlowEvent] = []
        self._handoffs = _HandOffs(self._send_handoffs, count)
        stack.callback(self._stop_workers)
        for index in range(count):
            self._workers.append(self._spawn(index))
        hooks = attach(stack, programs)  # only now: every worker is reading
        strategy = task_options.strategy.value
        how = (f"1 ring dispatched ({strategy}) to {count} worker process(es)" if dispatching
               else f"{count} worker process(es)")
        self.description = f"{'; '.join(hooks)}; {how}, {programs.delivery.value} delivery"

    def _spawn(self, index: int) -> _Worker:
        control_here, control_there = self._context.Pipe()
        reports_here, reports_there = self._context.Pipe(duplex=False)  # (receiving end, sending end)
        events_there, events_here = self._context.Pipe(duplex=False)
        inherited = [c for w in self._workers if w.index != index for c in w.connections()]
        inherited += [control_here, reports_here, events_here]
        process = self._context.Process(
            target=_worker_main, name=f"otus-worker-{index}",
            args=(index, self._task_name, worker_options(self._task_options, index, self._label),
                  self._programs, control_there, reports_there, events_there, self._dispatching, inherited,
                  os.getpid()))
        process.start()
        for end in (control_there, reports_there, events_there):
            end.close()
        return _Worker(index, process, control_here, reports_here, events_here, started=time.monotonic())

    # -- figures from the workers ---------------------------------------------------

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Dispatch what the ring holds (dispatch mode), collect the workers' reports,
        restart the dead; the task's own pipeline gets no events."""
        if self._reader is not None:
            self._dispatch(self._reader.poll(timeout_ms))
            self._collect(0)
        else:
            self._collect(timeout_ms / 1000)
        self._restart_due()
        return []

    def _dispatch(self, batch: list[bytes]) -> None:
        """Hand events out: by conversation (the kernel's symmetric hash) or in turn.
        A worker's pipe is its bounded queue: when it is full this waits, the ring
        fills, and the kernel counts what it cannot take."""
        if not batch:
            return
        workers = self._workers
        shares: list[list[bytes]] = [[] for _ in workers]
        if self._round_robin:
            up = [i for i, w in enumerate(workers) if w.failed is None] or [0]
            for i, event in enumerate(batch, self._next):
                shares[up[i % len(up)]].append(event)
            self._next = (self._next + len(batch)) % len(up)
        else:  # modulo every worker, up or not: a death must not move the other conversations
            n = len(workers)
            for event in batch:
                shares[int.from_bytes(event[_FLOW_HASH:_FLOW_HASH + 4], "little") % n].append(event)
        for worker, share in zip(workers, shares, strict=True):
            if not share:
                continue
            if worker.failed is not None:
                self.dispatch_dropped += len(share)  # its worker is down until its restart
                continue
            try:
                with worker.sending:
                    worker.events.send(share)
            except OSError:
                self.dispatch_dropped += len(share)

    def _send_handoffs(self, owner: int, batch: list[bytes]) -> bool:
        """In a forwarding thread: a batch of hand-offs down the owner's pipe. The
        owner's loop never waits on this process, so this wait ends."""
        worker = self._workers[owner]
        if worker.failed is not None or worker.final:  # a finished worker reads no more: counted, not sent
            return False
        try:
            with worker.sending:
                worker.events.send(batch)
        except (OSError, ValueError):
            return False
        return True

    def _collect(self, timeout: float) -> None:
        ready = wait([w.reports for w in self._workers if not w.final and w.failed is None], timeout)
        for worker in self._workers:
            if worker.reports not in ready:
                continue
            try:
                while worker.reports.poll():
                    kind, _index, payload = worker.reports.recv()
                    if kind == "failed":
                        self._died(worker, str(payload))
                    elif kind == "flows":
                        self._flow_writes += self._flows.apply(worker.index, payload)
                    elif kind == "handoff":
                        self._handoffs.forward(payload)
                    else:
                        worker.latest = payload
                        worker.final = kind == "final"
            except (EOFError, OSError):
                if not worker.final and worker.failed is None:
                    worker.process.join(1.0)
                    self._died(worker, f"exited with status {worker.process.exitcode}")

    def _died(self, worker: _Worker, why: str) -> None:
        worker.failed = why
        self._flow_writes += self._flows.drop(worker.index)  # its calls are gone with it
        if worker.latest is not None:  # what it had counted stays counted (whatever it held is lost)
            self._retired.append({**worker.latest, "retired": True})
            worker.latest = None
        if self._stopping:
            self._log(f"worker {worker.index} failed while stopping: {why}")
            return
        healthy = time.monotonic() - worker.started >= HEALTHY_AFTER_S
        worker.deaths = 1 if healthy else worker.deaths + 1
        delay = RESTART_BACKOFF_S[min(worker.deaths, len(RESTART_BACKOFF_S)) - 1]
        worker.restart_at = time.monotonic() + delay
        self._log(f"worker {worker.index} failed: {why}; restarting it in {delay:.0f} s")

    def _restart_due(self) -> None:
        now = time.monotonic()
        for position, worker in enumerate(self._workers):
            if worker.restart_at is None or worker.restart_at > now or self._stopping:
                continue
            self._release(worker)
            fresh = self._spawn(worker.index)
            fresh.deaths = worker.deaths
            self._workers[position] = fresh
            self.restarts += 1
            self._log(f"worker {worker.index} restarted (pid {fresh.process.pid})")

    def _release(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        for connection in worker.connections():
            connection.close()

    def worker_payloads(self) -> list[dict[str, Any]]:
        """Every worker's latest figures, and the last ones of workers that died."""
        return [*self._retired, *(w.latest for w in self._workers if w.latest is not None)]

    def apply_flows(self, events: list[FlowEvent], stats: FlowStats, boundary: Boundary) -> None:
        """The workers' flow changes, collected by poll, written to the kernel's map."""
        writes, self._flow_writes = self._flow_writes, []
        maps = self._programs.maps
        apply_each(writes,
                   lambda e: maps.learn_flow(Endpoint(endpoint_address(e.address), e.port), e.kind, e.shard,
                                             self._flows.shared((e.address, e.port))),
                   lambda e: maps.forget_flow(Endpoint(endpoint_address(e.address), e.port)),
                   stats, boundary)

    def stats_sections(self) -> list[str]:
        return format_kernel_counts(read_kernel_counters(self._programs.bpf))

    def counters(self) -> dict[str, dict[str, int]]:
        bpf = self._programs.bpf
        kernel = {f"{d.name.lower()}_{c.name.lower()}": v for (d, c), v in read_kernel_counters(bpf).items()}
        shards = read_shard_failures(bpf, self._programs.shards)
        found = {"kernel": kernel, **{f"shard{n}": {"submit_failed": f} for n, f in enumerate(shards)}}
        if self._reader is not None:
            found["dispatch"] = {"dropped": self.dispatch_dropped}
        found["handoff"] = {"forwarded": self._handoffs.forwarded, "dropped": self._handoffs.dropped}
        return found

    def workers_up(self) -> dict[str, bool]:
        return {f"w{w.index}": w.process.is_alive() and w.failed is None for w in self._workers}

    def set_filters(self, before: Any, after: Any) -> None:
        self._programs.maps.apply_filters(before, after)

    def set_paused(self, paused: bool) -> None:
        self._programs.maps.set_paused(paused)

    # -- stop ---------------------------------------------------------------------------

    def _stop_workers(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._dispatch(self._reader.drain())  # detached: what is left goes out before the word to stop
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.control.send("stop")
        deadline = time.monotonic() + STOP_GRACE_S
        while any(not w.final and w.failed is None for w in self._workers) and time.monotonic() < deadline:
            self._collect(0.2)
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                self._log(f"worker {worker.index} did not finish in {STOP_GRACE_S:.0f} s; killing it")
                worker.process.kill()
                worker.process.join()
            for connection in worker.connections():
                connection.close()
        self._handoffs.close()
        self._on_stopped()


class _HandOffs:
    """Forwards messages one worker framed to the worker that owns their Call-ID:
    a queue and a thread per owner, so that the parent's loop never blocks on a
    worker's pipe (a worker blocked sending to the parent while the parent is
    blocked sending to it would be a deadlock). A full queue drops, counted."""

    def __init__(self, send: Callable[[int, list[bytes]], bool], workers: int) -> None:
        self._send = send
        self._queues: list[queue.SimpleQueue[list[bytes] | None]] = [
            queue.SimpleQueue() for _ in range(workers)]
        self._queued_bytes = [0] * workers  # bounded by HANDOFF_QUEUE_BYTES each
        self._counting = threading.Lock()  # the loop's thread and the forwarders count
        self._threads = [threading.Thread(target=self._run, args=(owner,), name=f"otus-handoff-{owner}",
                                          daemon=True) for owner in range(workers)]
        self.forwarded = 0
        self.dropped = 0
        for thread in self._threads:
            thread.start()

    def forward(self, handoffs: list[tuple[int, bytes]]) -> None:
        by_owner: dict[int, list[bytes]] = {}
        for owner, raw in handoffs:
            by_owner.setdefault(owner, []).append(raw)
        for owner, batch in by_owner.items():
            size = sum(map(len, batch))
            with self._counting:
                room = 0 <= owner < len(self._queues) and \
                    self._queued_bytes[owner] + size <= HANDOFF_QUEUE_BYTES
                if room:
                    self._queued_bytes[owner] += size
                else:
                    self.dropped += len(batch)
            if room:
                self._queues[owner].put(batch)

    def _run(self, owner: int) -> None:
        while (batch := self._queues[owner].get()) is not None:
            try:
                sent = self._send(owner, batch)
            except Exception:  # a forwarder must outlive any one batch
                sent = False
            with self._counting:
                self._queued_bytes[owner] -= sum(map(len, batch))
                if sent:
                    self.forwarded += len(batch)
                else:
                    self.dropped += len(batch)

    def close(self) -> None:
        """After the workers stopped: what is still queued has no one to go to."""
        for owner, pending in enumerate(self._queues):
            while True:
                try:
                    batch = pending.get_nowait()
                except queue.Empty:
                    break
                if batch is not None:
                    with self._counting:
                        self._queued_bytes[owner] -= sum(map(len, batch))
                        self.dropped += len(batch)
            pending.put(None)
        for thread in self._threads:
            thread.join(STOP_GRACE_S)


def merge_samples(base: TaskSample, payloads: list[dict[str, Any]],
                  from_json: Callable[[dict[str, Any]], TaskSample] = sample_from_json) -> TaskSample:
    """The task's sample: the parent's capturers plus the workers' figures added up."""
    live = [p for p in payloads if not p.get("retired")]
    for payload in payloads:  # a dead worker's counters stay in the totals; its gauges do not
        sample = from_json(payload["sample"])
        for name, values in sample.counters.items():
            into = base.counters.setdefault(name, {})
            for labels, value in values.items():
                into[labels] = into.get(labels, 0) + value
        if payload.get("retired"):
            continue
        for name, gauges in sample.gauges.items():
            into_g = base.gauges.setdefault(name, {})
            for labels, gauge in gauges.items():
                into_g[labels] = into_g.get(labels, 0.0) + gauge
    for name in ("otus_worker_events_total", "otus_worker_records_total"):  # each worker's load
        base.counters.setdefault(name, {})
    for index, payload in enumerate(payloads):
        worker = f"w{payload.get('worker', index)}"
        pipeline = payload["figures"]["pipeline"]
        for name, key in (("otus_worker_events_total", "events"), ("otus_worker_records_total", "records")):
            into = base.counters[name]
            labels = (("worker", worker),)
            into[labels] = into.get(labels, 0) + pipeline[key]
    measured = sum(1 for p in live if any(g[0] == "otus_rtp_mos" for g in p["sample"]["gauges"]))
    if measured:  # a mean over the workers that measured one, not a sum
        base.gauges["otus_rtp_mos"] = {k: v / measured for k, v in base.gauges["otus_rtp_mos"].items()}
    return base


def workers_stats_line(label: str, sections: list[str], payloads: list[dict[str, Any]]) -> str:
    """The stats line of a task with worker processes: their figures added up."""
    pipeline, reassembly = PipelineStats(), ReassemblyStats()
    kafka: KafkaStats | None = None
    outputs = []
    for index, payload in enumerate(payloads):
        figures = payload["figures"]
        for name, value in figures["pipeline"].items():
            if name == "sip_messages":
                for kind, count in value.items():
                    pipeline.sip_messages[kind] = pipeline.sip_messages.get(kind, 0) + count
            else:
                setattr(pipeline, name, getattr(pipeline, name) + value)
        for name, value in figures["reassembly"].items():
            setattr(reassembly, name, getattr(reassembly, name) + value)
        if figures["kafka"] is not None:
            kafka = kafka or KafkaStats()
            for name, value in figures["kafka"].items():
                setattr(kafka, name, getattr(kafka, name) + value)
        name = f"w{payload.get('worker', index)}{'(died)' if payload.get('retired') else ''}"
        outputs += [f"{name}-{summary}" for summary in figures["outputs"]]
    return StatsLine(label, sections, pipeline, kafka, reassembly, outputs).format()
