"""Offline: `otus-ebpf replay` against `tshark -Y sip` on the same pcaps of SIP
calls, in the same run: one with varied hosts (the fair case, the headline)
and one on which tshark has a pathology, reported beside it.

    .venv/bin/python scripts/bench/replay.py [--messages 210000]

The fair pcap holds whole calls (INVITE with SDP, 100, 180, 200 with SDP,
ACK, BYE, 200), each with hosts and media endpoints of its own
(tests/support/trunk.py). The other holds calls between two hosts whose
SDPs all announce the same media endpoints (scripts/bench/sip.py, with an
OPTIONS pair: 9 messages a call): tshark's SDP conversation tracking goes
quadratic on it, which says nothing of our speed. Both tools run as whole
processes and print the same fields of every message (replay as JSON lines,
tshark with -T fields); each count is checked. Target (fair case): replay at
least 4x tshark.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dpkt

from scripts.bench.sip import call_messages as same_media_call
from tests.support.frames import ethernet, ipv4, udp
from tests.support.paths import AGENT
from tests.support.trunk import CORE, SBC, Endpoint, call_messages, new_call

TARGET_RATIO = 4.0
VARIED_CALL, SAME_MEDIA_CALL = 7, 9  # messages a call in each pcap


def varied_hosts(n: int) -> tuple[Endpoint, Endpoint]:
    """A caller and a callee of this call's own (up to 2**16 calls before they repeat)."""
    return (f"10.1.{(n >> 8) & 255}.{n & 255}", 5060), (f"10.2.{(n >> 8) & 255}.{n & 255}", 5060)


def varied_calls(messages: int) -> Iterator[tuple[bytes, Endpoint, Endpoint]]:
    rng = random.Random(1)
    for n in range(messages // VARIED_CALL):
        a, b = varied_hosts(n)
        for direction, message in call_messages(new_call(n, rng, a), a, b):
            yield (message, a, b) if direction == "a->b" else (message, b, a)


def same_media_calls(messages: int) -> Iterator[tuple[bytes, Endpoint, Endpoint]]:
    for n in range(messages // SAME_MEDIA_CALL):
        for message, from_caller in same_media_call(n):
            yield (message, SBC, CORE) if from_caller else (message, CORE, SBC)


def write_pcap(path: Path, datagrams: Iterator[tuple[bytes, Endpoint, Endpoint]]) -> int:
    count = 0
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, nano=True)
        for message, src, dst in datagrams:
            frame = ethernet(ipv4(udp(message, src[1], dst[1]), src=src[0], dst=dst[0]))
            writer.writepkt(frame, ts=1_795_000_000 + count / 1000)
            count += 1
    return count


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


@dataclass(frozen=True)
class Result:
    messages: int
    replay_s: float
    tshark_s: float

    @property
    def ratio(self) -> float:
        return self.tshark_s / self.replay_s


def compare(workdir: Path, name: str, datagrams: Iterator[tuple[bytes, Endpoint, Endpoint]]) -> Result:
    pcap, out = workdir / f"{name}.pcap", workdir / f"{name}.jsonl"
    messages = write_pcap(pcap, datagrams)
    replay_s, _ = timed([str(AGENT), "replay", str(pcap), "--out", str(out)])
    records = sum(1 for line in out.read_text().splitlines() if '"kind":"sip"' in line)
    assert records == messages, f"replay wrote {records} SIP records of {messages}"
    tshark_s, fields = timed(["tshark", "-r", str(pcap), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID",
                              "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.CSeq"])
    assert fields.count("\n") == messages, f"tshark printed {fields.count(chr(10))} of {messages}"
    return Result(messages, replay_s, tshark_s)


def show(label: str, r: Result) -> None:
    print(f"{label}: {r.messages:,} SIP messages")
    for tool, seconds in (("otus-ebpf replay", r.replay_s), ("tshark -Y sip   ", r.tshark_s)):
        print(f"  {tool} : {r.messages / seconds:>10,.0f} messages/s ({seconds:.1f} s, whole process)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=210_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fair = compare(Path(tmp), "varied", varied_calls(args.messages))
        trunk = compare(Path(tmp), "same-media", same_media_calls(args.messages))
    show("varied hosts (the fair case)", fair)
    verdict = "met" if fair.ratio >= TARGET_RATIO else "MISSED"
    print(f"  replay / tshark = {fair.ratio:.1f}x  (target >= {TARGET_RATIO:.0f}x: {verdict})")
    show("two hosts, the same media endpoints in every SDP (tshark's conversation tracking goes quadratic)",
         trunk)
    print(f"  same media: replay / tshark = {trunk.ratio:.1f}x  (not a measure of our speed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
