"""Live loss on the namespace lab: blast SIP datagrams at the agent's
interface as fast as the sender can and account for every packet.

    sudo .venv/bin/python scripts/bench/live_loss.py [--seconds 10] [--workers 1 2]

For each worker count: the kernel's matched count must equal what user
space received plus what the kernel counted as failed submits (nothing
unaccounted). The sender's own count is the in-run baseline: received/sent
is the ratio printed. The lab and every process are torn down at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.agent import final_stats, start_agent
from tests.support.lab import Lab, lab_down, lab_up

SOURCES = [f"10.77.0.{host}" for host in range(10, 18)]  # spread conversations over shards
BLAST = Path(__file__).with_name("blast.py")
DRAIN_GRACE_S = 120.0


def run_once(lab: Lab, workdir: Path, workers: int, seconds: float) -> dict[str, int]:
    agent = start_agent(lab.uas_ns, lab.uas_if, workdir / f"out-{workers}.jsonl",
                        workdir / f"agent-{workers}.log",
                        ["--workers", str(workers), "--direction", "ingress",
                         "--stats-interval", "60"])
    try:
        blast = subprocess.run(["ip", "netns", "exec", lab.uac_ns, sys.executable, str(BLAST), lab.uas_v4,
                                str(seconds), *SOURCES], capture_output=True, text=True, check=True,
                               timeout=seconds + 60)
    finally:
        agent.stop(grace=DRAIN_GRACE_S)  # a full 64 MiB ring takes seconds to drain at stop
    stats = final_stats(agent)
    stats["sent"] = int(blast.stdout.strip())
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    lab = lab_up(f"otus-b{os.getpid() % 100000}")
    unaccounted_total = 0
    try:
        lab.add_uac_addresses(SOURCES)
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{'workers':>7} {'sent':>10} {'sent/s':>9} {'matched':>10} {'received':>10} "
                  f"{'failed':>8} {'unaccounted':>11} {'received/sent':>13}")
            for workers in args.workers:
                s = run_once(lab, Path(tmp), workers, args.seconds)
                matched, received = s["ingress_matched"], s["events"]
                failed = s["ingress_submit_failed"]
                unaccounted = matched - received - failed
                unaccounted_total += abs(unaccounted)
                print(f"{workers:>7} {s['sent']:>10} {s['sent'] / args.seconds:>9.0f} {matched:>10} "
                      f"{received:>10} {failed:>8} {unaccounted:>11} {received / max(1, s['sent']):>12.3f}x")
    finally:
        lab_down(lab)
    return 1 if unaccounted_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
