"""Fan-out: every reporter behind its own bounded queue and worker thread,
so a slow or failing reporter never holds up the others or the capture.

The capture thread only appends a batch to each reporter's queue. A queue
over its bound gives its oldest batch to the fallback (or drops it,
counted). A reporter that raises loses nothing either: the batch goes to
the fallback, or is counted as failed. A fallback that cannot write (the
same full disk) counts the batch as lost; nothing here raises into the
capture thread or ends a worker thread. Every record given to an output
ends in exactly one place: written, in the fallback, or counted lost.
An idle worker calls ``write([])`` every tick, which is how the Kafka
reporter drains its backlog and the file reporters rotate by age while
traffic is quiet. A reporter that may never return from a call (a plugin's:
``stuck_after``) is waited for that long at most by a flush or the close;
then it is left behind, and the records it holds and those still queued are
counted (lost, or given to the fallback), so a stop always ends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from otus_ebpf import logs
from userspace.records import Record
from userspace.reporters import Reporter

IDLE_TICK_S = 0.1
DEFAULT_QUEUE_RECORDS = 200_000
_log = logs.get(__name__)


@dataclass(slots=True)
class QueueStats:
    queued: int = 0      # records waiting now
    written: int = 0     # records the reporter took
    overflow: int = 0    # records the full queue gave up (to the fallback if there is one)
    failed: int = 0      # records of batches the reporter raised on
    to_fallback: int = 0  # overflow or failed records the fallback took
    lost: int = 0         # overflow or failed records nobody took (no fallback, or it failed too)
    batches: int = 0            # batches the reporter took
    latency_s: float = 0.0      # their time in the queue and the reporter, summed (seconds)
    latency_max_s: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class OutputAccount:
    """Where the records given to one output ended up, once it is closed."""

    name: str
    written: int | None  # in the output (Kafka: acknowledged by the broker); None: frames, not records
    to_fallback: int     # in the fallback file instead
    lost: int            # neither: counted here so that an operator knows

    def __str__(self) -> str:
        if self.written is None:
            return f"{self.name} frames failed={self.lost}"
        return f"{self.name} written={self.written} to_fallback={self.to_fallback} lost={self.lost}"


class LineWriter(Protocol):
    """A JSON-lines reporter, or a worker's stand-in that forwards the lines."""

    def write(self, records: Sequence[Record]) -> None: ...

    def write_encoded(self, lines: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class Fallback:
    """Where records go that a reporter could not take: a JSON-lines file,
    shared by every worker (hence the lock). ``take`` says whether it could:
    a fallback on a full disk fails too, and that is counted, not raised."""

    def __init__(self, reporter: LineWriter) -> None:
        self._reporter = reporter
        self._lock = threading.Lock()
        self.records = 0
        self.lost = 0
        self._last_error = ""

    def take(self, records: Sequence[Record]) -> bool:
        return self._take(lambda: self._reporter.write(records), len(records))

    def take_encoded(self, lines: Sequence[bytes]) -> bool:
        return self._take(lambda: self._reporter.write_encoded(lines), len(lines))

    def _take(self, write: Callable[[], None], count: int) -> bool:
        with self._lock:
            try:
                write()
            except Exception as exc:  # a full disk, a bad encoding: these records are lost, counted
                self.lost += count
                error = f"fallback: {type(exc).__name__}: {exc}"
                if error != self._last_error:
                    _log.error(error)  # once per kind of failure: these records are lost
                self._last_error = error
                return False
            self.records += count
            return True

    def close(self) -> None:
        with self._lock:
            try:
                self._reporter.close()
            except OSError as exc:
                _log.error(f"fallback: closing: {exc}")


class QueuedReporter:
    """One reporter on its own thread behind a queue of at most ``max_records``."""

    def __init__(self, name: str, reporter: Reporter, fallback: Fallback | None = None,
                 max_records: int = DEFAULT_QUEUE_RECORDS, stuck_after: float | None = None) -> None:
        self.name = name
        self.reporter = reporter
        self.stats = QueueStats()
        self._fallback = fallback
        self._max_records = max_records
        self._stuck_after = stuck_after  # None: wait for the reporter however long it takes
        self._batches: deque[tuple[float, Sequence[Record]]] = deque()  # (when queued, records)
        self._wakeup = threading.Condition()
        self._busy = False
        self._in_hand = 0         # records of the batch the reporter is writing
        self._stopping = False
        self._abandoned = False   # left behind inside a call: whatever it returns counts no more
        # The worker writes, the main thread flushes: reporters are not thread-safe.
        self._reporter_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"reporter-{name}", daemon=True)
        self._thread.start()

    def write(self, records: Sequence[Record]) -> None:
        """Called by the capture thread: never blocks on the reporter."""
        if not records:
            return
        with self._wakeup:
            self._batches.append((time.monotonic(), records))
            self.stats.queued += len(records)
            while self.stats.queued > self._max_records and len(self._batches) > 1:
                self._overflow(self._batches.popleft()[1])
            self._wakeup.notify()

    def _overflow(self, batch: Sequence[Record]) -> None:
        self.stats.queued -= len(batch)
        self.stats.overflow += len(batch)
        self._to_fallback(batch)

    def _to_fallback(self, batch: Sequence[Record]) -> None:
        if self._fallback is not None and self._fallback.take(batch):
            self.stats.to_fallback += len(batch)
        else:
            self.stats.lost += len(batch)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                if not self._batches and not self._stopping:
                    self._wakeup.wait(IDLE_TICK_S)
                if self._stopping and not self._batches:
                    return
                queued_at, batch = self._batches.popleft() if self._batches else (0.0, ())
                self.stats.queued -= len(batch)
                self._busy = True
                self._in_hand = len(batch)
            try:
                self._deliver(batch, queued_at)
            finally:
                with self._wakeup:
                    self._busy = False
                    self._in_hand = 0
                    self._wakeup.notify_all()

    def _deliver(self, batch: Sequence[Record], queued_at: float) -> None:
        try:
            with self._reporter_lock:
                self.reporter.write(batch)
        except Exception as exc:  # any reporter failure: keep the records, keep running
            if not self._take_back(batch):
                return
            self.stats.failed += len(batch)
            error = f"{type(exc).__name__}: {exc}"
            self._to_fallback(batch)
            if error != self.stats.last_error:
                _log.warning(f"{self.name}: {error}")  # once per kind of failure, not per batch
            self.stats.last_error = error
        else:
            if not self._take_back(batch):
                return
            self.stats.written += len(batch)
            if batch:
                latency = time.monotonic() - queued_at
                self.stats.batches += 1
                self.stats.latency_s += latency
                self.stats.latency_max_s = max(self.stats.latency_max_s, latency)

    def _take_back(self, batch: Sequence[Record]) -> bool:
        """The batch is this thread's to count again, unless it was left behind (then counted lost)."""
        with self._wakeup:
            if self._abandoned:
                return False
            self._in_hand = 0
            return True

    def drain(self, timeout: float, clock: Callable[[], float]) -> bool:
        """Wait until the worker has written everything queued; False at the deadline."""
        deadline = clock() + timeout
        with self._wakeup:
            while self._batches or self._busy:
                remaining = deadline - clock()
                if remaining <= 0:
                    return False
                self._wakeup.wait(min(remaining, IDLE_TICK_S))
        return True

    def flush(self, timeout: float, clock: Callable[[], float]) -> int:
        """Drain the queue, then the reporter; return how many records are still not out."""
        started = clock()
        self.drain(timeout, clock)
        with self._wakeup:
            left_here = self.stats.queued
        wait = -1.0 if self._stuck_after is None else max(0.0, timeout - (clock() - started))
        if not self._reporter_lock.acquire(timeout=wait):
            with self._wakeup:
                in_hand = self._in_hand
            _log.warning(f"{self.name}: still inside a call after {timeout:g} s; not flushed")
            return left_here + in_hand
        try:
            return left_here + self.reporter.flush(max(0.0, timeout - (clock() - started)))
        except OSError as exc:
            _log.warning(f"{self.name}: flush: {exc}")
            return left_here
        finally:
            self._reporter_lock.release()

    def _leave_behind(self) -> None:
        """The reporter has not returned in ``stuck_after``: all it was given and has not
        taken counts as failed; what it holds is lost, what is queued goes to the fallback
        (or is lost); it is not closed (it is still inside a call). Its thread, a daemon,
        ends when the call returns, or with the process."""
        with self._wakeup:
            self._abandoned = True
            in_hand, batches = self._in_hand, list(self._batches)
            self._batches.clear()
            # Failed, as a write that raised: failed + overflow = to_fallback + lost still holds.
            self.stats.failed += in_hand + sum(len(batch) for _, batch in batches)
            self.stats.lost += in_hand
            for _, batch in batches:
                self.stats.queued -= len(batch)
                self._to_fallback(batch)
        _log.warning(f"{self.name}: its reporter has not returned in {self._stuck_after:g} s: left behind, "
                     f"{in_hand + sum(len(b) for _, b in batches)} records not written by it")

    def summary(self) -> str:
        s = self.stats
        detail = getattr(self.reporter, "detail", None)  # what the output itself made of the records
        return (f"{self.name} written={s.written} queued={s.queued} overflow={s.overflow} failed={s.failed}"
                f" to_fallback={s.to_fallback} lost={s.lost}" + (f" {detail()}" if detail else ""))

    def close(self) -> None:
        """Stop the worker after it has written what is queued, then close the reporter."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        self._thread.join(self._stuck_after)
        if self._thread.is_alive():
            self._leave_behind()
            return
        try:
            self.reporter.close()
        except OSError as exc:  # the last sync of a full disk: said, and the rest still closes
            _log.warning(f"{self.name}: closing: {exc}")
