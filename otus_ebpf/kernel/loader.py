"""Compile and load the kernel programs with bcc; write their initial maps.

Straight-line, as in libbpf-bootstrap: open → configure → load. Attaching is
``otus_ebpf.kernel.attach``'s job; draining the rings is ``otus_ebpf.kernel.rings``'s.
"""

from __future__ import annotations

import ctypes
import importlib
import ipaddress
import os
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.abi import Network
from otus_ebpf.kernel.bpfsys import BpfCmd, bpf
from otus_ebpf.kernel.maps import KernelMaps
from otus_ebpf.kernel.settings import Delivery, KernelSettings, MediaMode
from otus_ebpf.kernel.sources import PROGRAM_FILE, bpf_source_dir

XDP_FUNCTION = "xdp_ingress"
TC_FUNCTION = "tc_egress"
COUNTERS_MAP = "counters"
SHARD_FAILURES_MAP = "shard_failures"
_BPF_MAP_TYPE_RINGBUF = 27

@dataclass(slots=True)
class LoadedPrograms:
    bpf: Any  # bcc.BPF: untyped
    xdp_fd: int
    tc_fd: int
    maps: KernelMaps
    shards: int
    delivery: Delivery
    perf_pages: int  # per CPU and shard, with perf delivery

    def close(self) -> None:
        self.bpf.cleanup()


def import_bcc() -> ModuleType:
    try:
        return importlib.import_module("bcc")
    except ImportError as exc:
        raise SetupError(
            f"bcc is not importable ({exc}); install Debian's python3-bpfcc (scripts/setup.sh does)"
        ) from None


def kernel_has_ringbuf() -> bool:
    attr = ctypes.create_string_buffer(struct.pack("=IIII", _BPF_MAP_TYPE_RINGBUF, 0, 0, 4096), 72)
    try:
        fd = bpf(BpfCmd.MAP_CREATE, attr)
    except OSError:
        return False
    os.close(fd)
    return True


def resolve_delivery(wanted: Delivery) -> Delivery:
    if wanted is Delivery.AUTO:
        return Delivery.RINGBUF if kernel_has_ringbuf() else Delivery.PERF
    if wanted is Delivery.RINGBUF and not kernel_has_ringbuf():
        raise SetupError("this kernel has no BPF ring buffer (needs 5.8+); use --delivery perf")
    return wanted


def cflags_for(settings: KernelSettings, delivery: Delivery) -> list[str]:
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
    if delivery is Delivery.PERF:
        flags.append("-DOTUS_PERF")
    if settings.route_by_call_id:
        flags.append("-DOTUS_CALLID_ROUTING")
    return flags


def load_programs(settings: KernelSettings) -> LoadedPrograms:
    settings.validate()
    bcc = import_bcc()
    delivery = resolve_delivery(settings.delivery)
    source = bpf_source_dir() / PROGRAM_FILE
    try:
        loaded = bcc.BPF(src_file=str(source).encode(), cflags=cflags_for(settings, delivery))
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
    return LoadedPrograms(loaded, xdp.fd, tc.fd, maps, settings.shards, delivery,
                          settings.perf_pages(os.cpu_count() or 1))


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
