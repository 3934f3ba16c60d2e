"""Drain the kernel's per-shard ring buffers in batches.

bcc calls back once per record; the callback only copies the bytes into a
list, and the whole batch goes to the pipeline after each poll. A ring
wakes the poller per batch of records, not per record. A record the kernel
could not write (a full ring) is counted in the kernel (shard_failures).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any, Protocol

from otus_ebpf.kernel.loader import LoadedPrograms
from otus_ebpf.kernel.maps import table


class Reader(Protocol):
    def poll(self, timeout_ms: int) -> list[bytes]: ...

    def drain(self) -> list[bytes]: ...


class RingReader:
    def __init__(self, bpf: Any, shards: Iterable[int]) -> None:
        self._bpf = bpf
        self._batch: list[bytes] = []
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


def open_reader(programs: LoadedPrograms, only: Iterable[int] | None = None) -> Reader:
    """A reader of every shard's ring, or ``only`` of these (a worker process's own)."""
    return RingReader(programs.bpf, range(programs.shards) if only is None else only)
