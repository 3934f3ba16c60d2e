"""Where a message's time goes in `otus-ebpf replay`: microseconds per message
by stage, from a profile of every thread (the outputs write on threads of
their own), on the fair pcap of scripts/bench/replay.py.

    .venv/bin/python scripts/bench/profile_replay.py [--messages 70000] [--top 0]

Each function's own time (cProfile's tottime) is charged to the stage of the
module it is in (userspace/classify.py: classify, and so on; the standard
library and extensions by their module: json, ipaddress, struct ...). The
profiler slows everything down alike, roughly twice: the shares are the
figure that counts, the microseconds are for comparing two profiles taken
the same way. `--top N` also lists the N functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf import logs
from otus_ebpf.capture.replay import run_replay
from otus_ebpf.capture.runner import tune_runtime
from otus_ebpf.options import AttachOptions
from scripts.bench.replay import varied_calls, write_pcap

# Path fragments to the stage their time is charged to, first match wins.
STAGES = (
    ("userspace/classify", "classify"), ("userspace/event", "event encode/decode"),
    ("userspace/frame", "frame parse"), ("userspace/reassembly", "reassembly"), ("userspace/tcp", "tcp"),
    ("userspace/sip", "SIP parse"), ("userspace/uri", "SIP parse"), ("userspace/sdp", "SDP"),
    ("userspace/calls", "calls"), ("userspace/endpoints", "calls"), ("userspace/media", "calls"),
    ("userspace/records", "records"), ("userspace/reporters", "outputs"), ("otus_ebpf/fanout", "outputs"),
    ("otus_ebpf/replay", "replay (read pcap)"), ("userspace/pipeline", "pipeline"), ("otus_ebpf/", "agent"),
    ("json", "json"), ("orjson", "json"), ("posix.write", "outputs"), ("ipaddress", "ipaddress"),
    ("threading", "threads, queues"), ("queue", "threads, queues"),
)
WAITING = "acquire' of '_thread.lock"  # a thread blocked on a lock or a queue: idle, not work


class AllThreads:
    """cProfile on the main thread and on every thread started while it runs."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._original = threading.Thread.run

    def __enter__(self) -> AllThreads:
        profiles, original = self.profiles, self._original

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.runcall(original, thread)

        threading.Thread.run = run  # type: ignore[method-assign]
        main = cProfile.Profile()
        profiles.append(main)
        main.enable()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.profiles[0].disable()
        threading.Thread.run = self._original  # type: ignore[method-assign]

    def stats(self) -> pstats.Stats:
        merged = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            merged.add(profile)
        return merged


def stage_of(filename: str, function: str) -> str | None:
    """The stage a function's own time goes to; None for time spent waiting."""
    where = f"{filename} {function}"
    if WAITING in where:
        return None
    for fragment, stage in STAGES:
        if fragment in where:
            return stage
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=70_000)
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    logs.configure("warning")  # the figures only, not the replay's own lines
    tune_runtime()  # as the agent's command line does
    with tempfile.TemporaryDirectory() as tmp:
        pcap, out = Path(tmp) / "varied.pcap", Path(tmp) / "records.jsonl"
        messages = write_pcap(pcap, varied_calls(args.messages))
        options = AttachOptions(("replay",), out=str(out))
        started = time.perf_counter()
        with AllThreads() as profiled:
            status = run_replay(pcap, options, None)
        wall = time.perf_counter() - started
        assert status == 0, f"replay exited {status}"
    raw: dict[Any, Any] = profiled.stats().stats  # type: ignore[attr-defined]
    by_stage: dict[str, float] = defaultdict(float)
    waiting = 0.0
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        stage = stage_of(filename, function)
        if stage is None:
            waiting += tottime
        else:
            by_stage[stage] += tottime
    total = sum(by_stage.values())
    print(f"{messages:,} SIP messages replayed under the profiler in {wall:.1f} s: "
          f"{total / messages * 1e6:.1f} us a message of work over every thread "
          f"(and {waiting:.1f} s of threads waiting, left out)")
    for stage, seconds in sorted(by_stage.items(), key=lambda item: -item[1]):
        print(f"  {stage:22} {seconds / messages * 1e6:>7.2f} us/message  {seconds / total:6.1%}")
    if args.top:
        print()
        profiled.stats().sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
