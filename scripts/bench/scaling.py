"""Cost per message against the number of live calls, through replay's path.

    .venv/bin/python scripts/bench/scaling.py [--calls 5000 20000 100000]

For each N: N calls are all set up (INVITE with SDP, 100, 180, 200 with
SDP, ACK, each call's SDP naming media endpoints of its own), then each
call's RTP flows a few packets each way, then all N end (BYE, 200) — so up
to N calls, 2N streams and 4N endpoints are live at once. The frames go
through what `otus-ebpf replay` runs (classification as the kernel does
it, the pipeline, flow learning) in this process, built as they are
consumed. Printed: microseconds per frame for each N, and each against the
smallest N. Target: within 25 % (issue 14).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.capture.replay import CapturedFrame, _Replayer
from otus_ebpf.options import AttachOptions
from tests.support.frames import ethernet, ipv4, udp
from tests.support.sip_samples import sip_message
from userspace.calls import CallLimits
from userspace.event import Direction

TARGET = 1.25
RTP_PER_WAY = 3
BATCH = 512
MS = 1_000_000


def address(side: int, n: int) -> str:
    return f"10.{side}{n >> 16}.{n >> 8 & 255}.{n & 255}"


def call_frames(n: int, phase: str, ts_ns: int) -> list[CapturedFrame]:
    caller, callee = address(1, n), address(2, n)
    cid = f"scale-{n}@bench"

    def sdp(host: str) -> bytes:
        return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                f"m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\n").encode()

    def sip(start: str, cseq: str, to_tag: str, body: bytes = b"") -> bytes:
        headers = [f"Via: SIP/2.0/UDP {caller}:5060;branch=z9hG4bK{n}{cseq[0]}",
                   f'From: "User {n}" <sip:u{n}@{caller}>;tag=a{n}', f"To: <sip:v{n}@{callee}>{to_tag}",
                   f"Call-ID: {cid}", f"CSeq: {cseq}", "User-Agent: bench"]
        if body:
            headers.append("Content-Type: application/sdp")
        return sip_message(start, headers, body)

    steps: list[tuple[bytes, bool, int, int]]  # payload, from the caller, sport, dport
    if phase == "setup":
        steps = [(sip(f"INVITE sip:v{n}@{callee} SIP/2.0", "1 INVITE", "", sdp(caller)), True, 5060, 5060),
                 (sip("SIP/2.0 100 Trying", "1 INVITE", ""), False, 5060, 5060),
                 (sip("SIP/2.0 180 Ringing", "1 INVITE", f";tag=b{n}"), False, 5060, 5060),
                 (sip("SIP/2.0 200 OK", "1 INVITE", f";tag=b{n}", sdp(callee)), False, 5060, 5060),
                 (sip(f"ACK sip:v{n}@{callee} SIP/2.0", "1 ACK", f";tag=b{n}"), True, 5060, 5060)]
    elif phase == "media":
        steps = [(struct.pack("!BBHII", 0x80, 8, seq, seq * 160, n * 2 + way) + b"\xd5" * 160, way == 0,
                  40000, 40000) for seq in range(RTP_PER_WAY) for way in (0, 1)]
    else:
        steps = [(sip(f"BYE sip:v{n}@{callee} SIP/2.0", "2 BYE", f";tag=b{n}"), True, 5060, 5060),
                 (sip("SIP/2.0 200 OK", "2 BYE", f";tag=b{n}"), False, 5060, 5060)]
    frames = []
    for i, (payload, from_caller, sport, dport) in enumerate(steps):
        src, dst = (caller, callee) if from_caller else (callee, caller)
        data = ethernet(ipv4(udp(payload, sport, dport), src=src, dst=dst))
        frames.append(CapturedFrame(ts_ns + i * MS, data, len(data), "bench", Direction.INGRESS))
    return frames


def all_frames(calls: int) -> Iterator[CapturedFrame]:
    ts = 1_800_000_000 * 1_000_000_000
    for phase in ("setup", "media", "end"):
        for n in range(calls):
            yield from call_frames(n, phase, ts)
            ts += 10 * MS


def run(calls: int) -> tuple[float, int, int]:
    """(microseconds per frame, frames, calls summarised)."""
    options = AttachOptions(("bench",), calls=CallLimits(max_calls=max(calls, 100_000)))
    replayer = _Replayer(options, False)
    frames = summaries = 0
    batch: list[CapturedFrame] = []
    elapsed = 0.0
    for frame in all_frames(calls):
        batch.append(frame)
        if len(batch) == BATCH:
            started = time.perf_counter()
            records = replayer.process(batch)
            elapsed += time.perf_counter() - started
            frames += len(batch)
            summaries += sum(1 for r in records if r.kind == "call")
            batch = []
    started = time.perf_counter()
    records = replayer.process(batch)
    elapsed += time.perf_counter() - started
    frames += len(batch)
    summaries += sum(1 for r in records if r.kind == "call")
    return elapsed / frames * 1e6, frames, summaries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[5_000, 20_000, 100_000])
    args = parser.parse_args()
    results = []
    for calls in args.calls:
        per_frame, frames, summaries = run(calls)
        assert summaries == calls, f"{summaries} of {calls} calls summarised"
        results.append((calls, per_frame, frames))
    base = results[0][1]
    print("live calls   frames      us/frame   vs the smallest")
    for calls, per_frame, frames in results:
        print(f"{calls:>10,} {frames:>10,} {per_frame:>10.2f} {per_frame / base:>10.2f}x")
    worst = max(per_frame for _c, per_frame, _f in results) / base
    verdict = "met" if worst <= TARGET else "MISSED"
    print(f"target: within {TARGET - 1:.0%} across them: {verdict} ({worst:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
