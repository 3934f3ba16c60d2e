"""Drain the kernel's ring buffer in batches.

bcc calls back once per record; the callback only copies the bytes into a
list, and the whole batch goes to the pipeline after each poll.
"""

from __future__ import annotations

import ctypes
from typing import Any

from otus_ebpf.loader import RING_MAP


class RingReader:
    def __init__(self, bpf: Any, map_name: str = RING_MAP) -> None:
        self._bpf = bpf
        self._batch: list[bytes] = []
        bpf[map_name].open_ring_buffer(self._on_record)

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
