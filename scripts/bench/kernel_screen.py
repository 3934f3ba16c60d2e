"""The method drop list and duplicate suppression in the kernel (the screen
programs, bpf/otus.c), measured with BPF_PROG_TEST_RUN as kernel_path.py
measures the rest; and the path of packets that match nothing against an
earlier revision's programs, in the same run.

    sudo .venv/bin/python scripts/bench/kernel_screen.py [--against main] [--rounds 7] [--repeats 1000000]

1. Packets that match nothing never reach the screen: their cost must not
   change. REV's bpf/otus.c is compiled beside this tree's (nothing
   configured in it, as it would be with no filters), and the same frame runs
   through the bare program, REV's, this tree's with the drop list and dedup
   off, and with both on, in turns, --rounds times: the median of each, and
   the median of each round's ratio to REV (a shared machine drifts between
   rounds more than within one).
2. What a match costs with them on, this tree only, beside the same match
   with them off: a SIP datagram into the ring (its hand-off to the screen, a
   drop-list lookup, a digest), a dropped OPTIONS, a duplicate, an answer
   whose CSeq is scanned, and learned RTP in order with dedup. A repeated
   frame is a duplicate after its first run, so the not-a-duplicate cases
   run each packet once with another IP id (repeat=1, a syscall each), and
   the bare program is measured the same way (kernel_path.py's in-order RTP).
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.kernel.loader import cflags_for, import_bcc, load_programs
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.settings import KernelSettings
from scripts.bench.kernel_path import (
    BARE_XDP,
    RING_BYTES,
    RING_MB,
    measure,
    one_run_each,
    padded_udp,
    print_parts,
)
from tests.support.calls import rtp
from tests.support.frames import ethernet, ipv4, udp
from tests.support.sip_samples import INVITE, request, response
from userspace.event import Kind

REPO = Path(__file__).resolve().parents[2]
SINGLE_RUNS = 20_000
WINDOW_MS = 10_000  # the duplicate cases' copies always fall within it
# The screen's parts, each in a program of its own, measured warm (1M repeats): a
# first sighting's map work with a new key every run (the clock's) in an LRU hash map
# (dedup's first design) and in the direct-mapped table it uses, and the tail call.
PARTS = b"""
BPF_F_TABLE("lru_hash", __u64, __u64, seen, 65536, 0);
struct slot { __u64 digest; __u64 first_ns; };
BPF_ARRAY(slots, struct slot, 65536);
BPF_PROG_ARRAY(next, 1);
int clock_key(struct xdp_md *ctx) {
    __u64 now = bpf_ktime_get_ns();
    return now == 1 ? XDP_DROP : XDP_PASS; }
int first_sighting(struct xdp_md *ctx) {
    __u64 now = bpf_ktime_get_ns();
    if (!seen.lookup(&now)) seen.insert(&now, &now);
    return XDP_PASS; }
int seen_again(struct xdp_md *ctx) {
    __u64 key = 7, now = bpf_ktime_get_ns(); __u64 *first = seen.lookup(&key);
    if (!first) seen.insert(&key, &now);
    return XDP_PASS; }
int direct_slot(struct xdp_md *ctx) {
    __u64 now = bpf_ktime_get_ns(); __u32 index = now & 65535; struct slot *s = slots.lookup(&index);
    if (!s) return XDP_PASS;
    if (s->digest == now && now - s->first_ns < 50000000) return XDP_DROP;
    s->digest = now; s->first_ns = now;
    return XDP_PASS; }
