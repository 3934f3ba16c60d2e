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
if sys.argv[1] == "defaults":
    otus_ebpf.cli.tune_runtime = lambda: None  # glibc's and CPython's defaults
otus_ebpf.cli.main(["replay", sys.argv[2], "--out", sys.argv[3]])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
"""


def test_a_replay_keeps_freed_memory_for_reuse_instead_of_faulting_it_back(tmp_path: Path) -> None:
    """With glibc's defaults a replay's freed memory went back to the kernel and was
    faulted in again (470,000 page faults for 210,000 messages); tuned, it stays."""
    pcap = tmp_path / "calls.pcap"
    _calls_pcap(pcap, 6_000)
    faults = {}
    for how in ("defaults", "tuned"):
        done = subprocess.run([sys.executable, "-c", _REPLAY, how, str(pcap), str(tmp_path / f"{how}.jsonl")],
                              capture_output=True, text=True, check=True, timeout=120)
        faults[how] = int(done.stdout.split()[-1])
    assert faults["tuned"] * 3 < faults["defaults"], faults
