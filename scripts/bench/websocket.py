"""SIP over WebSocket: framing speed beside the SIP-over-TCP framer, same run,
then a fuzz of the frame parser.

    .venv/bin/python scripts/bench/websocket.py [--messages 50000] [--fuzz 50000] [--seed 1]

The same SIP messages (the benchmark's call mix, distinct CSeqs) go through
TcpStreams as one stream: as SIP over TCP (the baseline), as WebSocket
server frames (unmasked), as client frames (masked), as client frames
split over three continuation frames each, and as client frames deflated
(permessage-deflate, the window kept across messages); in 1,400-byte segments, and the
client frames once more one byte a segment. Each case prints messages/s and
its cost per message against the baseline. Then ``--fuzz`` mutated
directions (tests/support/websocket.py: hostile frames, bytes flipped, cut
or repeated) through the parser, each whole and a few bytes at a time: any
exception, or a direction holding more than a frame header and a message,
fails the run (exit 1). CI runs the same generator under hypothesis
(tests/unit/test_websocket.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.sip_samples import INVITE, OK_200, request
from tests.support.websocket import fragments, frame, mutated_stream, upgrade_request, upgrade_response
from userspace.tcp import SYN, TcpLimits, TcpStreams
from userspace.websocket import MAX_HEADER, WebSocketFramer, WebSocketStats

KEY = (bytes([10, 0, 0, 1]), 40000, bytes([10, 0, 0, 2]), 8080)
ISN = 1000
SEGMENT = 1400


def messages(count: int) -> list[bytes]:
    mix = (INVITE, OK_200, request("BYE", 2), request("ACK", 1))
    return [mix[n % len(mix)].replace(b"CSeq: ", f"CSeq: {n}".encode() + b"0", 1) for n in range(count)]


def deflated(messages: list[bytes], rng: random.Random) -> bytes:
    """Masked client frames of the messages deflated as permessage-deflate sends them."""
    compressor, out = zlib.compressobj(wbits=-zlib.MAX_WBITS), []
    for message in messages:
        data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        out.append(frame(data[:-4], rsv=0x40, mask=rng.randbytes(4)))
    return b"".join(out)


def run(data: bytes, segment: int, websocket: bool) -> tuple[float, int]:
    streams = TcpStreams(websocket_ports=frozenset({8080} if websocket else ()))
    key = KEY if websocket else (KEY[0], KEY[1], KEY[2], 5060)
    streams.feed(key, ISN, SYN, b"", 0)
    chunks = [(ISN + 1 + i, data[i:i + segment]) for i in range(0, len(data), segment)]
    started = time.perf_counter()
    framed = 0
    for seq, payload in chunks:
        framed += len(streams.feed(key, seq, 0, payload, 1))
    return time.perf_counter() - started, framed


def best_of(n: int, data: bytes, segment: int, websocket: bool) -> tuple[float, int]:
    runs = [run(data, segment, websocket) for _ in range(n)]
    return min(r[0] for r in runs), runs[0][1]


def fuzz(count: int, seed: int) -> int:
    rng = random.Random(seed)
    limit = TcpLimits().max_message
    failures = 0
    started = time.perf_counter()
    for _ in range(count):
        data = mutated_stream(rng)
        for step in (len(data) or 1, rng.choice((1, 3, 17))):
            framer = WebSocketFramer(object(), WebSocketStats(), resync=rng.random() < 0.3)
            try:
                for i in range(0, len(data), step):
                    framer.buffer += data[i:i + step]
                    framer.frame(limit)
                    if len(framer) > limit + MAX_HEADER + 8192:
                        raise AssertionError(f"holds {len(framer)} bytes")
            except Exception as exc:  # the fuzz's point: anything escaping is a finding
                failures += 1
                if failures <= 5:
                    print(f"  {type(exc).__name__}: {exc} on {data[:80]!r}")
    elapsed = time.perf_counter() - started
    print(f"fuzz: {count:,} directions in {elapsed:.1f} s, {count / elapsed:,.0f}/s; "
          f"{failures} raised or overheld")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--fuzz", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sips = messages(args.messages)
    mask_rng = random.Random(args.seed)
    tcp = b"".join(sips)
    server = upgrade_response() + b"".join(frame(m) for m in sips)
    client = upgrade_request() + b"".join(frame(m, mask=mask_rng.randbytes(4)) for m in sips)
    split = upgrade_request() + b"".join(fragments(m, 3, mask=True, rng=mask_rng) for m in sips)
    deflate = upgrade_request(deflate=True) + deflated(sips, mask_rng)
    cases: list[tuple[str, Callable[[], tuple[float, int]]]] = [
        ("SIP over TCP, 1400-byte segments (baseline)", lambda: best_of(3, tcp, SEGMENT, False)),
        ("WebSocket server frames, 1400-byte segments", lambda: best_of(3, server, SEGMENT, True)),
        ("WebSocket client frames (masked)", lambda: best_of(3, client, SEGMENT, True)),
        ("client frames, 3 continuations a message", lambda: best_of(3, split, SEGMENT, True)),
        ("client frames, deflated", lambda: best_of(3, deflate, SEGMENT, True)),
        ("client frames, 1-byte segments", lambda: best_of(1, client[:len(client) // 20], 1, True)),
    ]
    print(f"{args.messages:,} SIP messages, {len(tcp):,} bytes as SIP over TCP")
    baseline = None
    for name, case in cases:
        seconds, framed = case()
        per_message = seconds / framed
        baseline = baseline or per_message
        print(f"{name:46} {framed:>8,} messages {seconds:7.3f} s {framed / seconds:>11,.0f} msgs/s "
              f"{per_message / baseline:6.2f}x baseline")
    return 1 if fuzz(args.fuzz, args.seed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
