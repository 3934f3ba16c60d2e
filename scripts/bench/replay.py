"""Offline: `otus-ebpf replay` against `tshark -Y sip` on the same pcap of
SIP calls, in the same run.

    .venv/bin/python scripts/bench/replay.py [--calls 22300]

The pcap holds whole calls (INVITE with SDP, 100, 180, 200 with SDP, ACK,
BYE, 200, and an OPTIONS/200 pair: 9 messages each; the default makes
200,700 messages). Both tools run as whole processes and both print the
same fields of every message (replay as JSON lines with Call-ID, method or
status and CSeq, tshark with -T fields); each count is checked. The ratio
is replay's messages/s over tshark's. Target: at least 5x.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dpkt

from scripts.bench.sip import call_messages
from tests.support.frames import ethernet, ipv4, udp
from tests.support.paths import AGENT

TARGET_RATIO = 5.0


def write_pcap(path: Path, calls: int) -> int:
    hosts = ("10.0.0.1", "10.0.0.2")
    count = 0
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, nano=True)
        for n in range(calls):
            for message, from_caller in call_messages(n):
                frame = ethernet(ipv4(udp(message), src=hosts[not from_caller], dst=hosts[from_caller]))
                writer.writepkt(frame, ts=1_795_000_000 + count / 1000)
                count += 1
    return count


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=22_300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pcap, out = Path(tmp) / "calls.pcap", Path(tmp) / "records.jsonl"
        messages = write_pcap(pcap, args.calls)
        replay_s, _ = timed([str(AGENT), "replay", str(pcap), "--out", str(out)])
        records = sum(1 for line in out.read_text().splitlines() if '"kind":"sip"' in line)
        assert records == messages, f"replay wrote {records} SIP records of {messages}"
        tshark_s, fields = timed(["tshark", "-r", str(pcap), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID",
                                  "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.CSeq"])
        assert fields.count("\n") == messages, f"tshark printed {fields.count(chr(10))} of {messages}"
    replay_rate, tshark_rate = messages / replay_s, messages / tshark_s
    print(f"{messages:,} SIP messages ({args.calls:,} calls) in one pcap")
    print(f"  otus-ebpf replay : {replay_rate:>10,.0f} messages/s ({replay_s:.1f} s, whole process)")
    print(f"  tshark -Y sip    : {tshark_rate:>10,.0f} messages/s ({tshark_s:.1f} s, whole process)")
    ratio = replay_rate / tshark_rate
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"  replay / tshark = {ratio:.1f}x  (target >= {TARGET_RATIO:.0f}x: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
