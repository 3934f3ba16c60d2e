"""Read the kernel's per-CPU counters and format the plain stats line.

The "counters" map holds one ``struct otus_counters`` per direction; a
lookup of a per-CPU map hands over one copy per possible CPU, summed here.
"""

from __future__ import annotations

import struct
from typing import Any

from otus_ebpf.kernel.abi import COUNTERS_VALUE, MAX_SHARDS
from otus_ebpf.kernel.bpfsys import map_lookup, possible_cpus
from otus_ebpf.kernel.loader import COUNTERS_MAP, LoadedPrograms
from otus_ebpf.kernel.maps import table
from otus_ebpf.kernel.tls import format_tls_counts, read_tls_counters
from userspace.event import Counter, Direction

KernelCounts = dict[tuple[Direction, Counter], int]
COUNTERS = tuple(c for c in Counter if c is not Counter.MAX)
MATCHES = (Counter.MATCHED_SIP_PORT, Counter.MATCHED_SIP_SIGNATURE, Counter.MATCHED_RTP,
           Counter.MATCHED_RTCP, Counter.MATCHED_FRAGMENT)
_U32 = struct.Struct("=I")


def sum_over_cpus(raw: bytes, cpus: int) -> tuple[int, ...]:
    """Every field of a per-CPU ``otus_counters`` value, summed over its CPUs' copies
    (each 8-byte aligned: the struct's size already is)."""
    copies = (COUNTERS_VALUE.unpack_from(raw, cpu * COUNTERS_VALUE.size) for cpu in range(cpus))
    return tuple(sum(field) for field in zip(*copies, strict=True))


def read_counters(fd: int) -> tuple[KernelCounts, list[int]]:
    """The counters map behind ``fd``: each direction's counters, and the failed ring
    submits of every shard (OTUS_MAX_SHARDS of them), both directions together."""
    cpus = possible_cpus()
    counts: KernelCounts = {}
    failures = [0] * MAX_SHARDS
    for direction in Direction:
        raw = map_lookup(fd, _U32.pack(direction), COUNTERS_VALUE.size * cpus)
        fields = sum_over_cpus(raw or bytes(COUNTERS_VALUE.size * cpus), cpus)
        for counter in COUNTERS:
            counts[direction, counter] = fields[counter]
        for shard in range(MAX_SHARDS):
            failures[shard] += fields[Counter.MAX + shard]
    return counts, failures


def read_kernel_counters(bpf: Any) -> KernelCounts:
    return read_counters(table(bpf, COUNTERS_MAP).map_fd)[0]


def read_shard_failures(bpf: Any, shards: int) -> list[int]:
    return read_counters(table(bpf, COUNTERS_MAP).map_fd)[1][:shards]


# Tunnels opened, every kind (bpf/otus.c "Tunnels")
DECAPSULATED = (Counter.DECAP_VXLAN, Counter.DECAP_GENEVE, Counter.DECAP_GRE, Counter.DECAP_ERSPAN,
                Counter.DECAP_IPIP)


def matched(counts: KernelCounts, direction: Direction) -> int:
    return sum(counts[direction, c] for c in MATCHES)


def format_kernel_counts(counts: KernelCounts) -> list[str]:
    """One stats-line section per direction."""
    sections = []
    for direction in Direction:
        k = {c: counts[direction, c] for c in COUNTERS}
        opened = sum(counts[direction, c] for c in DECAPSULATED)
        sections.append(
            f"{direction.name.lower()} seen={k[Counter.SEEN]} matched={matched(counts, direction)} "
            f"filtered={k[Counter.FILTERED]} dropped_method={k[Counter.DROPPED_METHOD]} "
            f"duplicate={k[Counter.DUPLICATE]} submitted={k[Counter.SUBMITTED]} "
            f"submit_failed={k[Counter.SUBMIT_FAILED]} media_counted={k[Counter.MEDIA_COUNTED]} "
            f"streams_full={k[Counter.STREAMS_FULL]} dedup_displaced={k[Counter.DEDUP_DISPLACED]} "
            f"decapsulated={opened} decap_bad={k[Counter.DECAP_BAD]} "
            f"decap_nested={k[Counter.DECAP_NESTED]} decap_untrusted={k[Counter.DECAP_UNTRUSTED]}"
        )
    return sections


def program_sections(programs: LoadedPrograms) -> list[str]:
    """The stats line's sections for the loaded programs: each direction's counters,
    and TLS's when it is loaded."""
    sections = format_kernel_counts(read_kernel_counters(programs.bpf))
    if programs.tls:
        sections.append(format_tls_counts(read_tls_counters(programs.bpf)))
    return sections


def program_counters(programs: LoadedPrograms) -> dict[str, dict[str, int]]:
    """The loaded programs' cumulative counters, per capturer: the hooks, each ring
    shard, and TLS's probes when loaded."""
    bpf = programs.bpf
    kernel = {f"{d.name.lower()}_{c.name.lower()}": v for (d, c), v in read_kernel_counters(bpf).items()}
    shards = read_shard_failures(bpf, programs.shards)
    found = {"kernel": kernel, **{f"shard{n}": {"submit_failed": f} for n, f in enumerate(shards)}}
    if programs.tls:
        found["tls"] = read_tls_counters(bpf)
    return found
