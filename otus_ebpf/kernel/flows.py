"""Media endpoints learned into a capture's flow table, one event at a time.

The dialogs announce endpoints (``userspace.calls.FlowEvent``); a capture
turns each into a kernel map update or a socket-filter rule. A full table is
a counted condition, never an error: the agent goes on capturing SIP. Any
other failure of one event is a bug, counted at the failure boundary, and
the next event goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from userspace.boundary import Boundary
from userspace.endpoints import FlowAction, FlowEvent, FlowKey, Hold, Holders
from userspace.event import Kind
from userspace.kernel_streams import Clocks


class FlowTableFull(Exception):
    """The table holds as many endpoints as it was sized for."""


@dataclass(slots=True)
class FlowStats:
    learned: int = 0
    forgotten: int = 0
    flows_map_full: int = 0    # learn refused: the table is full (sized by calls.max_calls)
    failed: int = 0      # an event that hit a bug (counted by the boundary too)


def apply_each(events: list[FlowEvent], learn: Callable[[FlowEvent], None],
               forget: Callable[[FlowEvent], None], stats: FlowStats, boundary: Boundary) -> None:
    for event in events:
        try:
            if event.action is FlowAction.LEARN:
                learn(event)
                stats.learned += 1
            else:
                forget(event)
                stats.forgotten += 1
        except FlowTableFull:
            stats.flows_map_full += 1
        except Exception as exc:  # one bad event, not the capture
            stats.failed += 1
            boundary.failed("flow_learning", exc)


class SharedFlows:
    """The one writer of a flow map that several worker processes learn into.

    Each worker keeps its own calls' endpoints (userspace.endpoints) and hands
    its changes here; an endpoint two workers' calls announced is held by both,
    its kernel entry follows the newest holder and goes with the last — as
    between calls, with workers for calls. (Written by the workers themselves,
    one worker's call ending removed the entry another's still needed, and the
    per-port use counts raced.) A worker that dies releases all it held.
    Held by kernel entry: the endpoint and the tunnel kind it was announced in
    (one worker may hold an endpoint plain and inside a tunnel, two entries).
    """

    def __init__(self) -> None:
        self._registry = Holders()
        self._held: dict[int, set[FlowKey]] = {}

    def apply(self, worker: int, events: list[FlowEvent]) -> list[FlowEvent]:
        """A worker's changes in; the kernel writes they come to out."""
        writes: list[FlowEvent] = []
        held = self._held.setdefault(worker, set())
        for event in events:
            endpoint = (event.address, event.port, event.tunnel)
            was_shared = self.shared(endpoint)
            if event.action is FlowAction.LEARN:
                held.add(endpoint)
                change = self._registry.take(endpoint, Hold(str(worker), event.kind, event.shard, {},
                                                            owner=event.owner, clocks=event.clocks,
                                                            tunnel=event.tunnel))
            else:
                held.discard(endpoint)
                change = self._registry.release(endpoint, str(worker))
            self._write(writes, endpoint, change, was_shared)
        return writes

    def drop(self, worker: int) -> list[FlowEvent]:
        """A worker died or restarted: what it held is released."""
        writes: list[FlowEvent] = []
        for endpoint in self._held.pop(worker, set()):
            was_shared = self.shared(endpoint)
            self._write(writes, endpoint, self._registry.release(endpoint, str(worker)), was_shared)
        return writes

    def shared(self, endpoint: FlowKey) -> bool:
        """More than one worker holds it: its kernel entry says so (OTUS_FLOW_SHARED)."""
        return self._registry.holders(endpoint) > 1

    def _write(self, writes: list[FlowEvent], endpoint: FlowKey, change: FlowEvent | None,
               was_shared: bool) -> None:
        owner = self._registry.owner(endpoint)
        if change is None and owner is not None and self.shared(endpoint) != was_shared:
            # The same owner, but shared now or no longer: the entry's flag changes.
            change = owner.event(FlowAction.LEARN, endpoint)
        if change is not None:
            writes.append(change)

    def __len__(self) -> int:
        return len(self._registry)



class FlowMap(Protocol):
    """What the one writer needs of the kernel's maps (otus_ebpf.kernel.maps.KernelMaps)."""

    def learn_flow(self, endpoint: Any, kind: Kind, shard: int, shared: bool = False, owner: int = 0,
                   clocks: Clocks = (), tunnel: int = 0) -> None: ...

    def forget_flow(self, endpoint: Any, tunnel: int = 0) -> None: ...


_WRITE_CHUNK = 256  # map writes between two looks at whether the writer was abandoned


class FlowMapWriter:
    """The one process that writes a task's flow map for all its workers: their
    learns and forgets go through SharedFlows (an endpoint two workers hold stays
    until both let go; the per-port use counts change once per kernel entry).
    ``take`` queues what the map must become; ``write`` does the syscalls — the
    supervisor runs it on a thread of its own (``start``), so that hundreds of
    thousands of map writes never keep its loop from reading the workers."""

    def __init__(self, maps: FlowMap) -> None:
        self._maps = maps
        self._shared = SharedFlows()
        self._pending: list[tuple[FlowEvent, bool]] = []  # and whether more than one worker holds it
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._abandoned = False  # the close timed out: the maps may be gone, write nothing more
        self.stats = FlowStats()

    def take(self, worker: int, changes: list[FlowEvent]) -> None:
        self._queue(self._shared.apply(worker, changes))

    def drop(self, worker: int) -> None:
        """A worker died: what it held goes."""
        self._queue(self._shared.drop(worker))

    def _queue(self, writes: list[FlowEvent]) -> None:
        marked = [(e, self._shared.shared((e.address, e.port, e.tunnel))) for e in writes]
        with self._lock:
            self._pending += marked
        self._wakeup.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def write(self, boundary: Boundary) -> None:
        """Write what is queued, on the caller's thread."""
        with self._lock:
            writes, self._pending = self._pending, []
        shared = dict((id(e), flag) for e, flag in writes)
        maps = self._maps
        events = [e for e, _flag in writes]
        for start in range(0, len(events), _WRITE_CHUNK):
            if self._abandoned:
                return
            apply_each(events[start:start + _WRITE_CHUNK],
                       lambda e: maps.learn_flow((e.address, e.port), e.kind, e.shard, shared[id(e)],
                                                 e.owner, e.clocks, e.tunnel),
                       lambda e: maps.forget_flow((e.address, e.port), e.tunnel),
                       self.stats, boundary)

    def start(self, boundary: Boundary) -> None:
        """Write from a thread of its own until ``close``."""
        def run() -> None:
            while True:
                self._wakeup.wait()
                self._wakeup.clear()
                try:
                    self.write(boundary)
                except Exception as exc:  # the thread outlives any one batch
                    boundary.failed("flow_learning", exc)
                if self._stopping and not self.pending():
                    return

        self._thread = threading.Thread(target=run, name="otus-flow-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Write what is queued, then stop the thread."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._abandoned = self._thread.is_alive()  # before the programs (and their maps) go

    def __len__(self) -> int:
        return len(self._shared)
