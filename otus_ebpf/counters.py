"""Read the kernel's per-CPU counters and format the plain stats line."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from otus_ebpf.loader import COUNTERS_MAP
from userspace.event import Counter, Direction
from userspace.pipeline import PipelineStats
from userspace.reporters.kafka import KafkaStats

KernelCounts = dict[tuple[Direction, Counter], int]
_COUNTERS = [c for c in Counter if c is not Counter.MAX]


def read_kernel_counters(bpf: Any) -> KernelCounts:
    table = bpf[COUNTERS_MAP]
    counts: KernelCounts = {}
    for direction in Direction:
        for counter in _COUNTERS:
            index = direction * Counter.MAX + counter
            counts[direction, counter] = int(table.sum(ctypes.c_int(index)).value)
    return counts


@dataclass(frozen=True, slots=True)
class StatsLine:
    interface: str
    kernel: KernelCounts
    pipeline: PipelineStats
    kafka: KafkaStats | None = None

    def format(self) -> str:
        parts = [f"otus-ebpf: {self.interface}"]
        for direction in Direction:
            k = {c: self.kernel[direction, c] for c in _COUNTERS}
            parts.append(
                f"{direction.name.lower()} seen={k[Counter.SEEN]} matched={k[Counter.MATCHED]} "
                f"submitted={k[Counter.SUBMITTED]} submit_failed={k[Counter.SUBMIT_FAILED]}"
            )
        p = self.pipeline
        errors = p.event_errors + p.decode_errors + p.sip_errors
        parts.append(f"records={p.records} not_sip={p.not_sip + p.empty_payloads} errors={errors}")
        if self.kafka is not None:
            kafka = self.kafka
            parts.append(f"kafka produced={kafka.produced} delivered={kafka.delivered} "
                         f"failed={kafka.failed} queue_full={kafka.queue_full}")
        return " | ".join(parts)
