"""One output file for all the workers of a task.

Each worker encodes its records (the work that costs CPU) and hands the bytes
to its parent, the one writer of every file the operator named: the JSON
lines, the fallback file, the pcap. Kafka and HEP are not joined: every
worker sends to the same topics and collectors, and since a call lives in
one worker, its records still arrive in order.

Worker side, ``ForwardedLines`` and ``ForwardedFrames`` stand where the
file reporters would and send through a ``Forward`` (the worker's outbox,
bounded in bytes: when the parent falls behind, the worker's own output
queue fills and overflows, counted there). Parent side, ``JoinedOutputs``
writes each file from a thread of its own behind a queue bounded in bytes;
a block that the file cannot take goes to the fallback file, or is counted
lost. Every record handed to a joined output ends in exactly one place.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otus_ebpf import logs
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.fanout import OutputAccount
from otus_ebpf.outputs.sinks import RotatingFile
from userspace.event import Direction
from userspace.records import Frame, Record, encode_json
from userspace.reporters import RotatingSink
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.pcap import PcapReporter

JSONL, FALLBACK, PCAP = "jsonl", "fallback", "pcap"
JOINED_QUEUE_BYTES = 64 << 20  # per file, waiting in the parent for its writer thread
_IDLE_TICK_S = 0.1
_log = logs.get(__name__)

# (output, payload, records, bytes, wait): a worker's encoded records on their way
# to the parent; raises OSError when the parent has not taken the earlier ones in
# time (at once unless ``wait``: only an output's own thread may wait on the parent).
Forward = Callable[[str, Any, int, int, bool], None]
FramePayload = list[tuple[int, bytes, int, str, int]]


class ForwardedLines:
    """Where a worker's JSON-lines reporter (or its fallback file) would be.
    ``may_wait``: it is written from its own thread (the JSON lines), not from
    the loop's or another output's (the fallback), so it may wait for room."""

    def __init__(self, output: str, forward: Forward, may_wait: bool) -> None:
        self._output = output
        self._forward = forward
        self._may_wait = may_wait

    def write(self, records: Sequence[Record]) -> None:
        self.write_encoded([encode_json(r) for r in records])

    def write_encoded(self, lines: Sequence[bytes]) -> None:
        if lines:
            block = b"\n".join(lines) + b"\n"
            self._forward(self._output, block, len(lines), len(block), self._may_wait)

    def flush(self, timeout: float) -> int:
        return 0  # the parent's writer flushes

    def close(self) -> None:
        return None


class ForwardedFrames:
    """Where a worker's pcap would be: the frames go to the parent, which encodes
    them (a pcapng file numbers its interfaces once per file, so only its writer can).
    Written from the loop's thread, so never waiting: a full outbox fails the batch,
    counted as the pcap's failed frames."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward

    def write_frames(self, frames: Sequence[Frame]) -> None:
        if frames:
            payload = [(f.ts_ns, f.data, f.orig_len, f.interface, int(f.direction)) for f in frames]
            self._forward(PCAP, payload, len(frames), sum(len(f.data) for f in frames), False)

    def close(self) -> None:
        return None


def _lines_into(reporter: JsonLinesReporter) -> Callable[[bytes], None]:
    return lambda block: reporter.write_block(block, block.count(b"\n"))


def frames_of(payload: FramePayload) -> list[Frame]:
    return [Frame(ts, data, orig_len, interface, Direction(direction))
            for ts, data, orig_len, interface, direction in payload]


@dataclass(slots=True)
class JoinedStats:
    written: int = 0      # records (frames, for the pcap) in the file
    overflow: int = 0     # given up because the queue was over its bytes
    failed: int = 0       # in blocks the file could not take
    to_fallback: int = 0  # overflow or failed records the fallback file took
    lost: int = 0         # overflow or failed records nobody took
    queued: int = 0       # records waiting now
    queued_bytes: int = 0
    last_error: str = ""


