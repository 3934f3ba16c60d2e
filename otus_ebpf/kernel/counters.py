"""Read the kernel's per-CPU counters and format the plain stats line."""

from __future__ import annotations

import ctypes
from typing import Any

from otus_ebpf.kernel.loader import COUNTERS_MAP, SHARD_FAILURES_MAP
from otus_ebpf.kernel.maps import table
from userspace.event import Counter, Direction

KernelCounts = dict[tuple[Direction, Counter], int]
COUNTERS = tuple(c for c in Counter if c is not Counter.MAX)
MATCHES = (Counter.MATCHED_SIP_PORT, Counter.MATCHED_SIP_SIGNATURE, Counter.MATCHED_RTP,
           Counter.MATCHED_RTCP, Counter.MATCHED_FRAGMENT)


def read_kernel_counters(bpf: Any) -> KernelCounts:
    counters = table(bpf, COUNTERS_MAP)
    counts: KernelCounts = {}
    for direction in Direction:
        for counter in COUNTERS:
            index = direction * Counter.MAX + counter
            counts[direction, counter] = int(counters.sum(ctypes.c_int(index)).value)
    return counts


def read_shard_failures(bpf: Any, shards: int) -> list[int]:
    failures = table(bpf, SHARD_FAILURES_MAP)
    return [int(failures.sum(ctypes.c_int(shard)).value) for shard in range(shards)]


def matched(counts: KernelCounts, direction: Direction) -> int:
    return sum(counts[direction, c] for c in MATCHES)


def format_kernel_counts(counts: KernelCounts) -> list[str]:
    """One stats-line section per direction."""
    sections = []
    for direction in Direction:
        k = {c: counts[direction, c] for c in COUNTERS}
        sections.append(
            f"{direction.name.lower()} seen={k[Counter.SEEN]} matched={matched(counts, direction)} "
            f"filtered={k[Counter.FILTERED]} submitted={k[Counter.SUBMITTED]} "
            f"submit_failed={k[Counter.SUBMIT_FAILED]} media_counted={k[Counter.MEDIA_COUNTED]} "
            f"streams_full={k[Counter.STREAMS_FULL]}"
        )
    return sections
