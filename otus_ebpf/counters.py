"""Read the kernel's per-CPU counters and format the plain stats line."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

from otus_ebpf.loader import COUNTERS_MAP, SHARD_FAILURES_MAP
from otus_ebpf.maps import table
from userspace.event import Counter, Direction
from userspace.pipeline import PipelineStats
from userspace.reassembly import ReassemblyStats
from userspace.reporters.kafka import KafkaStats

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


def fragment_drops(r: ReassemblyStats) -> int:
    """Datagrams (or their fragments) given up, for whatever reason; each reason has its own counter."""
    return (r.overlaps + r.discarded + r.too_big + r.malformed + r.timeouts + r.too_many_fragments
            + r.evicted_per_source + r.evicted_datagrams + r.evicted_bytes)


@dataclass(frozen=True, slots=True)
class StatsLine:
    interface: str
    capture: list[str]  # sections from the capture source
    pipeline: PipelineStats
    kafka: KafkaStats | None = None
    reassembly: ReassemblyStats | None = None
    outputs: list[str] = field(default_factory=list)  # one summary per output's queue

    def format(self) -> str:
        parts = [f"otus-ebpf: {self.interface}", *self.capture]
        p = self.pipeline
        errors = p.event_errors + p.decode_errors + p.sip_errors
        parts.append(f"events={p.events} records={p.records} media={p.media} "
                     f"not_sip={p.not_sip + p.empty_payloads} errors={errors}")
        if self.reassembly is not None:
            r = self.reassembly
            parts.append(f"fragments={r.fragments} reassembled={r.datagrams} "
                         f"fragment_drops={fragment_drops(r)}")
        if self.kafka is not None:
            kafka = self.kafka
            parts.append(f"kafka produced={kafka.produced} delivered={kafka.delivered} "
                         f"failed={kafka.failed} queue_full={kafka.queue_full} backlog={kafka.backlog} "
                         f"dropped={kafka.dropped} in_flight={kafka.in_flight} retried={kafka.retried}")
        parts += self.outputs
        return " | ".join(parts)
