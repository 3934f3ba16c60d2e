"""End-to-end SIP messages/s (ring → worker → record on disk) with 1 worker,
with 2 worker processes writing one file through their parent (the default),
and with 2 writing a file each (--per-worker-files), in the same run.

    sudo .venv/bin/python scripts/bench/workers.py [--ring-mb 128] [--pairs 8]

The agent's task runs here with its programs attached to the lab's UAS
interface (a namespace this script creates and removes). While its readers
are held (the worker processes SIGSTOPped; the single in-process reader not
yet polling), BPF_PROG_TEST_RUN runs the task's own XDP program on SIP
frames from several address pairs until every shard's ring is full. Then
the readers go, and the time until the last event is a JSON line in the
output file(s) is measured: messages per second over the drain. Filling first keeps
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

from otus_ebpf import logs
from otus_ebpf.capture.sources import CaptureDirection
from otus_ebpf.capture.supervisor import Supervisor
from otus_ebpf.control.task import Task
from otus_ebpf.kernel.bpfsys import prog_test_run
from otus_ebpf.kernel.counters import read_kernel_counters, read_shard_failures
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.options import AttachOptions
from tests.support import netns
from tests.support.frames import ethernet, ipv4, udp
from tests.support.lab import lab_down, lab_up
from tests.support.sip_samples import INVITE
from userspace.event import Counter, Direction

REPEAT = 64
FILL_LIMIT_S = 120.0
QUIET_S = 1.0  # no new events for this long: the rings are drained


def progress(task: Task, outputs: list[Path]) -> tuple[int, int]:
    """Events parsed so far, and bytes in the output files."""
    sample = task.metrics_sample()
    written = sum(p.stat().st_size for p in outputs if p.exists())
    return int(sum(sample.counters.get("otus_events_total", {}).values())), written


def run(workers: int, per_worker_files: bool, ring_mb: int, interface: str, ns: str, workdir: Path,
        pairs: int) -> tuple[float, int, list[int]]:
    out = workdir / f"bench-{workers}{'-each' if per_worker_files else ''}.jsonl"
    options = AttachOptions((interface,), direction=CaptureDirection.INGRESS,
                            out=str(out), stats_interval_s=3600.0,
                            kernel=KernelSettings(shards=workers, ring_mb=ring_mb),
                            worker_processes=workers > 1, per_worker_files=per_worker_files)
    outputs = [out.with_name(f"{out.stem}.w{n}{out.suffix}") for n in range(workers)] if per_worker_files \
        else [out]
    # Calls of their own (the kernel routes SIP by Call-ID), from several address pairs.
    frames = [ethernet(ipv4(udp(INVITE.replace(b"a84b4c76e66710@", f"a84b4c76e66710-{n}-{c}@".encode())),
                            src=f"10.9.0.{10 + n}", dst="10.9.0.2")) for n in range(pairs) for c in range(8)]
    with netns.inside(ns):
        task = Task(f"bench-{workers}", options)
        task.start()
    supervisor = task.engine if isinstance(task.engine, Supervisor) else None
    pids = [w.process.pid for w in supervisor._workers] if supervisor else []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    programs = supervisor._programs if supervisor else task.runner.capture._programs  # type: ignore[union-attr]
    before = read_shard_failures(programs.bpf, workers)

    def refused_least() -> int:
        return min(a - b for a, b in zip(read_shard_failures(programs.bpf, workers), before, strict=True))

    give_up = time.monotonic() + FILL_LIMIT_S
    while refused_least() < REPEAT:
        for frame in frames:  # until every shard's ring has refused some records: all are full
            prog_test_run(programs.xdp_fd, frame, REPEAT)
        if time.monotonic() > give_up:
            raise SystemExit(f"a shard's ring never filled in {FILL_LIMIT_S:.0f} s: frames miss it")
    queued = _submitted(programs)
    stop = threading.Event()
    runner = threading.Thread(target=task.run, args=(stop,))
    started = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    runner.start()
    last, last_change = (-1, -1), time.monotonic()
    while time.monotonic() - last_change < QUIET_S:
        time.sleep(0.05)
        now = progress(task, outputs)
        if now != last:
            last, last_change = now, time.monotonic()
    elapsed = last_change - started
    per_worker = [int(p["figures"]["pipeline"]["events"])
                  for p in (supervisor.worker_payloads() if supervisor else [])]
    stop.set()
    runner.join()
    task.stop()
    return last[0] / elapsed, queued, per_worker


def _submitted(programs: Any) -> int:
    counts = read_kernel_counters(programs.bpf)
    return int(counts[Direction.INGRESS, Counter.SUBMITTED])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ring-mb", type=int, default=128,
                        help="per shard, a power of two: big enough that a drain lasts seconds")
    parser.add_argument("--pairs", type=int, default=8, help="address pairs the load comes from")
    args = parser.parse_args()
    logs.configure("warning")  # the figures only, not each task's own lines
    lab = lab_up(f"otus-w{os.getpid() % 100000}")
    rates = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers, each, name in ((1, False, "1 worker"), (2, False, "2 workers, one file"),
                                        (2, True, "2 workers, a file each")):
                rate, queued, per_worker = run(workers, each, args.ring_mb, lab.uas_if, lab.uas_ns,
                                               Path(tmp), args.pairs)
                rates[name] = rate
                split = f"; per worker {per_worker}" if per_worker else ""
                print(f"  {name}: {rate:>10,.0f} SIP messages/s end to end "
                      f"({queued:,} queued in the rings, then drained{split})")
    finally:
        with contextlib.suppress(Exception):
            lab_down(lab)
    one, joined, each = rates.values()
    print(f"  2 workers (one file) / 1 worker = {joined / one:.2f}x; one file / a file each = "
          f"{joined / each:.2f}x  ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