int called(struct xdp_md *ctx) { return XDP_PASS; }
int tail_call(struct xdp_md *ctx) { next.call(ctx, 0); return XDP_PASS; }
"""
PART_NAMES = {"clock_key": "bpf_ktime_get_ns()", "first_sighting": "clock + LRU lookup miss + insert",
              "seen_again": "clock + LRU lookup hit",
              "direct_slot": "clock + direct-mapped slot taken (dedup's)",
              "tail_call": "a tail call to an empty program"}


def old_program(bcc: Any, rev: str, directory: Path, settings: KernelSettings) -> tuple[Any, int]:
    """REV's XDP program, compiled with this tree's defines; nothing configured."""
    for name in ("otus.c", "otus_event.h"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:bpf/{name}"], check=True,
                              capture_output=True).stdout
        (directory / name).write_bytes(text)
    flags = [f"-I{directory}" if flag.startswith("-I") else flag for flag in cflags_for(settings)]
    program = bcc.BPF(src_file=str(directory / "otus.c").encode(), cflags=flags)
    return program, program.load_func(b"xdp_ingress", bcc.BPF.XDP).fd


def screening(programs: Any, drop: bool, dedup: bool, settings: KernelSettings) -> None:
    programs.maps.configure(signature=False, sip_snaplen=settings.snaplen,
                            media_snaplen=settings.media_snaplen, dedup=dedup, dedup_window_ms=WINDOW_MS)
    if drop:
        programs.maps.change_drop_methods(add=["OPTIONS", "NOTIFY"])
    else:
        programs.maps.change_drop_methods(remove=programs.maps.drop_methods())


def compare_revisions(bcc: Any, bare_fd: int, programs: Any, settings: KernelSettings, rev: str, rounds: int,
                      repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old, old_fd = old_program(bcc, rev, Path(tmp), settings)
        print(f"\npackets that match nothing, this tree against {rev}, medians of {rounds} rounds in turns "
              f"({repeats:,} runs each):")
        print(f"{'frame':>6} {'bare':>7} {rev:>9} {'this, off':>10} {'this, on':>9} {'off/' + rev:>9} "
              f"{'on/' + rev:>8}")
        for size in (74, 200, 1400):
            frame = padded_udp(size, 4000, 4001)
            figures: dict[str, list[float]] = {"bare": [], "old": [], "off": [], "on": []}
            for _ in range(rounds):
                figures["bare"].append(measure(bare_fd, frame, repeats, None))
                figures["old"].append(measure(old_fd, frame, repeats, None))
                screening(programs, drop=False, dedup=False, settings=settings)
                figures["off"].append(measure(programs.xdp_fd, frame, repeats, None))
                screening(programs, drop=True, dedup=True, settings=settings)
                figures["on"].append(measure(programs.xdp_fd, frame, repeats, None))
            m = {name: statistics.median(values) for name, values in figures.items()}
            # each round's own ratio (measured back to back), then their median
            ratio = {name: statistics.median(this / old for this, old in zip(figures[name], figures["old"],
                                                                              strict=True))
                     for name in ("off", "on")}
            print(f"{len(frame):>6} {m['bare']:>7.1f} {m['old']:>9.1f} {m['off']:>10.1f} {m['on']:>9.1f} "
                  f"{ratio['off']:>8.3f}x {ratio['on']:>7.3f}x")
        old.cleanup()


def matched_costs(bare_fd: int, programs: Any, settings: KernelSettings, repeats: int) -> None:
    reader = open_reader(programs)
    sip = ethernet(ipv4(udp(INVITE, 5070, 5060)))
    cases: list[tuple[str, bytes, bool, bool, bool]] = [  # name, frame, drop, dedup, goes up
        ("SIP into the ring, both off", sip, False, False, True),
        ("SIP into the ring, drop list on", sip, True, False, True),
        ("OPTIONS dropped", ethernet(ipv4(udp(request("OPTIONS"), 5070, 5060))), True, False, False),
        ("answer, CSeq scanned, goes up", ethernet(ipv4(udp(response("200 OK", "INVITE"), 5060, 5070))), True,
         False, True),
        ("answer to OPTIONS, dropped", ethernet(ipv4(udp(response("200 OK", "OPTIONS"), 5060, 5070))), True,
         False, False),
        ("SIP duplicate", sip, False, True, False),
    ]
    print(f"\nmatches with the drop list and dedup, {repeats:,} runs each (ns/packet, bare program beside):")
    for name, frame, drop, dedup, goes_up in cases:
        screening(programs, drop, dedup, settings)
        programs.maps.forget_seen()
        baseline = measure(bare_fd, frame, repeats, None)
        cost = measure(programs.xdp_fd, frame, repeats, reader.drain if goes_up else None)
        print(f"  {name:38} {len(frame):>5} B {cost:>8.1f} {baseline:>7.1f}")
    # Not duplicates: each packet once, with its own IP id.
    sips = [ethernet(ipv4(udp(INVITE, 5070, 5060), ident=n)) for n in range(SINGLE_RUNS)]
    fit = RING_BYTES // (len(sips[0]) + 64) // 2
    singles: dict[str, float] = {}
    bare_single = one_run_each(bare_fd, sips[:fit])
    for label, dedup in (("off", False), ("on", True)):
        screening(programs, drop=False, dedup=dedup, settings=settings)
        programs.maps.forget_seen()
        singles[label] = one_run_each(programs.xdp_fd, sips[:fit]) - bare_single
        reader.drain()
    print(f"  {'SIP into the ring, one run each':38} {len(sips[0]):>5} B  dedup off +{singles['off']:.1f}, "
          f"on +{singles['on']:.1f} ns over the bare program (+{singles['on'] - singles['off']:.1f})")
    rtp_costs = rtp_in_order(bare_fd, programs, settings, reader.drain)
    print(f"  {'RTP statistics in order, one run each':38} {'74':>5} B  dedup off +{rtp_costs[0]:.1f}, "
          f"on +{rtp_costs[1]:.1f} ns over the bare program (+{rtp_costs[1] - rtp_costs[0]:.1f})")
    reader.close()


def rtp_in_order(bare_fd: int, programs: Any, settings: KernelSettings,
                 drain: Callable[[], object]) -> tuple[float, float]:
    """Learned RTP the kernel measures, each packet once (the next sequence number), dedup off and on."""
    endpoint = (ipaddress.ip_address("10.0.0.2").packed, 40000)
    programs.maps.learn_flow(endpoint, Kind.RTP, 0)
    costs = []
    for n, dedup in enumerate((False, True)):
        frames = [ethernet(ipv4(udp(rtp(seq, seq * 160, 0x5000 + n, 0, b"\xd5" * 20), 30000 + n, 40000),
                                ident=seq)) for seq in range(SINGLE_RUNS)]
        bare_single = one_run_each(bare_fd, frames)
        screening(programs, drop=False, dedup=dedup, settings=settings)
        costs.append(one_run_each(programs.xdp_fd, frames) - bare_single)
        drain()
    programs.maps.forget_flow(endpoint)
    return costs[0], costs[1]


def print_screen_parts(bcc: Any, bare_fd: int, repeats: int) -> None:
    parts = bcc.BPF(text=PARTS)
    called = parts.load_func(b"called", bcc.BPF.XDP)
    parts[b"next"][ctypes.c_int(0)] = ctypes.c_int(called.fd)
    print_parts(parts, bcc, PART_NAMES, bare_fd, repeats,
                "the screen's parts, each in a program of its own, warm")
    parts.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", metavar="REV", help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=1_000_000)
    args = parser.parse_args()
    bcc = import_bcc()
    bare = bcc.BPF(text=BARE_XDP)
    bare_fd = bare.load_func(b"bare", bcc.BPF.XDP).fd
    settings = KernelSettings(ring_mb=RING_MB)
    programs = load_programs(settings)
    try:
        compare_revisions(bcc, bare_fd, programs, settings, args.against, args.rounds, args.repeats)
        matched_costs(bare_fd, programs, settings, args.repeats)
        print_screen_parts(bcc, bare_fd, args.repeats)
    finally:
        programs.close()
        bare.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
