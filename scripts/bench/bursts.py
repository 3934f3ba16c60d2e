"""SIP bursts past what one core parses: records kept by XDP and by AF_PACKET
capture at the same paced rates, in the same run.

    sudo .venv/bin/python scripts/bench/bursts.py [--rates 20000,50000] [--seconds 10] [--workers 1]
                                                  [--ring-mb 64]

A lab (two namespaces joined by a veth, created here and removed at the
end) carries a trunk's SIP (tests/support/trunk.py, UDP) replayed by
tcpreplay at each rate for the given time (the file of two seconds' worth,
looped). The agent runs as operators run it (`otus-ebpf attach`), once per
mode and rate, with the default ring sizes; it stops when its output has
not grown for a while, and the SIP records in its file are counted. Under
overload the loss must be counted (the kernel's submit_failed, AF_PACKET's
drops) and the records kept must never fall as the offered rate rises.
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

from otus_ebpf.kernel.settings import DEFAULT_RING_MB
from tests.support.agent import final_stats, start_agent
from tests.support.lab import Lab, interface_mac, lab_down, lab_up, tcpreplay
from tests.support.trunk import write_udp_pcap

MESSAGES_PER_CALL = 7
QUIET_S = 5.0  # the output has not grown for this long: the agent has caught up
STOP_GRACE_S = 120.0  # a full ring takes seconds to drain at stop
DRAIN_LIMIT_S = 300.0


def wait_until_quiet(out: Path) -> None:
    last, since, started = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - since < QUIET_S and time.monotonic() - started < DRAIN_LIMIT_S:
        size = out.stat().st_size if out.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        time.sleep(0.2)


def sip_records(out: Path) -> int:
    with out.open("rb") as lines:
        return sum(1 for line in lines if line.startswith(b'{"schema":') and b'"kind":"sip"' in line[:40])


def run(lab: Lab, mode: str, workers: int, rate: int, pcap: Path, loops: int,
        workdir: Path, ring_mb: int) -> dict[str, int]:
    out = workdir / f"{mode}-{rate}.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, workdir / f"{mode}-{rate}.log",
                        ["--mode", mode, "--workers", str(workers), "--direction", "ingress",
                         "--ring-mb", str(ring_mb)])
    try:
        tcpreplay(lab, pcap, rate, loops)
        wait_until_quiet(out)
    finally:
        status = agent.stop(signal.SIGTERM, grace=STOP_GRACE_S)
    if status != 0:
        raise SystemExit(f"{mode} at {rate}/s: the agent exited with {status}:\n{agent.output()[-3000:]}")
    stats = final_stats(agent)
    lost = stats.get("ingress_submit_failed", 0) + stats.get("afpacket_drops", 0)
    seen = stats.get("ingress_seen", stats.get("afpacket_packets", 0))
    return {"kept": sip_records(out), "counted_lost": lost, "seen": seen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20000,50000", help="messages a second, comma-separated")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="for XDP (AF_PACKET reads in one process)")
    parser.add_argument("--ring-mb", type=int, default=DEFAULT_RING_MB, help="XDP's ring per worker")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    lab = lab_up(f"otus-b{os.getpid() % 100000}")
    kept: dict[tuple[str, int], int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for rate in rates:
                pcap = workdir / f"trunk-{rate}.pcap"
                calls = 2 * rate // MESSAGES_PER_CALL  # two seconds' worth, looped
                messages = write_udp_pcap(pcap, calls, src_mac=interface_mac(lab.uac_ns, lab.uac_if),
                                          dst_mac=interface_mac(lab.uas_ns, lab.uas_if))
                loops = max(1, args.seconds // 2)
                offered = messages * loops
                for mode in ("afpacket", "xdp"):
                    result = run(lab, mode, args.workers if mode == "xdp" else 1, rate, pcap, loops, workdir,
                                 args.ring_mb)
                    kept[mode, rate] = result["kept"]
                    print(f"  {mode:8} {rate:>6,}/s for {args.seconds} s: offered {offered:>9,}, kept "
                          f"{result['kept']:>9,} ({result['kept'] / offered:6.1%}), counted lost "
                          f"{result['counted_lost']:,}; the capture saw {result['seen']:,}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            lab_down(lab)
    for rate in rates:
        print(f"  at {rate:,}/s: XDP / AF_PACKET = {kept['xdp', rate] / max(1, kept['afpacket', rate]):.2f}x")
    for mode in ("xdp", "afpacket"):
        print(f"  {mode}: kept at {rates[-1]:,}/s / kept at {rates[0]:,}/s = "
              f"{kept[mode, rates[-1]] / max(1, kept[mode, rates[0]]):.2f}x (never below 1: no collapse)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
