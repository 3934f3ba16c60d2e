"""Per-packet cost of the kernel programs, measured with BPF_PROG_TEST_RUN.

    sudo .venv/bin/python scripts/bench/kernel_path.py [--repeats 1000000] [--route-by-call-id]

Each case runs the real XDP program on one crafted frame, 1M times in total,
beside a bare `return XDP_PASS` program measured in the same run: shared
machines drift, so the ratio to the bare program is the figure that counts.
Matching cases run in chunks that fit the ring and drain it in between, so
the copy into the ring is measured on its success path (the script checks
that no submit failed).

Learned RTP runs three ways: copied up (`--media packets`), and measured in
the kernel (the default) both in order and as a duplicate. One frame
repeated is a duplicate after its first run, so the in-order case runs each
packet once with the next sequence number (repeat=1, a syscall each); the
timer's cost in a single run is taken out by measuring the bare program the
same way: in-order = stats(1 run) - bare(1 run) + bare(repeated). Single runs
also find the caches colder than a million repeats do: the copy path is
measured that way too, beside it, for the like-for-like comparison.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.kernel.bpfsys import prog_test_run
from otus_ebpf.kernel.counters import read_kernel_counters
from otus_ebpf.kernel.loader import import_bcc, load_programs
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.settings import KernelSettings
from tests.support.frames import ethernet, ipv4, udp
from userspace.event import Counter, Direction, Kind

RING_MB = 64  # room for a chunk of 1,400-byte records
RING_BYTES = RING_MB << 20
RECORD_OVERHEAD = 8 + 40  # ring record header + otus_event
BARE_XDP = b"int bare(struct xdp_md *ctx) { return XDP_PASS; }"
# What the statistics path is built of, each alone, measured the same way: the floor under it here.
COMPONENTS = b"""
struct locked { struct bpf_spin_lock lock; __u64 n; };
struct key48 { __u8 b[48]; };
BPF_ARRAY(one, struct locked, 1);
BPF_F_TABLE("hash", struct key48, __u64, keyed, 16, 0);
int clock(struct xdp_md *ctx) { return bpf_ktime_get_ns() == 1 ? XDP_DROP : XDP_PASS; }
int lock(struct xdp_md *ctx) {
    int k = 0; struct locked *v = one.lookup(&k);
    if (v) { bpf_spin_lock(&v->lock); v->n++; bpf_spin_unlock(&v->lock); }
    return XDP_PASS; }
int lookup48(struct xdp_md *ctx) {
    struct key48 k = {}; __u64 zero = 0; __u64 *v = keyed.lookup(&k);
    if (v) (*v)++; else keyed.insert(&k, &zero);
    return XDP_PASS; }
"""
COMPONENT_NAMES = {"clock": "bpf_ktime_get_ns()", "lock": "spin lock + unlock",
                   "lookup48": "48-byte key hash lookup"}
TARGETS_NS = {"non-matching": 40, "SIP match into the ring": 200, "RTP stats, in order": 60}
IN_ORDER_RUNS = 100_000


@dataclass(frozen=True)
class Case:
    name: str
    make_frame: Callable[[int], bytes]  # frame size -> frame
    submits: bool


def padded_udp(size: int, sport: int, dport: int, src: str = "10.0.0.1", dst: str = "10.0.0.2",
               frag: int = 0) -> bytes:
    payload = b"SIP/2.0 200 OK\r\n".ljust(max(0, size - 42), b"x")
    return ethernet(ipv4(udp(payload, sport, dport), src=src, dst=dst, frag=frag))


def rtp_frame(size: int, seq: int = 1, sport: int = 30000) -> bytes:
    header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234)
    return ethernet(ipv4(udp(header.ljust(max(12, size - 42), b"\xd5"), sport, 40000), src="10.0.0.1",
                         dst="10.0.0.2"))


CASES = (
    Case("non-matching", lambda n: padded_udp(n, 4000, 4001), submits=False),
    Case("SIP match into the ring", lambda n: padded_udp(n, 5060, 5060), submits=True),
    Case("RTP copied up", rtp_frame, submits=True),
    Case("RTP stats, duplicate", lambda n: rtp_frame(n, sport=30002), submits=False),
    Case("IP fragment", lambda n: padded_udp(n, 5060, 5060, frag=0x2000), submits=True),
)
MEDIA_PACKETS = {"RTP copied up"}  # measured with --media packets; the rest with the kernel's statistics


def measure(fd: int, frame: bytes, repeats: int, drain: Callable[[], object] | None) -> float:
    """Mean ns per run over ``repeats`` runs, chunked to fit the ring."""
    chunk = repeats if drain is None else max(1, RING_BYTES // (len(frame) + RECORD_OVERHEAD + 8) // 2)
    total_ns, done = 0.0, 0
    while done < repeats:
        n = min(chunk, repeats - done)
        retval, mean_ns = prog_test_run(fd, frame, repeat=n)
        assert retval == 2, f"XDP returned {retval}, not XDP_PASS"
        total_ns += mean_ns * n
        done += n
        if drain is not None:
            drain()
    return total_ns / repeats


def one_run_each(fd: int, frames: list[bytes]) -> float:
    """Mean ns of single runs, one per frame."""
    return sum(prog_test_run(fd, frame)[1] for frame in frames) / len(frames)


def print_parts(parts: Any, bcc: Any, names: dict[str, str], bare_fd: int, repeats: int, title: str) -> None:
    """Each of ``names``' programs in ``parts`` (a compiled BPF object) on a 74-byte frame, warm."""
    frame = padded_udp(74, 4000, 4001)
    baseline = measure(bare_fd, frame, repeats, None)
    width = max(map(len, names.values()))
    print(f"\n{title} (ns/packet, bare program included):")
    for name, what in names.items():
        cost = measure(parts.load_func(name.encode(), bcc.BPF.XDP).fd, frame, repeats, None)
        print(f"  {what:{width}} {cost:>8.1f}   (+{cost - baseline:.1f} over bare {baseline:.1f})")


