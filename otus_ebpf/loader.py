"""Compile and load the kernel programs with bcc; configure their maps.

Straight-line, as in libbpf-bootstrap: open → configure → load. Attaching is
``otus_ebpf.attach``'s job; draining the ring is ``otus_ebpf.ring``'s.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from otus_ebpf.bpf_sources import PROGRAM_FILE, bpf_source_dir
from otus_ebpf.errors import SetupError

XDP_FUNCTION = "xdp_ingress"
TC_FUNCTION = "tc_egress"
RING_MAP = "events"
COUNTERS_MAP = "counters"
SIP_PORTS_MAP = "sip_ports"

DEFAULT_SIP_PORTS = (5060, 5061)
DEFAULT_SNAPLEN = 2048
# Bounds: the sample lives in a per-CPU map value (32 KiB limit) and a frame
# above a jumbo MTU cannot arrive in one piece anyway.
MIN_SNAPLEN, MAX_SNAPLEN = 64, 9216
DEFAULT_RING_PAGES = 1024  # 4 MiB with 4 KiB pages


@dataclass(frozen=True, slots=True)
class KernelSettings:
    sip_ports: tuple[int, ...] = DEFAULT_SIP_PORTS
    snaplen: int = DEFAULT_SNAPLEN
    ring_pages: int = DEFAULT_RING_PAGES

    def validate(self) -> None:
        if not MIN_SNAPLEN <= self.snaplen <= MAX_SNAPLEN:
            raise SetupError(f"snaplen {self.snaplen} is outside {MIN_SNAPLEN}..{MAX_SNAPLEN}")
        if self.ring_pages <= 0 or self.ring_pages & (self.ring_pages - 1):
            raise SetupError(f"ring size of {self.ring_pages} pages is not a power of two")
        bad = [p for p in self.sip_ports if not 0 < p < 65536]
        if bad or not self.sip_ports:
            raise SetupError(f"SIP ports must be 1..65535, got {list(self.sip_ports)}")


@dataclass(slots=True)
class LoadedPrograms:
    bpf: Any  # bcc.BPF: untyped
    xdp_fd: int
    tc_fd: int

    def close(self) -> None:
        self.bpf.cleanup()


def import_bcc() -> ModuleType:
    try:
        return importlib.import_module("bcc")
    except ImportError as exc:
        raise SetupError(
            f"bcc is not importable ({exc}); install Debian's python3-bpfcc (scripts/setup.sh does)"
        ) from None


def load_programs(settings: KernelSettings) -> LoadedPrograms:
    settings.validate()
    bcc = import_bcc()
    source_dir = bpf_source_dir()
    cflags = [
        f"-I{source_dir}",
        f"-DOTUS_SNAPLEN={settings.snaplen}",
        f"-DOTUS_RING_PAGES={settings.ring_pages}",
    ]
    try:
        bpf = bcc.BPF(src_file=str(source_dir / PROGRAM_FILE).encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception for compile failures
        raise SetupError(
            f"cannot compile {PROGRAM_FILE}: {str(exc).splitlines()[0]} "
            "(missing kernel headers? scripts/setup.sh installs them)"
        ) from None
    try:
        xdp = bpf.load_func(XDP_FUNCTION.encode(), bcc.BPF.XDP)
        tc = bpf.load_func(TC_FUNCTION.encode(), bcc.BPF.SCHED_CLS)
        set_sip_ports(bpf, settings.sip_ports)
    except Exception as exc:  # verifier rejections arrive as bare Exception too
        bpf.cleanup()
        raise SetupError(f"kernel refused the programs: {str(exc).splitlines()[0]}") from None
    return LoadedPrograms(bpf, xdp.fd, tc.fd)


def set_sip_ports(bpf: Any, ports: Iterable[int]) -> None:
    table = bpf[SIP_PORTS_MAP]
    for port in ports:
        table[ctypes.c_uint32(port)] = ctypes.c_uint8(1)
