"""The rings: one ring buffer per shard, created by user space and set in the
programs' array of rings. A record must come out of the ring of the shard its
header names, and a reader of one shard (a worker process's) sees only that."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otus_ebpf.kernel.bpfsys import prog_test_run
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.settings import KernelSettings
from tests.support.frames import ethernet, ipv4, udp
from tests.support.kernel import KernelHarness
from tests.support.sip_samples import INVITE
from userspace.event import decode_event

SHARDS = 4
CONVERSATIONS = 32  # source addresses: enough to reach every shard


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelHarness]:
    harness = KernelHarness(KernelSettings(shards=SHARDS, ring_mb=1))
    try:
        yield harness
    finally:
        harness.close()


def test_each_shards_reader_takes_the_records_of_its_shard_only(kernel: KernelHarness) -> None:
    readers = [open_reader(kernel.programs, only=(shard,)) for shard in range(SHARDS)]
    for host in range(1, CONVERSATIONS + 1):
        frame = ethernet(ipv4(udp(INVITE, 5060, 5060), src=f"10.0.0.{host}", dst="10.0.1.1"))
        prog_test_run(kernel.programs.xdp_fd, frame)
    taken = {shard: [decode_event(raw) for raw in reader.drain()] for shard, reader in enumerate(readers)}

    assert all(taken.values()), {shard: len(events) for shard, events in taken.items()}
    assert sum(len(events) for events in taken.values()) == CONVERSATIONS
    assert all(event.shard == shard for shard, events in taken.items() for event in events)