def print_components(bcc: Any, bare_fd: int, repeats: int) -> None:
    components = bcc.BPF(text=COMPONENTS)
    print_parts(components, bcc, COMPONENT_NAMES, bare_fd, repeats,
                "the statistics path's parts, each in a program of its own")
    components.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1_000_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[74, 200, 1400])
    parser.add_argument("--route-by-call-id", action="store_true",
                        help="the programs as worker processes load them: SIP routed by its Call-ID")
    args = parser.parse_args()

    bcc = import_bcc()
    bare = bcc.BPF(text=BARE_XDP)
    bare_fd = bare.load_func(b"bare", bcc.BPF.XDP).fd
    settings = KernelSettings(ring_mb=RING_MB, route_by_call_id=args.route_by_call_id)
    programs = load_programs(settings)
    programs.maps.learn_flow((ipaddress.ip_address("10.0.0.2").packed, 40000), Kind.RTP, 0)
    reader = open_reader(programs)

    def media_packets(on: bool) -> None:
        programs.maps.configure(signature=settings.signature, sip_snaplen=settings.snaplen,
                                media_snaplen=settings.media_snaplen, media_packets=on)

    def submit_failed() -> int:
        return read_kernel_counters(programs.bpf)[Direction.INGRESS, Counter.SUBMIT_FAILED]

    print(f"{'case':28} {'frame':>6} {'ns/packet':>10} {'bare ns':>8} {'ratio':>7} {'target':>7}")
    failures = []

    def report(name: str, size: int, cost: float, baseline: float) -> None:
        target = TARGETS_NS.get(name)
        verdict = "" if target is None else ("ok" if cost <= target else "MISSED")
        if verdict == "MISSED":
            failures.append(name)
        print(f"{name:28} {size:>6} {cost:>10.1f} {baseline:>8.1f} "
              f"{cost / max(baseline, 0.1):>6.1f}x {(str(target) + ' ' + verdict) if target else '':>7}")

    for size in args.sizes:
        for case in CASES:
            frame = case.make_frame(size)
            media_packets(case.name in MEDIA_PACKETS)
            baseline = measure(bare_fd, frame, args.repeats, None)
            before = submit_failed()
            cost = measure(programs.xdp_fd, frame, args.repeats, reader.drain if case.submits else None)
            assert submit_failed() == before, f"{case.name}: submits failed, the ring was too small"
            report(case.name, len(frame), cost, baseline)
        frames = [rtp_frame(size, seq, sport=30004 + size) for seq in range(IN_ORDER_RUNS)]
        baseline = measure(bare_fd, frames[0], args.repeats, None)
        bare_single = one_run_each(bare_fd, frames)
        media_packets(False)
        stats_single = one_run_each(programs.xdp_fd, frames)
        reader.drain()  # the stream's first packet went up
        # The copy path measured the same way, one run each: what the method itself adds.
        media_packets(True)
        copy_single = one_run_each(programs.xdp_fd, frames[:RING_BYTES // (len(frames[0]) + 64) // 2])
        reader.drain()
        media_packets(False)
        report("RTP copied up, one run each", len(frames[0]), copy_single - bare_single + baseline, baseline)
        report("RTP stats, in order", len(frames[0]), stats_single - bare_single + baseline, baseline)
    print_components(bcc, bare_fd, args.repeats)
    programs.close()
    bare.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
