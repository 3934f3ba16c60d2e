"""The pipeline process's runtime settings: the collector and the allocator."""

from __future__ import annotations

import gc
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from otus_ebpf.runner import GC_YOUNG_THRESHOLD, tune_runtime
from tests.support.frames import ethernet, ipv4, udp
from tests.support.trunk import call_messages, new_call


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_collections_come_less_often_and_start_up_objects_are_frozen(restored_collector: None) -> None:
    tune_runtime()
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0


def _calls_pcap(path: Path, calls: int) -> None:
    rng = random.Random(3)
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, nano=True)
        for n in range(calls):
            a, b = (f"10.1.{n >> 8 & 255}.{n & 255}", 5060), (f"10.2.{n >> 8 & 255}.{n & 255}", 5060)
            for direction, message in call_messages(new_call(n, rng, a), a, b):
                src, dst = (a, b) if direction == "a->b" else (b, a)
                writer.writepkt(ethernet(ipv4(udp(message, src[1], dst[1]), src=src[0], dst=dst[0])))


_REPLAY = """
import resource, sys
import otus_ebpf.cli
sys.argv[1:] = ["replay", sys.argv[1], "--out", sys.argv[2]]
otus_ebpf.cli.entry()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
"""


def test_a_replay_does_not_fault_its_memory_in_again_and_again(tmp_path: Path) -> None:
    """Regression: each record kept orjson's bytes, which sit in a 16 kB block; freed a
    batch at a time, glibc gave them back to the kernel and faulted them in again: 2.4
    page faults a message (470,000 for a replay of 210,000). Now a few per hundred, most
    of them the heap growing once."""
    pcap = tmp_path / "calls.pcap"
    _calls_pcap(pcap, 6_000)
    messages = 6_000 * 7
    done = subprocess.run([sys.executable, "-c", _REPLAY, str(pcap), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, check=True, timeout=120)
    faults = int(done.stdout.split()[-1])
    assert faults < messages // 2, f"{faults} page faults for {messages} messages"
