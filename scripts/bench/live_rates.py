"""Live, at increasing rates: the highest SIP packet rate the agent takes
with nothing lost, beside tcpdump writing the same traffic to a file in the
same run.

    sudo .venv/bin/python scripts/bench/live_rates.py [--seconds 60] [--rates 5000 10000 20000 40000 0]
                                                      [--workers 1]

For each rate (0: as fast as the sender can), a paced sender in the lab's
UAC namespace sends SIP datagrams from 8 addresses to the UAS for SECONDS
while the agent (eBPF, ingress) and tcpdump (`udp port 5060`, to a file)
both watch uas0. The agent's loss is what the kernel could not hand over
(submit_failed) plus anything unaccounted; tcpdump's is its own "dropped by
kernel" count. The lab and every process are torn down at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.agent import final_stats, start_agent
from tests.support.lab import Lab, lab_down, lab_up
from tests.support.procs import Background

SOURCES = [f"10.77.0.{host}" for host in range(10, 18)]
BLAST = Path(__file__).with_name("blast.py")
DRAIN_GRACE_S = 120.0


def run_rate(lab: Lab, workdir: Path, rate: int, seconds: float, workers: int) -> dict[str, int]:
    agent = start_agent(lab.uas_ns, lab.uas_if, workdir / f"out-{rate}.jsonl", workdir / f"agent-{rate}.log",
                        ["--direction", "ingress", "--stats-interval", "3600", "--workers", str(workers)])
    dump_file = str(workdir / f"td-{rate}.pcap")
    tcpdump = Background(["tcpdump", "-i", lab.uas_if, "-n", "-s", "0", "-w", dump_file, "udp port 5060"],
                         workdir / f"tcpdump-{rate}.log", netns=lab.uas_ns)
    tcpdump.wait_for_output("listening on", 15)
    try:
        blast = subprocess.run(["ip", "netns", "exec", lab.uac_ns, sys.executable, str(BLAST), lab.uas_v4,
                                str(seconds), *SOURCES], capture_output=True, text=True, check=True,
                               timeout=seconds + 60, env={**os.environ, "OTUS_BLAST_RATE": str(rate)})
    finally:
        tcpdump.stop(signal.SIGINT)
        agent.stop(grace=DRAIN_GRACE_S)  # a full 64 MiB ring takes seconds to drain at stop
    stats = final_stats(agent)
    dump = tcpdump.output()
    captured = re.search(r"(\d+) packets? captured", dump)
    dropped = re.search(r"(\d+) packets? dropped by kernel", dump)
    return {"sent": int(blast.stdout.strip()), "matched": stats["ingress_matched"],
            "received": stats["events"], "failed": stats["ingress_submit_failed"],
            "td_captured": int(captured[1]) if captured else -1,
            "td_dropped": int(dropped[1]) if dropped else -1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rates", type=int, nargs="+", default=[5_000, 10_000, 20_000, 40_000, 0])
    parser.add_argument("--workers", type=int, default=1, help="the agent's worker processes")
    args = parser.parse_args()
    lab = lab_up(f"otus-r{os.getpid() % 100000}")
    best_agent = best_tcpdump = 0.0
    try:
        lab.add_uac_addresses(SOURCES)
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{'asked/s':>8} {'sent/s':>8} | {'agent got':>10} {'lost':>7} {'unacct':>6} | "
                  f"{'tcpdump got':>11} {'dropped':>8}")
            for rate in args.rates:
                r = run_rate(lab, Path(tmp), rate, args.seconds, args.workers)
                unaccounted = r["matched"] - r["received"] - r["failed"]
                agent_lost = r["failed"] + abs(unaccounted)
                sent_rate = r["sent"] / args.seconds
                print(f"{rate or 'max':>8} {sent_rate:>8,.0f} | {r['received']:>10,} {agent_lost:>7,} "
                      f"{unaccounted:>6} | {r['td_captured']:>11,} {r['td_dropped']:>8,}", flush=True)
                if agent_lost == 0:
                    best_agent = max(best_agent, sent_rate)
                if r["td_dropped"] == 0:
                    best_tcpdump = max(best_tcpdump, sent_rate)
    finally:
        lab_down(lab)
    ratio = best_agent / best_tcpdump if best_tcpdump else float("inf")
    print(f"highest rate with nothing lost: agent {best_agent:,.0f}/s, tcpdump {best_tcpdump:,.0f}/s "
          f"({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
