"""End-to-end SIP messages/s (ring → worker → record on disk) with 1 worker
and with 2 worker processes, in the same run.

    sudo .venv/bin/python scripts/bench/workers.py [--ring-pages 8192] [--pairs 8]

The agent's task runs here with its programs attached to the lab's UAS
interface (a namespace this script creates and removes). While its readers
are held (the worker processes SIGSTOPped; the single in-process reader not
yet polling), BPF_PROG_TEST_RUN runs the task's own XDP program on SIP
frames from several address pairs until every shard's ring is full. Then
the readers go, and the time until the last event is turned into a JSON
line is measured: messages per second over the drain. Filling first keeps
the load generator off the CPUs the workers need (this machine has two).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf import netns
from otus_ebpf.bpfsys import prog_test_run
from otus_ebpf.capture import CaptureDirection
from otus_ebpf.counters import read_kernel_counters, read_shard_failures
from otus_ebpf.loader import KernelSettings
from otus_ebpf.options import AttachOptions
from otus_ebpf.task import Task
from otus_ebpf.workers import WorkersCapture
from tests.support.frames import ethernet, ipv4, udp
from tests.support.lab import lab_down, lab_up
from tests.support.sip_samples import INVITE
from userspace.event import Counter, Direction

REPEAT = 64
QUIET_S = 1.0  # no new events for this long: the rings are drained


def events(task: Task) -> int:
    sample = task.metrics_sample()
    return int(sum(sample.counters.get("otus_events_total", {}).values()))


def run(workers: int, ring_pages: int, interface: str, ns: str, workdir: Path,
        pairs: int) -> tuple[float, int, list[int]]:
    options = AttachOptions((interface,), direction=CaptureDirection.INGRESS,
                            out=str(workdir / f"bench-{workers}.jsonl"), stats_interval_s=3600.0,
                            kernel=KernelSettings(shards=workers, ring_pages=ring_pages),
                            worker_processes=workers > 1)
    frames = [ethernet(ipv4(udp(INVITE), src=f"10.9.0.{10 + n}", dst="10.9.0.2")) for n in range(pairs)]
    with netns.inside(ns):
        task = Task(f"bench-{workers}", options, lambda _m: None)
        task.start()
    capture = task.capture
    workers_capture = capture if isinstance(capture, WorkersCapture) else None
    pids = [w.process.pid for w in workers_capture._workers] if workers_capture else []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    programs = capture._programs  # type: ignore[union-attr]
    before = read_shard_failures(programs.bpf, workers)

    def refused_least() -> int:
        return min(a - b for a, b in zip(read_shard_failures(programs.bpf, workers), before, strict=True))

    while refused_least() < REPEAT:
        for frame in frames:  # until every shard's ring has refused some records: all are full
            prog_test_run(programs.xdp_fd, frame, REPEAT)
    queued = _submitted(programs)
    stop = threading.Event()
    runner = threading.Thread(target=task.run, args=(stop,))
    started = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    runner.start()
    last, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < QUIET_S:
        time.sleep(0.05)
        now = events(task)
        if now != last:
            last, last_change = now, time.monotonic()
    elapsed = last_change - started
    per_worker = [int(p["figures"]["pipeline"]["events"])
                  for p in (workers_capture.worker_payloads() if workers_capture else [])]
    stop.set()
    runner.join()
    task.stop()
    return last / elapsed, queued, per_worker


def _submitted(programs: Any) -> int:
    counts = read_kernel_counters(programs.bpf)
    return int(counts[Direction.INGRESS, Counter.SUBMITTED])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ring-pages", type=int, default=32768,
                        help="per shard, a power of two: big enough that a drain lasts seconds")
    parser.add_argument("--pairs", type=int, default=8, help="address pairs the load comes from")
    args = parser.parse_args()
    lab = lab_up(f"otus-w{os.getpid() % 100000}")
    rates = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                rate, queued, per_worker = run(workers, args.ring_pages, lab.uas_if, lab.uas_ns, Path(tmp),
                                               args.pairs)
                rates[workers] = rate
                split = f"; per worker {per_worker}" if per_worker else ""
                print(f"  {workers} worker(s): {rate:>10,.0f} SIP messages/s end to end "
                      f"({queued:,} queued in the rings, then drained{split})")
    finally:
        with contextlib.suppress(Exception):
            lab_down(lab)
    print(f"  2 workers / 1 worker = {rates[2] / rates[1]:.2f}x  ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
