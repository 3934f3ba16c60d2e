"""Drain the kernel's per-shard ring buffers in batches.

The rings are maps loader.py created; libbpf's ring_buffer API (through
bcc's libbcc) polls them. It calls back once per record; the callback only
copies the bytes into a list, and the whole batch goes to the pipeline after
each poll. A ring wakes the poller per batch of records, not per record. A
record the kernel could not write (a full ring) is counted in the kernel
(otus_counters.shard_failures).
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Iterable
from typing import Any, Protocol

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.loader import LoadedPrograms

# ring_buffer_sample_fn: (ctx, data, size) -> 0 to go on
_RecordCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class Reader(Protocol):
    def poll(self, timeout_ms: int) -> list[bytes]: ...

    def drain(self) -> list[bytes]: ...


class RingReader:
    def __init__(self, ring_fds: Iterable[int]) -> None:
        self._lib: Any = importlib.import_module("bcc.libbcc").lib
        self._batch: list[bytes] = []
        self._callback = _RecordCallback(self._on_record)  # kept alive: libbpf holds a pointer to it
        self._manager: int | None = None
        try:
            for fd in ring_fds:
                self._add(fd)
        except SetupError:
            self.close()  # the rings added so far are mapped: unmap them
            raise

    def _add(self, fd: int) -> None:
        if self._manager is None:
            self._manager = self._lib.bpf_new_ringbuf(fd, self._callback, None)
            added = bool(self._manager)
        else:
            added = self._lib.bpf_add_ringbuf(self._manager, fd, self._callback, None) == 0
        if not added:
            raise SetupError(f"cannot map a ring buffer (fd {fd}) for reading")

    def _on_record(self, _ctx: Any, data: int, size: int) -> int:
        self._batch.append(ctypes.string_at(data, size))
        return 0

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to ``timeout_ms`` for records; return all that are ready."""
        self._lib.bpf_poll_ringbuf(self._open(), timeout_ms)
        return self._take()

    def drain(self) -> list[bytes]:
        """Take what is left without waiting (after detach, before exit)."""
        self._lib.bpf_consume_ringbuf(self._open())
        return self._take()

    def close(self) -> None:
        if self._manager:
            self._lib.bpf_free_ringbuf(self._manager)
            self._manager = None

    def _open(self) -> int:
        """The ring manager; libbpf would dereference a freed (NULL) one."""
        if not self._manager:
            raise SetupError("ring reader used after it was closed")
        return self._manager

    def _take(self) -> list[bytes]:
        batch, self._batch = self._batch, []
        return batch


def open_reader(programs: LoadedPrograms, only: Iterable[int] | None = None) -> Reader:
    """A reader of every shard's ring, or ``only`` of these (a worker process's own)."""
    which = range(programs.shards) if only is None else only
    reader = RingReader(programs.ring_fds[shard] for shard in which)
    programs.on_close(reader.close)
    return reader