class BlockWriter:
    """One file, written by a thread of its own from a queue of encoded blocks.
    ``put`` never blocks: it is called by the supervisor's loop."""

    def __init__(self, name: str, write: Callable[[Any], None], idle: Callable[[], None],
                 on_failed: Callable[[Any, int, int], bool] | None,
                 max_bytes: int = JOINED_QUEUE_BYTES) -> None:
        """``idle``: called every tick without blocks (a file rotates by age then);
        ``on_failed(payload, records, bytes)``: where a block the file refused goes
        (the fallback); True when it took it."""
        self.name = name
        self._write = write
        self._idle = idle
        self._on_failed = on_failed
        self._max_bytes = max_bytes
        self.stats = JoinedStats()
        self._blocks: deque[tuple[Any, int, int]] = deque()
        self._writing = threading.Lock()  # its thread, and others handing it a failed block (write_now)
        self._wakeup = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"joined-{name}", daemon=True)
        self._thread.start()

    def put(self, payload: Any, records: int, size: int) -> bool:
        with self._wakeup:
            room = self.stats.queued_bytes + size <= self._max_bytes or not self._blocks
            if room:
                self._blocks.append((payload, records, size))
                self.stats.queued += records
                self.stats.queued_bytes += size
                self._wakeup.notify()
            else:
                self.stats.overflow += records
        if not room:
            self._give_up(payload, records, size)
        return room

    def _run(self) -> None:
        while True:
            with self._wakeup:
                if not self._blocks and not self._stopping:
                    self._wakeup.wait(_IDLE_TICK_S)
                if not self._blocks:
                    if self._stopping:
                        return
                    self._tick()
                    continue
                payload, records, size = self._blocks.popleft()
                self.stats.queued -= records
                self.stats.queued_bytes -= size
                self._busy = True
            try:
                self._write_counted(payload, records, size)
            finally:
                with self._wakeup:
                    self._busy = False
                    self._wakeup.notify_all()

    def write_now(self, payload: Any, records: int, size: int) -> bool:
        """Write a block another writer could not, on the caller's thread; True when it is
        in the file (so that the other writer counts it as in the fallback only then)."""
        return self._write_counted(payload, records, size, give_up=False)

    def _write_counted(self, payload: Any, records: int, size: int, give_up: bool = True) -> bool:
        try:
            with self._writing:
                self._write(payload)
        except Exception as exc:  # a full disk: these records go elsewhere, the thread goes on
            self._said(f"{self.name}: {type(exc).__name__}: {exc}")
            if give_up:
                self.stats.failed += records
                self._give_up(payload, records, size)
            return False  # otherwise the caller counts them, where it keeps its figures
        self.stats.written += records
        return True

    def _tick(self) -> None:
        try:
            with self._writing:
                self._idle()
        except Exception as exc:  # a rotation that failed: said; the next write tries again
            self._said(f"{self.name}: {type(exc).__name__}: {exc}")

    def _give_up(self, payload: Any, records: int, size: int) -> None:
        if self._on_failed is not None and self._on_failed(payload, records, size):
            self.stats.to_fallback += records
        else:
            self.stats.lost += records

    def _said(self, error: str) -> None:
        if error != self.stats.last_error:
            _log.warning(error)  # once per kind of failure
        self.stats.last_error = error

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._wakeup:
            while self._blocks or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wakeup.wait(min(remaining, _IDLE_TICK_S))
        return True

    def close(self) -> None:
        """After writing what is queued."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        self._thread.join()


class JoinedOutputs:
    """The files a task with worker processes writes in its own process."""

    def __init__(self, sink: RotatingSink, options: AttachOptions) -> None:
        """``sink``: the JSON-lines sink (a file, or stdout); ``options``: rotation,
        fsync, fallback and pcap paths. If opening any of them fails, none stays open."""
        self._closed = False
        with contextlib.ExitStack() as stack:
            stack.callback(sink.close)  # whatever fails next (closing twice is harmless)
            self._open(stack, sink, options)
            self._stack = stack.pop_all()

    def _open(self, stack: contextlib.ExitStack, sink: RotatingSink, options: AttachOptions) -> None:
        self.writers: dict[str, BlockWriter] = {}
        self.unknown = 0  # records for an output this task does not have (a bug, counted)
        fallback = None
        if options.fallback is not None:
            lines = JsonLinesReporter(RotatingFile(Path(options.fallback)), options.out_rotation,
                                      time.monotonic, options.out_fsync)
            stack.callback(lines.close)
            fallback = self._writer(stack, FALLBACK, _lines_into(lines),
                                    lambda: lines.write_block(b"", 0), None)
            _log.info(f"records no output could take go to {options.fallback}")
        records = JsonLinesReporter(sink, options.out_rotation, time.monotonic, options.out_fsync)
        stack.callback(records.close)
        to_fallback = fallback.write_now if fallback is not None else None
        self._writer(stack, JSONL, _lines_into(records), lambda: records.write_block(b"", 0), to_fallback)
        if options.pcap is not None:
            pcap = PcapReporter(RotatingFile(Path(options.pcap), fresh=True), options.pcap_rotation,
                                time.monotonic, options.pcap_format)
            stack.callback(pcap.close)
            self._writer(stack, PCAP, lambda payload: pcap.write_frames(frames_of(payload)),
                         lambda: pcap.write_frames([]), None)
            _log.info(f"writing captured frames to {options.pcap}")

    def _writer(self, stack: contextlib.ExitStack, name: str, write: Callable[[Any], None],
                idle: Callable[[], None], on_failed: Callable[[Any, int, int], bool] | None) -> BlockWriter:
        writer = BlockWriter(name, write, idle, on_failed)
        stack.callback(writer.close)  # before its file closes (callbacks run in reverse)
        self.writers[name] = writer
        return writer

    def take(self, output: str, payload: Any, records: int, size: int) -> None:
        """A worker's block, from the supervisor's loop."""
        writer = self.writers.get(output) if not self._closed else None
        if writer is None:  # an output this task does not have, or one already closed
            self.unknown += records
            return
        writer.put(payload, records, size)

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for writer in self.writers.values():
            writer.drain(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Write what is queued, then close the files (once; later calls do nothing)."""
        self._closed = True
        self._stack.close()

    def accounts(self) -> list[OutputAccount]:
        return [OutputAccount(name, None if name == PCAP else w.stats.written, w.stats.to_fallback,
                              w.stats.lost) for name, w in self.writers.items()]

    def summaries(self) -> list[str]:
        return [f"{name} written={w.stats.written} queued={w.stats.queued} overflow={w.stats.overflow} "
                f"failed={w.stats.failed} to_fallback={w.stats.to_fallback} lost={w.stats.lost}"
                for name, w in self.writers.items()]

    def lost(self) -> int:
        return sum(w.stats.lost for w in self.writers.values()) + self.unknown
