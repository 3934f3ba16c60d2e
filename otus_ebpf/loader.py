"""Compile and load the kernel programs with bcc; write their initial maps.

Straight-line, as in libbpf-bootstrap: open → configure → load. Attaching is
``otus_ebpf.attach``'s job; draining the rings is ``otus_ebpf.ring``'s.
"""

from __future__ import annotations

import ctypes
import importlib
import ipaddress
import os
import resource
import struct
from dataclasses import dataclass, field
from enum import Enum
from types import ModuleType
from typing import Any

from otus_ebpf.bpf_sources import PROGRAM_FILE, bpf_source_dir
from otus_ebpf.bpfsys import BpfCmd, bpf
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel_abi import Network
from otus_ebpf.maps import KernelMaps
from userspace.calls import CallLimits

XDP_FUNCTION = "xdp_ingress"
TC_FUNCTION = "tc_egress"
COUNTERS_MAP = "counters"
SHARD_FAILURES_MAP = "shard_failures"

DEFAULT_SIP_PORTS = (5060, 5061)
DEFAULT_SNAPLEN = 2048
# Bounds: the sample lives in a per-CPU map value (32 KiB limit) and a frame
# above a jumbo MTU cannot arrive in one piece anyway.
MIN_SNAPLEN, MAX_SNAPLEN = 64, 9216
# RTP needs its 12-byte header (plus CSRCs and an extension, RFC 3550 §5.1);
# RTCP reports fit in a few hundred bytes.
DEFAULT_MEDIA_SNAPLEN = 64
# A ring's memory per shard, MiB: at 20,000 SIP messages/s of ~700 bytes, about
# five seconds of a burst the parser is not keeping up with (docs/CONFIG.md).
DEFAULT_RING_MB = 64
PAGE_SIZE = resource.getpagesize()
MIN_PERF_PAGES = 8  # per CPU: below this a perf buffer holds too few records to batch
MAX_SHARDS = 8  # rings declared in bpf/otus.c
_BPF_MAP_TYPE_RINGBUF = 27


class Delivery(Enum):
    AUTO = "auto"        # ring buffers where the kernel has them (>= 5.8), else perf
    RINGBUF = "ringbuf"
    PERF = "perf"


class MediaMode(Enum):
    STATS = "stats"      # the kernel keeps each RTP stream's statistics; RTP is not copied up
    PACKETS = "packets"  # every RTP packet goes up (media in pcap outputs)
    OFF = "off"          # no media is learned or measured


@dataclass(frozen=True, slots=True)
class KernelSettings:
    sip_ports: tuple[int, ...] = DEFAULT_SIP_PORTS
    signature: bool = False
    include: tuple[Network, ...] = ()
    exclude: tuple[Network, ...] = ()
    snaplen: int = DEFAULT_SNAPLEN
    media_snaplen: int = DEFAULT_MEDIA_SNAPLEN
    ring_mb: int = DEFAULT_RING_MB  # per shard, a power of two
    shards: int = 1
    # SIP routed by Call-ID (docs/SHARDING.md): set for worker processes, the only
    # readers that use it; the scan costs 250-380 ns a SIP datagram in the kernel.
    route_by_call_id: bool = False
    delivery: Delivery = Delivery.AUTO
    # Learned media endpoints the kernel holds: derived from the call limit
    # (AttachOptions.capture), never set on its own.
    max_flows: int = CallLimits().flow_map_entries
    max_streams: int = CallLimits().stream_table_entries  # likewise: RTP streams the kernel measures
    # None: STATS, unless a pcap output wants the media (AttachOptions.capture decides)
    media: MediaMode | None = None
    extra_cflags: tuple[str, ...] = field(default=())

    @property
    def ring_pages(self) -> int:
        """A ring buffer's size in pages (one ring per shard)."""
        return max(1, (self.ring_mb << 20) // PAGE_SIZE)

    def perf_pages(self, cpus: int) -> int:
        """Perf buffers are per CPU: the shard's budget split over the CPUs, as a power of two."""
        share = max(MIN_PERF_PAGES, self.ring_pages // max(1, cpus))
        return 1 << (share.bit_length() - 1)

    def validate(self) -> None:
        if not MIN_SNAPLEN <= self.snaplen <= MAX_SNAPLEN:
            raise SetupError(f"snaplen {self.snaplen} is outside {MIN_SNAPLEN}..{MAX_SNAPLEN}")
        if not 0 <= self.media_snaplen <= self.snaplen:
            raise SetupError(f"media snaplen {self.media_snaplen} is outside 0..{self.snaplen}")
        if self.ring_mb <= 0 or self.ring_mb & (self.ring_mb - 1):
            raise SetupError(f"a ring of {self.ring_mb} MiB: not a power of two")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise SetupError(f"workers must be 1..{MAX_SHARDS}, got {self.shards}")
        bad = [p for p in self.sip_ports if not 0 < p < 65536]
        if bad or not self.sip_ports:
            raise SetupError(f"SIP ports must be 1..65535, got {list(self.sip_ports)}")


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
