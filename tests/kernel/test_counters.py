"""The kernel's counters as user space reads them: one per-CPU struct a
direction (one lookup a packet), read whole by the agent and by
`otus-ebpf stats`, which must see the same figures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otus_ebpf.kernel.abi import MAX_SHARDS
from otus_ebpf.kernel.bpfsys import map_info_by_fd, prog_test_run
from otus_ebpf.kernel.counters import read_shard_failures
from otus_ebpf.kernel.introspect import LiveMaps
from otus_ebpf.kernel.loader import COUNTERS_MAP
from otus_ebpf.kernel.maps import table
from otus_ebpf.kernel.settings import KernelSettings
from tests.support.frames import ethernet, ipv4, udp
from tests.support.kernel import Hook, KernelHarness
from tests.support.sip_samples import INVITE
from userspace.event import Counter, Direction, decode_event

SHARDS = 2
RING_MB = 1  # the smallest ring: a burst without draining overflows it
BURST = 5000  # INVITEs of ~800 bytes: about three times what 1 MiB holds


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelHarness]:
    harness = KernelHarness(KernelSettings(shards=SHARDS, ring_mb=RING_MB))
    try:
        yield harness
    finally:
        harness.close()


def invite(src: str) -> bytes:
    return ethernet(ipv4(udp(INVITE, 5060, 5060), src=src, dst="10.0.0.2"))


def test_a_full_ring_counts_each_failed_submit_in_its_shard(kernel: KernelHarness) -> None:
    bpf = kernel.programs.bpf
    before, failures_before = kernel.counters(), read_shard_failures(bpf, SHARDS)
    retval, _ns = prog_test_run(kernel.programs.xdp_fd, invite("10.0.0.1"), repeat=BURST)
    events = [decode_event(raw) for raw in kernel.reader.drain()]
    after, failures_after = kernel.counters(), read_shard_failures(bpf, SHARDS)

    assert retval == Hook.XDP.pass_verdict
    shards = {event.shard for event in events}
    assert len(shards) == 1, shards  # one conversation: one shard
    (shard,) = shards

    def moved(counter: Counter, direction: Direction = Direction.INGRESS) -> int:
        return after[direction, counter] - before[direction, counter]

    failed, submitted = moved(Counter.SUBMIT_FAILED), moved(Counter.SUBMITTED)
    assert failed > 0 and submitted == len(events)
    assert failed + submitted == BURST
    assert [a - b for a, b in zip(failures_after, failures_before, strict=True)] == [
        failed if n == shard else 0 for n in range(SHARDS)]
    assert moved(Counter.SUBMIT_FAILED, Direction.EGRESS) == 0


def test_the_stats_command_reads_what_the_agent_reads(kernel: KernelHarness) -> None:
    for src in ("10.0.0.3", "10.0.0.4"):
        for hook in Hook:
            kernel.run(invite(src), hook)
    fd = table(kernel.programs.bpf, COUNTERS_MAP).map_fd
    live = LiveMaps({COUNTERS_MAP: (fd, map_info_by_fd(fd))})

    counts = kernel.counters()
    assert counts[Direction.INGRESS, Counter.SEEN] > 0 and counts[Direction.EGRESS, Counter.SEEN] > 0
    assert live.counters() == counts
    failures = live.shard_failures()
    assert len(failures) == MAX_SHARDS
    assert failures[:SHARDS] == read_shard_failures(kernel.programs.bpf, SHARDS)
    assert failures[SHARDS:] == [0] * (MAX_SHARDS - SHARDS)
