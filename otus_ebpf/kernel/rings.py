"""Drain the kernel's per-shard rings in batches.

bcc calls back once per record; the callback only copies the bytes into a
list, and the whole batch goes to the pipeline after each poll. Ring
buffers wake the poller per record batch; perf buffers are opened with
batched wakeups (a wakeup per event costs ~6 us in the kernel) and drained
on every poll timeout, so quiet periods still deliver promptly.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any, Protocol

from otus_ebpf.kernel.loader import LoadedPrograms
from otus_ebpf.kernel.maps import table
from otus_ebpf.kernel.settings import Delivery

PERF_WAKEUP_EVENTS = 64


class Reader(Protocol):
    lost: int

    def poll(self, timeout_ms: int) -> list[bytes]: ...

    def drain(self) -> list[bytes]: ...


class RingReader:
    def __init__(self, bpf: Any, shards: Iterable[int]) -> None:
        self._bpf = bpf
        self._batch: list[bytes] = []
        self.lost = 0  # the kernel counts ring failures itself (shard_failures)
        for shard in shards:
            table(bpf, f"ring{shard}").open_ring_buffer(self._on_record)

    def _on_record(self, _ctx: Any, data: int, size: int) -> int:
        self._batch.append(ctypes.string_at(data, size))
        return 0

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to ``timeout_ms`` for records; return all that are ready."""
        self._bpf.ring_buffer_poll(timeout_ms)
        return self._take()

    def drain(self) -> list[bytes]:
        """Take what is left without waiting (after detach, before exit)."""
        self._bpf.ring_buffer_consume()
        return self._take()

    def _take(self) -> list[bytes]:
        batch, self._batch = self._batch, []
        return batch


class PerfReader:
    def __init__(self, bpf: Any, shards: Iterable[int], pages: int) -> None:
        """``pages``: per CPU and shard (the shard's ring budget split over the CPUs)."""
        self._bpf = bpf
        self._batch: list[bytes] = []
        self.lost = 0
        for shard in shards:
            table(bpf, f"perf{shard}").open_perf_buffer(self._on_record, page_cnt=pages,
                                                 lost_cb=self._on_lost,
                                                 wakeup_events=PERF_WAKEUP_EVENTS)

    def _on_record(self, _cpu: int, data: int, size: int) -> None:
        self._batch.append(ctypes.string_at(data, size))

    def _on_lost(self, count: int) -> None:
        self.lost += count

    def poll(self, timeout_ms: int) -> list[bytes]:
        self._bpf.perf_buffer_poll(timeout_ms)
        return self.drain()

    def drain(self) -> list[bytes]:
        self._bpf.perf_buffer_consume()
        batch, self._batch = self._batch, []
        return batch


def open_reader(programs: LoadedPrograms, only: Iterable[int] | None = None) -> Reader:
    """A reader of every shard's ring, or ``only`` of these (a worker process's own)."""
    which = range(programs.shards) if only is None else only
    if programs.delivery is Delivery.PERF:
        return PerfReader(programs.bpf, which, programs.perf_pages)
    return RingReader(programs.bpf, which)
