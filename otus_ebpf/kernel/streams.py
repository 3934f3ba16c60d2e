"""Reading the kernel's RTP stream statistics (the "streams" map) for a
worker's pipeline: the I/O side of ``userspace.kernel_streams.StreamSource``.

Every half report interval (at most once a second) a worker reads the whole
map in batches (BPF_MAP_LOOKUP_BATCH; key-by-key iteration where the kernel
has no batch operations) and keeps the entries of its own flows, told by one
byte of the key before anything is copied: a sweep costs each worker
O(streams in the map), ~0.1 us an entry not its own, and holds one batch in
memory at a time. A call's end reads and deletes that call's streams key by key. Values are copied under their
bpf_spin_lock (BPF_F_LOCK), so a read never sees a stream half updated. A
failed syscall is counted and reads as nothing: statistics come late, the
capture goes on.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from otus_ebpf.kernel.bpfsys import BPF_F_LOCK, map_delete, map_keys, map_lookup, map_lookup_batch
from otus_ebpf.kernel.maps import table
from userspace.kernel_streams import STREAM, STREAM_KEY, WORKER_OFFSET

STREAMS_MAP = "streams"
BATCH = 4_096  # entries a syscall: ~0.8 MB of keys and values
_NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(slots=True)
class StreamReadStats:
    sweeps: int = 0          # whole-map reads
    entries: int = 0         # entries those reads returned (of every worker)
    failures: int = 0        # syscalls that failed (read as nothing)


class KernelStreams:
    def __init__(self, bpf: Any) -> None:
        self._fd = table(bpf, STREAMS_MAP).map_fd
        self._batch = True  # until the kernel says it has no batch operations
        self.stats = StreamReadStats()

    def read_all(self, worker: int | None) -> Iterator[tuple[bytes, bytes]]:
        """The map's entries whose key names ``worker`` (None: all); a failed read ends
        the sweep early, counted."""
        self.stats.sweeps += 1
        try:
            yield from self._entries(worker)
        except OSError:
            self.stats.failures += 1

    def _entries(self, worker: int | None) -> Iterator[tuple[bytes, bytes]]:
        if self._batch:
            try:
                yield from self._batches(worker)
                return
            except OSError as exc:
                if exc.errno not in _NO_BATCH:
                    raise
                self._batch = False
        for key in map_keys(self._fd, STREAM_KEY.size):
            self.stats.entries += 1
            if worker is not None and key[WORKER_OFFSET] != worker:
                continue
            value = map_lookup(self._fd, key, STREAM.size, BPF_F_LOCK)
            if value is not None:  # deleted since its key was listed
                yield key, value

    def _batches(self, worker: int | None) -> Iterator[tuple[bytes, bytes]]:
        """The worker's entries, told by one byte of each key before anything is copied."""
        key_size, value_size = STREAM_KEY.size, STREAM.size
        for keys, values, count in map_lookup_batch(self._fd, key_size, value_size, BATCH, BPF_F_LOCK):
            self.stats.entries += count
            for i in range(count):
                at = i * key_size
                if worker is None or keys[at + WORKER_OFFSET] == worker:
                    yield keys[at:at + key_size], values[i * value_size:(i + 1) * value_size]

    def read(self, keys: list[bytes]) -> list[bytes | None]:
        values: list[bytes | None] = []
        for key in keys:
            try:
                values.append(map_lookup(self._fd, key, STREAM.size, BPF_F_LOCK))
            except OSError:
                self.stats.failures += 1
                values.append(None)
        return values

    def delete(self, keys: list[bytes]) -> None:
        for key in keys:
            try:
                map_delete(self._fd, key)
            except FileNotFoundError:
                continue  # gone already
            except OSError:
                self.stats.failures += 1

