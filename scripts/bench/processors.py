"""What each processor chain costs a whole `otus-ebpf replay`, against the same
replay without processors, in the same run.

    .venv/bin/python scripts/bench/processors.py [--messages 35000] [--rounds 5]

Input: the fair pcap of scripts/bench/replay.py (whole SIP calls between
varied hosts). Each chain's replay and the bare one run back to back, each
round; a row's ratio is the median of the rounds' ratios of CPU seconds (the
whole process: other work on a shared machine stretches wall time, not
this), and µs a message is the median extra cost over the SIP messages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf import logs
from otus_ebpf.capture.replay import run_replay
from otus_ebpf.options import AttachOptions
from scripts.bench.replay import varied_calls, write_pcap
from userspace.processors.build import parse_specs


def chains(key: Path) -> dict[str, list[dict[str, object]]]:
    return {
        "filter: drop by method": [{"filter": {"drop": {"method": ["OPTIONS", "NOTIFY"]}}}],
        "filter: keep by number prefix": [{"filter": {"keep": {"number": {"prefix": ["+49", "10"]}},
                                                      "calls": True}}],
        "filter: header regex": [{"filter": {"drop": {"header": {"name": "User-Agent",
                                                                 "regex": "^scanner"}}}}],
        "label: static + header": [{"label": {"static": {"site": "fra1"},
                                              "from_header": {"ua": "User-Agent"}}}],
        "redact: mask": [{"redact": {"mode": "mask"}}],
        "redact: hash": [{"redact": {"mode": "hash", "key_file": str(key)}}],
        "sample: 1 in 10": [{"sample": {"one_in": 10}}],
    }


def cpu_seconds(capture: Path, options: AttachOptions) -> float:
    out = Path(options.out or "")
    out.unlink(missing_ok=True)
    started = time.process_time()
    assert run_replay(capture, options, None) == 0
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=35_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logs.configure("warning")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        capture = work / "calls.pcap"
        messages = write_pcap(capture, varied_calls(args.messages))
        key = work / "redact.key"
        key.write_text("a-benchmark-redaction-key-0123456789")
        bare = AttachOptions(("bench",), out=str(work / "bare.jsonl"))
        print(f"{messages:,} SIP messages, {args.rounds} rounds; CPU s of a whole replay")
        print(f"{'chain':34} {'bare':>8} {'chain':>8}  ratio   extra")
        for name, chain in chains(key).items():
            options = AttachOptions(("bench",), out=str(work / "chain.jsonl"), processors=parse_specs(chain))
            pairs = [(cpu_seconds(capture, bare), cpu_seconds(capture, options)) for _ in range(args.rounds)]
            ratio = statistics.median(c / b for b, c in pairs)
            extra_us = statistics.median((c - b) / messages * 1e6 for b, c in pairs)
            print(f"{name:34} {min(b for b, _ in pairs):7.3f}s {min(c for _, c in pairs):7.3f}s  "
                  f"{ratio:.3f}x  {extra_us:+.2f} us a message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
