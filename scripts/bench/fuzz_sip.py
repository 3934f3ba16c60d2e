"""Fuzz the SIP parser and the TCP framer with a million inputs.

    .venv/bin/python scripts/bench/fuzz_sip.py [--inputs 1000000] [--seed 1]

Inputs: valid messages of the benchmark mix with random byte edits
(overwrite, insert, delete, duplicate a line, cut), and random byte strings
behind a plausible start line. Every input must parse or raise DecodeError
within LIMIT_MS; a TcpStreams instance is fed the same inputs as one long
stream and must stay within its bounds. Prints throughput and the slowest
input; exits non-zero on any escape or slow input. (CI runs a smaller
hypothesis version: tests/unit/test_sip_torture.py.)
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import importlib.util

from userspace.errors import DecodeError
from userspace.sip import parse_message
from userspace.tcp import SYN, TcpLimits, TcpStreams

LIMIT_MS = 5.0


def corpus() -> list[bytes]:
    spec = importlib.util.spec_from_file_location("bench_sip", Path(__file__).with_name("sip.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return [m for n in range(4) for m, _ in bench.call_messages(n)]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 32)]
        elif op == 3:
            line_end = buf.find(b"\r\n", pos)
            if line_end > 0:
                line_start = buf.rfind(b"\r\n", 0, pos) + 2
                buf[line_end:line_end] = buf[line_start - 2:line_end]
        elif op == 4:
            del buf[pos:]
        else:
            buf[pos:pos] = rng.choice([b"\r\n", b"\r\n\r\n", b":", b";", b",", b"<", b">", b'"', b" ", b"\t"])
    return bytes(buf)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seeds = corpus()
    streams = TcpStreams(TcpLimits())
    key = (bytes([10, 0, 0, 1]), 1, bytes([10, 0, 0, 2]), 5060)
    streams.feed(key, 0, SYN, b"", 0)
    seq = 1
    parsed = rejected = 0
    slowest, slowest_input = 0.0, b""
    bound = TcpLimits().max_message + 70_000
    gc.disable()  # its pauses are not the parser's; collected every 10,000 inputs instead
    started = time.perf_counter()
    for i in range(args.inputs):
        data = mutate(rng.choice(seeds), rng) if i % 4 else b"INVITE sip:x SIP/2.0\r\n" + \
            rng.randbytes(rng.randint(0, 600))
        t0 = time.perf_counter()
        try:
            parse_message(data)
            parsed += 1
        except DecodeError:
            rejected += 1
        took = (time.perf_counter() - t0) * 1000
        if took > slowest:
            slowest, slowest_input = took, data
        streams.feed(key, seq, 0, data, i)
        seq = (seq + len(data)) % (1 << 32)
        if streams.buffered_bytes > bound:
            print(f"TcpStreams over its bound: {streams.buffered_bytes}")
            return 1
        if i % 10_000 == 0:
            gc.collect()
    elapsed = time.perf_counter() - started
    print(f"{args.inputs:,} inputs in {elapsed:.1f} s ({args.inputs / elapsed:,.0f}/s): "
          f"{parsed:,} parsed, {rejected:,} rejected, nothing else raised")
    print(f"slowest input {slowest:.3f} ms (limit {LIMIT_MS} ms), {len(slowest_input)} bytes; "
          f"TCP framer: {streams.stats.messages:,} messages, {streams.stats.skipped_bytes:,} bytes skipped")
    return 0 if slowest <= LIMIT_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
