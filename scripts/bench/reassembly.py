"""Reassembly speed and memory, beside baselines measured in the same run.

    .venv/bin/python scripts/bench/reassembly.py [--datagrams 100000]

1. Reassembler.feed on pre-built fragments of typical SIP datagrams (2-3
   fragments, 2-4 KB), against a naive dict accumulation that checks
   nothing (no overlaps, limits, expiry): the price of being safe.
2. From frame bytes: decode_frame + feed, against dpkt parsing the same
   frames and nothing more.
3. Peak traced memory while 1,000,000 flood fragments from 10,000 sources
   hit the default limits, against the bytes cap.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dpkt

from tests.support.frames import ethernet, ipv4
from userspace.frame import decode_frame
from userspace.reassembly import Fragment, Reassembler, ReassemblyLimits

MTU_PAYLOAD = 1480  # IPv4 payload per fragment on a 1,500-byte MTU
UDP = 17


def sip_fragments(count: int, rng: random.Random) -> list[Fragment]:
    fragments = []
    for ident in range(count):
        data = rng.randbytes(rng.randrange(2000, 4000))
        src = bytes([10, 0, ident >> 8 & 0xFF, ident & 0xFF])
        for start in range(0, len(data), MTU_PAYLOAD):
            end = min(start + MTU_PAYLOAD, len(data))
            fragments.append(Fragment(4, src, bytes([10, 9, 9, 9]), UDP, ident & 0xFFFF, start,
                                      end < len(data), data[start:end]))
    return fragments


def naive(fragments: list[Fragment]) -> int:
    held: dict[tuple[bytes, bytes, int, int], list[Fragment]] = {}
    done = 0
    for f in fragments:
        parts = held.setdefault((f.src, f.dst, f.protocol, f.ident), [])
        parts.append(f)
        if not f.more:
            parts.sort(key=lambda p: p.offset)
            b"".join(p.payload for p in parts)
            del held[(f.src, f.dst, f.protocol, f.ident)]
            done += 1
    return done


def ours(fragments: list[Fragment]) -> int:
    reassembler = Reassembler()
    done = 0
    for i, f in enumerate(fragments):
        if reassembler.feed(f, i) is not None:
            done += 1
    return done


def as_frames(fragments: list[Fragment]) -> list[bytes]:
    return [ethernet(ipv4(f.payload, proto=UDP, src=".".join(map(str, f.src)), dst="10.9.9.9",
                          frag=(f.offset // 8) | (0x2000 if f.more else 0))) for f in fragments]


def decode_and_feed(frames: list[bytes]) -> int:
    reassembler = Reassembler()
    done = 0
    for i, frame in enumerate(frames):
        fragment = decode_frame(frame)
        assert isinstance(fragment, Fragment)
        if reassembler.feed(fragment, i) is not None:
            done += 1
    return done


def dpkt_only(frames: list[bytes]) -> int:
    for frame in frames:
        dpkt.ethernet.Ethernet(frame)
    return 0


def best_of(runs: int, work: Callable[[], int]) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def flood_peak() -> tuple[int, int]:
    rng = random.Random(2)
    limits = ReassemblyLimits()
    sources = [bytes([10, 1, s >> 8, s & 0xFF]) for s in range(10_000)]
    payload = b"f" * 1000
    reassembler = Reassembler(limits)
    tracemalloc.start()
    for i in range(1_000_000):
        reassembler.feed(Fragment(4, sources[rng.randrange(10_000)], b"\x0a\x09\x09\x09", UDP,
                                  rng.getrandbits(16), 0, True, payload), i * 1000)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, limits.max_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=100_000)
    args = parser.parse_args()
    fragments = sip_fragments(args.datagrams, random.Random(1))
    n = len(fragments)

    naive_s, naive_done = best_of(3, lambda: naive(fragments))
    ours_s, ours_done = best_of(3, lambda: ours(fragments))
    assert naive_done == ours_done == args.datagrams
    print(f"{n:,} fragments of {args.datagrams:,} SIP-sized datagrams "
          f"({n / args.datagrams:.2f} per datagram)")
    print(f"  naive dict accumulation : {n / naive_s:>10,.0f} fragments/s  "
          f"{naive_done / naive_s:>9,.0f} datagrams/s")
    print(f"  Reassembler.feed        : {n / ours_s:>10,.0f} fragments/s  "
          f"{ours_done / ours_s:>9,.0f} datagrams/s  "
          f"({naive_s / ours_s:.2f}x the baseline's rate; target 300,000 fragments/s)")

    frames = as_frames(fragments)
    dpkt_s, _ = best_of(3, lambda: dpkt_only(frames))
    full_s, full_done = best_of(3, lambda: decode_and_feed(frames))
    assert full_done == args.datagrams
    print(f"  dpkt parse only         : {n / dpkt_s:>10,.0f} frames/s")
    print(f"  decode_frame + feed     : {n / full_s:>10,.0f} frames/s  "
          f"{full_done / full_s:>9,.0f} datagrams/s  ({dpkt_s / full_s:.2f}x dpkt's rate)")

    peak, cap = flood_peak()
    print(f"flood of 1,000,000 fragments from 10,000 sources: peak traced memory {peak / 2**20:.1f} MiB "
          f"(payload cap {cap / 2**20:.0f} MiB, {peak / cap:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
