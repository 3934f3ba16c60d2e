"""Per-packet cost of one level of decapsulation, with BPF_PROG_TEST_RUN.

    sudo .venv/bin/python scripts/bench/kernel_decap.py [--against main] [--repeats 1000000]

In one run, beside a bare `return XDP_PASS` program: the path of packets that
match nothing (UDP, TCP, another IP protocol) in this tree's XDP program
(every tunnel kind on, the default) and in REV's, compiled from git; then, in
this tree's, a SIP message inside each kind of tunnel (copied into the ring)
and a packet that matches nothing inside each (the hand-over to the decap
program, the tunnel header and the inner parse). Shared machines drift: the
ratios, to the bare program and to REV, are the figures that count.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otus_ebpf.kernel.loader import cflags_for, import_bcc, load_programs
from otus_ebpf.kernel.maps import table
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.settings import KernelSettings
from scripts.bench.kernel_path import BARE_XDP, measure
from tests.support.frames import TCP, ethernet, ipv4, tcp, udp
from tests.support.sip_samples import INVITE
from tests.support.tunnels import TEB, erspan2, erspan3, geneve, gre, ipip, vxlan

REPO = Path(__file__).resolve().parents[2]
RING_MB = 64
ROUNDS = 5
NOTHING = ethernet(ipv4(udp(b"x" * 32, 4000, 4001), src="10.0.0.1", dst="10.0.0.2"))
PLAIN = {
    "UDP, no match": NOTHING,
    "TCP, no match": ethernet(ipv4(tcp(b"x" * 32, 4000, 4001), proto=TCP)),
    "ICMP (other L4)": ethernet(ipv4(b"\x08\0" + bytes(30), proto=1)),
}
SIP_V4 = ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.1.0.2")
NOTHING_V4 = NOTHING[14:]
TUNNELS = {  # name -> a tunnel around (inner Ethernet frame, inner IP packet)
    "VXLAN": lambda eth, ip: vxlan(eth),
    "Geneve": lambda eth, ip: geneve(eth),
    "GRE, IPv4 inside": lambda eth, ip: gre(ip, 0x0800),
    "GRE, Ethernet inside": lambda eth, ip: gre(eth, TEB, key=1),
    "ERSPAN II": lambda eth, ip: erspan2(eth),
    "ERSPAN III": lambda eth, ip: erspan3(eth),
    "IPv4 in IPv4": lambda eth, ip: ipip(ip),
}


def load_before(bcc: Any, rev: str, directory: Path) -> int:
    """REV's XDP program, its SIP ports set as this tree's defaults set them."""
    for name in ("otus.c", "otus_event.h"):
        text = subprocess.run(["git", "show", f"{rev}:bpf/{name}"], cwd=REPO, check=True,
                              capture_output=True).stdout
        (directory / name).write_bytes(text)
    flags = [f"-I{directory}" if flag.startswith("-I") else flag
             for flag in cflags_for(KernelSettings(ring_mb=RING_MB))]
    compiled = bcc.BPF(src_file=str(directory / "otus.c").encode(), cflags=flags)
    ports = table(compiled, "sip_ports")
    for port in (5060, 5061):
        ports[ctypes.c_uint32(port)] = ctypes.c_uint8(1)
    fd: int = compiled.load_func(b"xdp_ingress", bcc.BPF.XDP).fd
    load_before.keep = compiled  # type: ignore[attr-defined]  # alive while measured
    return fd


def row(name: str, cost: float, bare: float, before: float | None = None) -> None:
    against = "" if before is None else f"{cost / before:>7.2f}x"
    print(f"{name:40} {cost:>9.1f} {bare:>8.1f} {cost / bare:>6.1f}x {against:>9}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", metavar="REV")
    parser.add_argument("--repeats", type=int, default=1_000_000)
    args = parser.parse_args()
    bcc = import_bcc()
    bare = bcc.BPF(text=BARE_XDP)
    bare_fd = bare.load_func(b"bare", bcc.BPF.XDP).fd
    programs = load_programs(KernelSettings(ring_mb=RING_MB))
    reader = open_reader(programs)
    with tempfile.TemporaryDirectory() as tmp:
        before_fd = load_before(bcc, args.against, Path(tmp))
        print(f"{'case (ns/packet)':40} {'this':>9} {'bare':>8} {'ratio':>7} {'vs ' + args.against:>9}")
        for name, frame in PLAIN.items():
            # alternated, the best of ROUNDS each: neither program always runs first
            bare_ns = min(measure(bare_fd, frame, args.repeats, None) for _ in range(ROUNDS))
            old, new = float("inf"), float("inf")
            for _ in range(ROUNDS):
                old = min(old, measure(before_fd, frame, args.repeats, None))
                new = min(new, measure(programs.xdp_fd, frame, args.repeats, None))
            row(f"{name} ({args.against})", old, bare_ns)
            row(f"{name} (this tree)", new, bare_ns, old)
        sip_eth, sip_ip = ethernet(SIP_V4), SIP_V4
        plain_sip = ethernet(SIP_V4)
        bare_ns = measure(bare_fd, plain_sip, args.repeats, None)
        row("SIP, no tunnel, into the ring", measure(programs.xdp_fd, plain_sip, args.repeats, reader.drain),
            bare_ns)
        for name, wrap in TUNNELS.items():
            frame = wrap(sip_eth, sip_ip)
            bare_ns = measure(bare_fd, frame, args.repeats, None)
            row(f"{name}: SIP into the ring", measure(programs.xdp_fd, frame, args.repeats, reader.drain),
                bare_ns)
            frame = wrap(NOTHING, NOTHING_V4)
            row(f"{name}: no match inside", measure(programs.xdp_fd, frame, args.repeats, None), bare_ns)
    programs.close()
    bare.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
