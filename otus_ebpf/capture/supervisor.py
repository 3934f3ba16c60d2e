"""The supervisor of a task's worker processes, one per ring shard
("binding") or fed by one reader ("dispatch"), so that parsing is not held
to one core by the GIL.

The task's process loads the programs, forks the workers (otus_ebpf.capture.worker),
and only then attaches: every worker inherits the maps and opens the ring of
its own shard (the kernel routes SIP by Call-ID and a media flow to the
shard that learned it, so a worker sees whole dialogs). This process is the
one writer of the flow map (the workers send it their endpoints), forwards
the messages a worker framed for a Call-ID another worker owns, and writes
the files the operator named for all the workers (otus_ebpf.outputs.joined; with
``per_worker_files`` each worker writes ``NAME.wN.EXT`` instead). Twice a
second each worker reports its figures, which are added up here for the
stats line, /metrics and the live view. A worker that dies is said so,
counted, and started again after a backoff.

Stop runs in this order: detach the programs (the task's ExitStack), tell
every worker to stop — each drains its ring, delivers, flushes, reports a
last time and exits — write what the workers handed in, then unload the
programs. A worker that does not finish within the grace period is killed,
and said so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from otus_ebpf import logs
from otus_ebpf.capture.runner import POLL_TIMEOUT_MS, clock_offset
from otus_ebpf.capture.sampling import (
    StatsLine,
    TaskSample,
    add_boundary,
    add_joined_figures,
    fields,
    sample_from_json,
)
from otus_ebpf.capture.worker import STOP_GRACE_S, ViewRequest, WorkerSpec, worker_main
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.counters import program_counters, program_sections
from otus_ebpf.kernel.flows import FlowMapWriter
from otus_ebpf.kernel.loader import LoadedPrograms, load_programs
from otus_ebpf.kernel.rings import Reader, open_reader
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.options import AttachOptions, Dispatch, Strategy
from otus_ebpf.outputs.fanout import OutputAccount
from otus_ebpf.outputs.joined import JoinedOutputs
from otus_ebpf.outputs.wiring import default_records_path
from userspace.boundary import Boundary
from userspace.callbook import ROWS_SHOWN, CallDetail, CallRow, detail_of, filter_rows, order_rows, row_of
from userspace.event import EVENT_FIELDS, struct_format
from userspace.pipeline import PipelineStats
from userspace.reassembly import ReassemblyStats
from userspace.reporters.kafka import KafkaStats

HANDOFF_QUEUE_BYTES = 64 << 20  # hand-offs waiting for one worker's pipe before more are dropped (counted)
WORKER_START_S = 60.0  # for a worker to open its outputs (a Kafka broker check may take a while)
JOINED_DRAIN_S = 10.0  # at stop, how long the files may take to write what the workers handed in
VIEW_ASKED_S = 30.0  # workers send what a live view asked for this long after it last asked
_log = logs.get(__name__)
# Where the kernel's flow hash sits in an event record (userspace.event).
_FLOW_HASH = struct.calcsize(struct_format(EVENT_FIELDS[:[f[0] for f in EVENT_FIELDS].index("flow_hash")]))


class WorkerStartError(SetupError):
    """A worker process could not start: the task fails (no fall back to AF_PACKET,
    which would not help)."""


def worker_options(options: AttachOptions, index: int, label: str) -> AttachOptions:
    """A worker's settings with per-worker files: its own output files, the shared
    per-call directory."""
    def suffixed(path: str | None) -> str | None:
        if path is None:
            return None
        p = Path(path)
        return str(p.with_name(f"{p.stem}.w{index}{p.suffix}"))

    out = options.out or str(default_records_path(label))
    return dataclasses.replace(options, out=suffixed(out), pcap=suffixed(options.pcap),
                               fallback=suffixed(options.fallback))


@dataclasses.dataclass(slots=True)
class _Worker:
    index: int
    process: Any
    control: Connection
    reports: Connection
    events: Connection  # batches of events: hand-offs, and in dispatch mode everything
    latest: dict[str, Any] | None = None
    ready: bool = False  # its outputs are open and it reads its ring
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


class Supervisor:
    """What a task with worker processes runs (the task's Engine)."""

    owns_outputs = False  # the workers write to Kafka and HEP: a change of outputs restarts the task

    def __init__(self, stack: contextlib.ExitStack, task_options: AttachOptions, task_name: str,
                 interfaces: dict[int, str],
                 attach: Callable[[contextlib.ExitStack, LoadedPrograms], list[str]],
                 joined: JoinedOutputs | None, boundary: Boundary) -> None:
        """``joined``: the files this process writes for the workers (None: per-worker files)."""
        self._joined = joined
        self._boundary = boundary
        count = task_options.kernel.shards
        dispatching = task_options.dispatch is Dispatch.DISPATCH
        kernel = dataclasses.replace(task_options.capture.kernel, route_by_call_id=True)
        kernel = dataclasses.replace(kernel, shards=1) if dispatching else kernel
        programs = load_programs(kernel)
        stack.callback(programs.close)  # last: after the workers have drained their rings
        self._programs = programs
        self._round_robin = task_options.strategy is Strategy.ROUND_ROBIN
        self._next = 0
        self._reader: Reader | None = open_reader(programs) if dispatching else None
        self._dispatching = dispatching
        self._task_name = task_name
        self._task_options = task_options
        self._interfaces = interfaces
        self._label = ",".join(task_options.interfaces)
        self._clock_offset_ns = clock_offset()  # one for every worker, restarted ones too
        self._context = multiprocessing.get_context("fork")
        self._workers: list[_Worker] = []
        self._stopping = False
        self._starting = True  # until every worker is ready: one that dies fails the start
        self._retired: list[dict[str, Any]] = []
        self._view: ViewRequest | None = None  # what a live view asks the workers for, when one is open
        self._control_lock = threading.Lock()  # the view's and the stop path's words to the workers
        self.restarts = 0
        self.dispatch_dropped = 0  # events for a worker that was down, or whose pipe refused them
        # The workers' endpoints: this process is the one writer of the flow map.
        self._flows = FlowMapWriter(programs.maps)
        self._handoffs = _HandOffs(self._send_handoffs, count)
        stack.callback(self._stop_workers)
        self._flows.start(boundary)
        for index in range(count):
            self._workers.append(self._spawn(index))
        self._await_ready()
        hooks = attach(stack, programs)  # only now: every worker is reading
        strategy = task_options.strategy.value
        how = (f"1 ring dispatched ({strategy}) to {count} worker process(es)" if dispatching
               else f"{count} worker process(es)")
        files = "each with its own files" if joined is None else "one writer per file"
        self.description = f"{'; '.join(hooks)}; {how}, {files}"

    def _spawn(self, index: int) -> _Worker:
        control_here, control_there = self._context.Pipe()
        reports_here, reports_there = self._context.Pipe(duplex=False)  # (receiving end, sending end)
        events_there, events_here = self._context.Pipe(duplex=False)
        inherited = [c for w in self._workers if w.index != index for c in w.connections()]
        inherited += [control_here, reports_here, events_here]
        options = self._task_options
        if self._joined is None:
            options = worker_options(options, index, self._label)
        spec = WorkerSpec(index, options.kernel.shards, self._task_name, options, self._interfaces,
                          self._programs, self._dispatching, joined=self._joined is not None,
                          clock_offset_ns=self._clock_offset_ns, log_level=logs.level())
        process = self._context.Process(target=worker_main, name=f"otus-worker-{index}",
                                        args=(spec, control_there, reports_there, events_there, inherited,
                                              os.getpid()))
        process.start()
        _log.debug(f"worker {index} started (pid {process.pid})")
        for end in (control_there, reports_there, events_there):
            end.close()
        return _Worker(index, process, control_here, reports_here, events_here, started=time.monotonic())

    def _await_ready(self) -> None:
        """Until every worker has opened its outputs and its ring: a worker that cannot
        (a broker it cannot reach, a file it cannot open) fails the start, said why."""
        deadline = time.monotonic() + WORKER_START_S
        while not all(w.ready for w in self._workers):
            self._collect(0.1)
            failed = next((w for w in self._workers if w.failed is not None), None)
            if failed is not None:
                raise WorkerStartError(f"worker {failed.index} could not start: {failed.failed}")
            if time.monotonic() > deadline:
                waiting = [w.index for w in self._workers if not w.ready]
                raise WorkerStartError(f"worker(s) {waiting} not ready after {WORKER_START_S:.0f} s")
        self._starting = False

    def poll_once(self) -> None:
        """One turn of the task's loop: dispatch (dispatch mode), collect what the workers
        sent (their flow changes go to the flow map's writer thread), restart the dead."""
        self.poll(POLL_TIMEOUT_MS)

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
                        self._flows.take(worker.index, payload)
                    elif kind == "handoff":
                        self._handoffs.forward(payload)
                    elif kind == "out":
                        self._take_records(payload)
                    elif kind == "ready":
                        worker.ready = True
                        with self._control_lock:  # a worker started again is asked again
                            if self._view is not None:
                                _send(worker, self._view)
                    else:
                        worker.latest = payload
                        worker.final = kind == "final"
            except (EOFError, OSError):
                if not worker.final and worker.failed is None:
                    worker.process.join(1.0)
                    self._died(worker, f"exited with status {worker.process.exitcode}")

    def _died(self, worker: _Worker, why: str) -> None:
        worker.failed = why
        self._flows.drop(worker.index)  # its calls are gone with it
        if worker.latest is not None:  # what it had counted stays counted (whatever it held is lost)
            retired = {k: v for k, v in worker.latest.items() if k not in ("calls", "followed")}
            self._retired.append({**retired, "retired": True})  # its figures; its calls are gone
            worker.latest = None
        if self._stopping or self._starting:
            when = "stopping" if self._stopping else "starting"
            _log.error(f"worker {worker.index} failed while {when}: {why}")
            return
        healthy = time.monotonic() - worker.started >= HEALTHY_AFTER_S
        worker.deaths = 1 if healthy else worker.deaths + 1
        delay = RESTART_BACKOFF_S[min(worker.deaths, len(RESTART_BACKOFF_S)) - 1]
        worker.restart_at = time.monotonic() + delay
        _log.warning(f"worker {worker.index} failed: {why}; restarting it in {delay:.0f} s")

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
            _log.info(f"worker {worker.index} restarted (pid {fresh.process.pid})")

    def _release(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        for connection in worker.connections():
            connection.close()

    def worker_payloads(self) -> list[dict[str, Any]]:
        """Every worker's latest figures, and the last ones of workers that died."""
        return [*self._retired, *(w.latest for w in self._workers if w.latest is not None)]

    def _take_records(self, payload: tuple[str, Any, int, int]) -> None:
        if self._joined is not None:
            self._joined.take(*payload)

    def stats_sections(self) -> list[str]:
        return program_sections(self._programs)

    def counters(self) -> dict[str, dict[str, int]]:
        found = program_counters(self._programs)
        if self._reader is not None:
            found["dispatch"] = {"dropped": self.dispatch_dropped}
        found["handoff"] = {"forwarded": self._handoffs.forwarded, "dropped": self._handoffs.dropped}
        return found

    def workers_up(self) -> dict[str, bool]:
        return {f"w{w.index}": w.process.is_alive() and w.failed is None for w in self._workers}

    def set_filters(self, before: KernelSettings, after: KernelSettings) -> None:
        self._programs.maps.apply_filters(before, after)

    def set_paused(self, paused: bool) -> None:
        self._programs.maps.set_paused(paused)

    # -- stop ---------------------------------------------------------------------------

    def _stop_workers(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._dispatch(self._reader.drain())  # detached: what is left goes out before the word to stop
        for worker in self._workers:
            self._tell(worker, "stop")
        deadline = time.monotonic() + STOP_GRACE_S
        while any(not w.final and w.failed is None for w in self._workers) and time.monotonic() < deadline:
            self._collect(0.2)
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _log.warning(f"worker {worker.index} did not finish in {STOP_GRACE_S:.0f} s; killing it")
                worker.process.kill()
                worker.process.join()
            for connection in worker.connections():
                connection.close()
        self._handoffs.close()
        self._flows.close(STOP_GRACE_S)  # the workers' last forgets written
        if self._joined is not None:
            self._joined.drain(JOINED_DRAIN_S)
        try:
            _log.info(self.stats_line())  # the final figures, once every worker is done
        except Exception as exc:
            self._boundary.failed("stats", exc)

    # -- the task's figures -------------------------------------------------------------

    def swap_outputs(self, options: AttachOptions) -> None:
        raise ValueError("the outputs of worker processes change by restarting the task")

    def stats_line(self) -> str:
        joined = self._joined.summaries() if self._joined is not None else []
        return workers_stats_line(self._label, self.stats_sections(), self.worker_payloads(), joined)

    def sample(self, sample: TaskSample, capturing: bool) -> TaskSample:
        if capturing:
            sample.capturers = self.counters()
        for worker, up in self.workers_up().items():
            sample.gauge("otus_worker_up", 1.0 if up else 0.0, worker=worker)
        sample.count("otus_worker_restarts_total", self.restarts)
        add_boundary(sample, self._boundary)
        for outcome, value in fields(self._flows.stats):  # the flow map's writes are this process's
            sample.count("otus_flow_updates_total", value, outcome=outcome)
        if self._joined is not None:
            add_joined_figures(sample, self._joined)
        return merge_samples(sample, self.worker_payloads(), sample_from_json)

    def keep_recent(self, count: int) -> None:
        return None  # each worker keeps its last messages; recent_rows merges them

    # -- a live view: each worker keeps its calls; their reports carry what the view asked

    def watch_calls(self) -> None:
        with self._control_lock:
            view = self._view
        if view is None:
            self._ask("", "start", ROWS_SHOWN, None)

    def calls(self, query: str, sort: str, limit: int) -> list[CallRow]:
        """The workers' rows for ``query`` as of their last reports (half a second)."""
        with self._control_lock:
            follow = self._view.follow if self._view is not None else None
        self._ask(query, sort, limit, follow)
        rows = [row_of(r) for p in self.worker_payloads() for r in p.get("calls", ())]
        return order_rows(filter_rows(rows, query), sort)[:limit]

    def call_detail(self, call_id: str) -> CallDetail | None:
        """The call from the worker that has it, once it has reported since it was asked."""
        with self._control_lock:
            view = self._view
        if view is None:
            self._ask("", "start", ROWS_SHOWN, call_id)
        else:
            self._ask(view.query, view.sort, view.limit, call_id)
        for payload in self.worker_payloads():
            followed = payload.get("followed")
            if followed is not None and followed["row"][0] == call_id:
                return detail_of(followed)
        return None

    def _ask(self, query: str, sort: str, limit: int, follow: str | None) -> None:
        """Tell the workers what the view wants when it changed, or before the last word runs out.
        One view at a time for a task's workers: a second asks in turn (docs/LIVE_VIEW.md)."""
        now = time.monotonic()
        with self._control_lock:
            old = self._view
            same = old is not None and old[:4] == (query, sort, limit, follow)
            if same and old is not None and old.until - now > VIEW_ASKED_S / 2:
                return
            self._view = ViewRequest(query, sort, limit, follow, now + VIEW_ASKED_S)
            for worker in self._workers:
                _send(worker, self._view)

    def _tell(self, worker: _Worker, word: object) -> None:
        with self._control_lock:
            _send(worker, word)

    def recent_rows(self) -> list[list[str]]:
        return sorted(row for p in self.worker_payloads() for row in p["recent"])[-16:]

    def records_lost(self) -> int:
        """Records lost in the workers' own outputs, and in the files written for them here."""
        return _lost_in(self.worker_payloads()) + (self._joined.lost() if self._joined is not None else 0)

    def accounts_line(self) -> str:
        payloads = self.worker_payloads()
        records = sum(int(p["figures"]["pipeline"]["records"]) for p in payloads)
        accounts: list[OutputAccount] = self._joined.accounts() if self._joined is not None else []
        return "; ".join([f"records: {records} produced", *map(str, accounts),
                          f"lost in the workers' own outputs: {_lost_in(payloads)}"])


def _send(worker: _Worker, word: object) -> None:
    """A word down a worker's control pipe; the caller holds the supervisor's control lock."""
    with contextlib.suppress(OSError, ValueError):
        worker.control.send(word)


def _lost_in(payloads: list[dict[str, Any]]) -> int:
    """Records the workers' own outputs lost, from their latest figures."""
    return sum(int(p["figures"].get("lost", 0)) for p in payloads)


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


def workers_stats_line(label: str, sections: list[str], payloads: list[dict[str, Any]],
                       joined: list[str] | None = None) -> str:
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
    outputs += joined or []
    return StatsLine(label, sections, pipeline, kafka, reassembly, outputs).format()
