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
workers, /proc) while the RTP was sent, as a share of one core, and its
ratio between the two modes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.agent import final_stats, read_records, start_agent
from tests.support.lab import Lab, lab_down, lab_up
from tests.support.trunk import CORE, SBC, Call, PcapWriter, Wire, call_messages, checksum

SETUP_MESSAGES = 5      # INVITE, 100, 180, 200, ACK; then BYE, 200
SIGNALLING_PPS = 5_000
RTP_PORT_A, RTP_PORT_B = 20_000, 40_000
LEARN_WAIT_S = 5.0
QUIET_S = 5.0
STOP_GRACE_S = 120.0
UDP, ETH_IPV4 = 17, 0x0800


def mac(netns: str, interface: str) -> bytes:
    text = subprocess.run(["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{interface}/address"],
                          check=True, capture_output=True, text=True).stdout.strip()
    return bytes.fromhex(text.replace(":", ""))


def calls(streams: int) -> list[Call]:
    return [Call(n, f"media-{n}@{SBC[0]}", f"{n}a", f"{n}b", (f"z9hG4bK-{n}-i", f"z9hG4bK-{n}-a",
                                                               f"z9hG4bK-{n}-b"),
                 RTP_PORT_A + 2 * n, RTP_PORT_B + 2 * n) for n in range(streams)]


def write_signalling(path: Path, wire: Wire, trunk: list[Call], part: slice) -> int:
    written = 0
    with path.open("wb") as f:
        pcap = PcapWriter(f)
        for call in trunk:
            for direction, payload in call_messages(call, SBC, CORE)[part]:
                src, dst, _, _ = wire.ends(direction)
                datagram = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
                for frame in wire.frames(direction, UDP, datagram):
                    pcap.write(frame)
                    written += 1
    return written


def write_rtp(path: Path, src_mac: bytes, dst_mac: bytes, trunk: list[Call], per_stream: int,
              frame_size: int) -> int:
    """``per_stream`` packets of each call's stream, round-robin; fixed IP id, so each stream's
    headers are computed once."""
    payload = b"\xd5" * max(0, frame_size - 14 - 20 - 8 - 12)
    prefixes = []
    for call in trunk:
        length = 20 + 8 + 12 + len(payload)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, UDP, 0,
                         socket.inet_aton(SBC[0]), socket.inet_aton(CORE[0]))
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        udp = struct.pack("!HHHH", call.rtp_a, call.rtp_b, 8 + 12 + len(payload), 0)
        prefixes.append(dst_mac + src_mac + struct.pack("!H", ETH_IPV4) + ip + udp)
    rtp = struct.Struct("!BBHII")
    with path.open("wb") as f:
        pcap = PcapWriter(f, gap_us=4)
        for i in range(per_stream):
            for n, prefix in enumerate(prefixes):
                pcap.write(prefix + rtp.pack(0x80, 0, i & 0xFFFF, i * 160, n + 1) + payload)
    return per_stream * len(prefixes)


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


def replay(lab: Lab, pcap: Path, pps: int) -> None:
    subprocess.run(["ip", "netns", "exec", lab.uac_ns, "tcpreplay", "-q", "-i", lab.uac_if, f"--pps={pps}",
                    str(pcap)], check=True, capture_output=True)


def wait_until_quiet(out: Path) -> None:
    last, since = -1, time.monotonic()
    while time.monotonic() - since < QUIET_S:
        size = sum(p.stat().st_size for p in out.parent.glob(out.stem + "*"))
        if size != last:
            last, since = size, time.monotonic()
        time.sleep(0.2)


def run(lab: Lab, mode: str, files: dict[str, Path], rate: int, workdir: Path) -> dict[str, float]:
    out = workdir / f"{mode}.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, workdir / f"{mode}.log",
                        ["--direction", "ingress", "--media", mode])
    try:
        replay(lab, files["setup"], SIGNALLING_PPS)
        time.sleep(LEARN_WAIT_S)  # the answers' endpoints reach the kernel's flow map
        cpu_before, wall_before = tree_cpu_s(agent.pid), time.monotonic()
        replay(lab, files["rtp"], rate)
        wall = time.monotonic() - wall_before
        time.sleep(1.0)  # what the rings still hold is part of the cost
        cpu = tree_cpu_s(agent.pid) - cpu_before
        replay(lab, files["teardown"], SIGNALLING_PPS)
        wait_until_quiet(out)
    finally:
        status = agent.stop(signal.SIGTERM, grace=STOP_GRACE_S)
    if status != 0:
        raise SystemExit(f"--media {mode}: the agent exited with {status}:\n{agent.output()[-3000:]}")
    stats = final_stats(agent)
    summaries = [r for r in read_records(out) if r.get("kind") == "call"]
    counted = sum(int(s["packets"]) for r in summaries for s in r.get("streams", []))
    return {"counted": counted, "cpu": cpu, "wall": wall, "calls": len(summaries),
            "submit_failed": stats.get("ingress_submit_failed", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=250_000, help="RTP packets a second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--frame", type=int, default=74, help="bytes of each RTP frame")
    parser.add_argument("--modes", default="stats,packets")
    args = parser.parse_args()
    lab = lab_up(f"otus-m{os.getpid() % 100000}")
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            wire = Wire(SBC, CORE, mac(lab.uac_ns, lab.uac_if), mac(lab.uas_ns, lab.uas_if))
            trunk = calls(args.streams)
            files = {"setup": workdir / "setup.pcap", "rtp": workdir / "rtp.pcap",
                     "teardown": workdir / "teardown.pcap"}
            write_signalling(files["setup"], wire, trunk, slice(0, SETUP_MESSAGES))
            write_signalling(files["teardown"], wire, trunk, slice(SETUP_MESSAGES, None))
            per_stream = args.rate * args.seconds // args.streams
            sent = write_rtp(files["rtp"], wire.mac_a, wire.mac_b, trunk, per_stream, args.frame)
            print(f"  {args.streams:,} streams, {sent:,} RTP packets of {args.frame} bytes at "
                  f"{args.rate:,}/s ({per_stream:,} a stream)", flush=True)
            for mode in args.modes.split(","):
                r = results[mode] = run(lab, mode, files, args.rate, workdir)
                print(f"  --media {mode:7}: counted {int(r['counted']):>10,} of {sent:,} "
                      f"({r['counted'] / sent:7.2%}) in {int(r['calls']):,} call summaries; agent CPU "
                      f"{r['cpu']:.2f} s over {r['wall']:.1f} s = {r['cpu'] / r['wall']:6.1%} of a core; "
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
