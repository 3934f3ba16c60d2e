"""Compile and load the kernel programs with bcc; write their initial maps.

Straight-line, as in libbpf-bootstrap: open → configure → load. Attaching is
``otus_ebpf.kernel.attach``'s job; draining the rings is ``otus_ebpf.kernel.rings``'s.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.abi import Network
from otus_ebpf.kernel.bpfsys import map_create, prog_load
from otus_ebpf.kernel.maps import KernelMaps
from otus_ebpf.kernel.settings import PAGE_SIZE, KernelSettings, MediaMode
from otus_ebpf.kernel.sources import PROGRAM_FILE, bpf_source_dir

XDP_FUNCTION = "xdp_ingress"
TC_FUNCTION = "tc_egress"
COUNTERS_MAP = "counters"
_BPF_MAP_TYPE_RINGBUF = 27
_BPF_PROG_TYPE_XDP = 6
_BPF_FUNC_XDP_LOAD_BYTES = 189
_XDP_PASS = 2


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (struct bpf_insn: the registers share a byte, dst low)."""
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


# bpf_xdp_load_bytes(ctx, 0, the stack's last 8 bytes, 8); return XDP_PASS
_XDP_LOAD_BYTES_PROBE = b"".join((
    _insn(0xB7, dst=2, imm=0),                          # r2 = 0
    _insn(0xBF, dst=3, src=10),                         # r3 = r10
    _insn(0x07, dst=3, imm=-8),                         # r3 += -8
    _insn(0xB7, dst=4, imm=8),                          # r4 = 8
    _insn(0x85, imm=_BPF_FUNC_XDP_LOAD_BYTES),          # call
    _insn(0xB7, dst=0, imm=_XDP_PASS),                  # r0 = XDP_PASS
    _insn(0x95),                                        # exit
))


@dataclass(slots=True)
class LoadedPrograms:
    bpf: Any  # bcc.BPF: untyped
    xdp_fd: int
    tc_fd: int
    maps: KernelMaps
    shards: int

    def close(self) -> None:
        self.bpf.cleanup()


def import_bcc() -> ModuleType:
    try:
        return importlib.import_module("bcc")
    except ImportError as exc:
        raise SetupError(
            f"bcc is not importable ({exc}); install Debian's python3-bpfcc (scripts/setup.sh does)"
        ) from None


def require_kernel_support() -> None:
    """Ask the kernel for what the programs cannot do without, so that an older
    one gets a line naming it (and ``--mode auto`` falls back to AF_PACKET)
    instead of a compiler or verifier dump."""
    _probe(lambda: map_create(_BPF_MAP_TYPE_RINGBUF, 0, 0, PAGE_SIZE),
           "BPF ring buffers (BPF_MAP_TYPE_RINGBUF, Linux 5.8)")
    _probe(lambda: prog_load(_BPF_PROG_TYPE_XDP, _XDP_LOAD_BYTES_PROBE),
           "the bpf_xdp_load_bytes helper (Linux 5.18)")


def _probe(create: Callable[[], int], feature: str) -> None:
    try:
        os.close(create())
    except PermissionError:
        raise SetupError("not allowed to create BPF maps and programs: run as root") from None
    except OSError as exc:
        raise SetupError(f"this kernel lacks {feature}, which eBPF capture needs ({exc.strerror}); "
                         "--mode afpacket captures without it") from None


def cflags_for(settings: KernelSettings) -> list[str]:
    flags = [
        f"-I{bpf_source_dir()}",
        f"-DOTUS_SNAPLEN={settings.snaplen}",
        # the sample's buffer, a power of two so that a mask bounds every read for the verifier
        f"-DOTUS_DATA_LEN={1 << (settings.snaplen - 1).bit_length()}",
        f"-DOTUS_RING_PAGES={settings.ring_pages}",
        f"-DOTUS_SHARDS={settings.shards}",
        f"-DOTUS_MAX_FLOWS={settings.max_flows}",
        f"-DOTUS_MAX_STREAMS={settings.max_streams}",
        *settings.extra_cflags,
    ]
    if settings.route_by_call_id:
        flags.append("-DOTUS_CALLID_ROUTING")
    return flags


def load_programs(settings: KernelSettings) -> LoadedPrograms:
    settings.validate()
    require_kernel_support()
    bcc = import_bcc()
    source = bpf_source_dir() / PROGRAM_FILE
    try:
        loaded = bcc.BPF(src_file=str(source).encode(), cflags=cflags_for(settings))
    except Exception as exc:  # bcc raises bare Exception for compile failures
        raise SetupError(
            f"cannot compile {PROGRAM_FILE}: {str(exc).splitlines()[0]} "
            "(missing kernel headers? scripts/setup.sh installs them)"
        ) from None
    try:
        xdp = loaded.load_func(XDP_FUNCTION.encode(), bcc.BPF.XDP)
        tc = loaded.load_func(TC_FUNCTION.encode(), bcc.BPF.SCHED_CLS)
        maps = KernelMaps(loaded)
        configure_maps(maps, settings)
    except Exception as exc:  # verifier rejections arrive as bare Exception too
        loaded.cleanup()
        raise SetupError(f"kernel refused the programs: {str(exc).splitlines()[0]}") from None
    return LoadedPrograms(loaded, xdp.fd, tc.fd, maps, settings.shards)


def configure_maps(maps: KernelMaps, settings: KernelSettings) -> None:
    maps.configure(signature=settings.signature, sip_snaplen=settings.snaplen,
                   media_snaplen=settings.media_snaplen, media_packets=settings.media is MediaMode.PACKETS)
    maps.set_sip_ports(settings.sip_ports)
    for network in settings.include:
        maps.add_network("include", network)
    for network in settings.exclude:
        maps.add_network("exclude", network)


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SetupError(f"not an IPv4/IPv6 network: {text!r} (e.g. 10.0.0.0/8, 2001:db8::/32)") from None
