"""Live RTP at a carrier's rate: every packet counted, and what it costs the
agent, with the kernel measuring the streams (`--media stats`, the default)
beside today's per-packet copy (`--media packets`), in the same run.

    sudo .venv/bin/python scripts/bench/live_media.py [--streams 2000] [--rate 250000] [--seconds 10]
                                                      [--frame 74] [--modes stats,packets]

A lab (two namespaces joined by a veth, created here and removed at the
end) carries a trunk: STREAMS calls are set up (INVITE, 100, 180, 200 with
SDP, ACK; one RTP stream each, SBC to core), then tcpreplay sends their RTP
round-robin at RATE packets/s for SECONDS (every packet a new sequence
number: nothing is looped), then every call ends (BYE, 200). The agent runs
as operators run it (`otus-ebpf attach`, ingress, worker processes).

Counted: the packets the call summaries' streams report, against the packets
sent. Cost: the CPU time of the agent's whole process tree (parent and
workers, /proc) while the RTP was sent and a second after, as a share of one
core over that time, and its ratio between the two modes. The RTP frames are
addressed to another host's MAC, as a mirror port delivers them (the lab's
stack drops them after XDP, so the one sender keeps the rate on a small VM);
the rate it reached is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.agent import final_stats, read_records, start_agent
from tests.support.lab import Lab, interface_mac, lab_down, lab_up, tcpreplay
from tests.support.media_trunk import MediaTrunk, write_media_trunk
from tests.support.trunk import MAC_B

SIGNALLING_PPS = 5_000
LEARN_WAIT_S = 5.0
QUIET_S = 5.0
DRAIN_S = 1.0
STOP_GRACE_S = 120.0


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (live ones)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    pending += [int(c) for c in (task / "children").read_text().split()]
    return total / ticks


def wait_until_quiet(out: Path) -> None:
    last, since = -1, time.monotonic()
    while time.monotonic() - since < QUIET_S:
        size = sum(p.stat().st_size for p in out.parent.glob(f"{out.stem}*{out.suffix}"))  # not its log
        if size != last:
            last, since = size, time.monotonic()
        time.sleep(0.2)


def run(lab: Lab, mode: str, files: MediaTrunk, rate: int, workdir: Path) -> dict[str, float]:
    out = workdir / f"{mode}.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, workdir / f"{mode}.log",
                        ["--direction", "ingress", "--media", mode])
    try:
        tcpreplay(lab, files.setup, SIGNALLING_PPS)
        time.sleep(LEARN_WAIT_S)  # the answers' endpoints reach the kernel's flow map
        cpu_before, wall_before = tree_cpu_s(agent.pid), time.monotonic()
        tcpreplay(lab, files.rtp, rate)
        sending = time.monotonic() - wall_before
        time.sleep(DRAIN_S)  # what the rings still hold is part of the cost
        cpu, wall = tree_cpu_s(agent.pid) - cpu_before, time.monotonic() - wall_before
        tcpreplay(lab, files.teardown, SIGNALLING_PPS)
        wait_until_quiet(out)
    finally:
        status = agent.stop(signal.SIGTERM, grace=STOP_GRACE_S)
    if status != 0:
        raise SystemExit(f"--media {mode}: the agent exited with {status}:\n{agent.output()[-3000:]}")
    stats = final_stats(agent)
    summaries = [r for r in read_records(out) if r.get("kind") == "call"]
    counted = sum(int(s["packets"]) for r in summaries for s in r.get("streams", []))
    return {"counted": counted, "cpu": cpu, "wall": wall, "sending": sending, "calls": len(summaries),
            "submit_failed": stats.get("ingress_submit_failed", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=250_000, help="RTP packets a second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--frame", type=int, default=74, help="bytes of each RTP frame")
    parser.add_argument("--modes", default="stats,packets")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout still tears the lab down
    lab = lab_up(f"otus-m{os.getpid() % 100000}")
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            per_stream = args.rate * args.seconds // args.streams
            # Addressed to another host's MAC, as a mirror port delivers frames: the receiving
            # stack drops them right after XDP, so the one sender on this small VM keeps the rate.
            sender = interface_mac(lab.uac_ns, lab.uac_if)
            files = write_media_trunk(workdir, args.streams, per_stream, sender, MAC_B, args.frame)
            sent = files.packets
            print(f"  {args.streams:,} streams, {sent:,} RTP packets of {args.frame} bytes at "
                  f"{args.rate:,}/s ({per_stream:,} a stream)", flush=True)
            for mode in args.modes.split(","):
                r = results[mode] = run(lab, mode, files, args.rate, workdir)
                print(f"  --media {mode:7}: counted {int(r['counted']):>10,} of {sent:,} "
                      f"({r['counted'] / sent:7.2%}) in {int(r['calls']):,} call summaries; agent CPU "
                      f"{r['cpu']:.2f} s over {r['wall']:.1f} s = {r['cpu'] / r['wall']:6.1%} of a core "
                      f"(sent at {sent / r['sending']:,.0f}/s); "
                      f"submit_failed {int(r['submit_failed']):,}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            lab_down(lab)
    if {"stats", "packets"} <= results.keys():
        def per_packet(r: dict[str, float]) -> float:
            return r["cpu"] / max(1.0, r["counted"])

        print(f"  agent CPU per packet counted, packets / stats = "
              f"{per_packet(results['packets']) / per_packet(results['stats']):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
