"""Compile and load the kernel programs with bcc; write their initial maps.

Straight-line, as in libbpf-bootstrap: open → configure → load → create the
rings. Attaching is ``otus_ebpf.kernel.attach``'s job; draining the rings is
``otus_ebpf.kernel.rings``'s.
"""

from __future__ import annotations

import ctypes
import importlib
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from otus_ebpf import logs
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.abi import Network, PortBit
from otus_ebpf.kernel.bpfsys import map_create, map_update, prog_load
from otus_ebpf.kernel.btf import kernel_offsets
from otus_ebpf.kernel.maps import KernelMaps, table
from otus_ebpf.kernel.settings import PAGE_SIZE, KernelSettings, MediaMode
from otus_ebpf.kernel.sources import PROGRAM_FILE, TLS_PROGRAM_FILE, bpf_source_dir
from userspace.tunnel import GENEVE_PORT

_log = logs.get(__name__)
XDP_FUNCTION = "xdp_ingress"
TC_FUNCTION = "tc_egress"
# What a match goes through when the drop list or dedup is on, entered by tail call
# from the hooks' programs (bpf/otus.c "The screen"), by way of these one-slot arrays.
SCREENS = (("xdp_screen", "xdp_screens"), ("tc_screen", "tc_screens"))
# What a tunnel's inner packet goes through (bpf/otus.c "Tunnels"), likewise by tail call.
DECAPS = (("xdp_decap", "xdp_decaps"), ("tc_decap", "tc_decaps"))
COUNTERS_MAP = "counters"
# What bpf/otus_tls.c reads in kernel structs: define → (struct, member path), read from BTF.
TLS_MEMBERS = {
    "OTUS_OFF_TASK_FILES": ("task_struct", "files"),
    "OTUS_OFF_FILES_FDT": ("files_struct", "fdt"),
    "OTUS_OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OTUS_OFF_FDT_FD": ("fdtable", "fd"),
    "OTUS_OFF_FILE_PRIVATE_DATA": ("file", "private_data"),
    "OTUS_OFF_SOCKET_FILE": ("socket", "file"),
    "OTUS_OFF_SOCKET_SK": ("socket", "sk"),
    "OTUS_OFF_SK_TYPE": ("sock", "sk_type"),
    "OTUS_OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OTUS_OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "OTUS_OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "OTUS_OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OTUS_OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
    "OTUS_OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "OTUS_OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "OTUS_OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "OTUS_OFF_PT_REGS_DI": ("pt_regs", "di"),  # the first system call argument (x86_64)
}
RINGS_MAP = "rings"
_BPF_MAP_TYPE_RINGBUF = 27
_BPF_PROG_TYPE_XDP = 6
_BPF_FUNC_XDP_LOAD_BYTES = 189
_XDP_PASS = 2
_U32 = struct.Struct("=I")


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
    ring_fds: tuple[int, ...]  # each shard's ring buffer, by shard
    tls: bool = False  # bpf/otus_tls.c is loaded (--tls)
    _releases: list[Callable[[], None]] = field(default_factory=list)

    @property
    def shards(self) -> int:
        return len(self.ring_fds)

    def on_close(self, release: Callable[[], None]) -> None:
        """Run ``release`` (a ring reader's) before the rings go."""
        self._releases.append(release)

    def close(self) -> None:
        try:
            while self._releases:
                self._releases.pop()()
            self.bpf.cleanup()
        finally:  # the rings are ours, not bcc's: closed whatever bcc did
            for fd in self.ring_fds:
                os.close(fd)


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
        f"-DOTUS_SHARDS={settings.shards}",
        f"-DOTUS_MAX_FLOWS={settings.max_flows}",
        f"-DOTUS_MAX_STREAMS={settings.max_streams}",
        *settings.extra_cflags,
    ]
    if settings.route_by_call_id:
        flags.append("-DOTUS_CALLID_ROUTING")
    if settings.tls is not None:  # bpf/otus_tls.c follows kernel pointers: the running kernel's offsets
        flags += [f"-D{name}={offset}" for name, offset in kernel_offsets(TLS_MEMBERS).items()]
    return flags


def program_text(settings: KernelSettings) -> str:
    """otus.c, and after it otus_tls.c when TLS is asked for: one text, since bcc makes
    programs of the main file's functions only."""
    text = (bpf_source_dir() / PROGRAM_FILE).read_text()
    if settings.tls is not None:
        text += "\n" + (bpf_source_dir() / TLS_PROGRAM_FILE).read_text()
    return text


def load_programs(settings: KernelSettings) -> LoadedPrograms:
    settings.validate()
    require_kernel_support()
    bcc = import_bcc()
    cflags = cflags_for(settings)  # reads the kernel's BTF with --tls: its own one-line error
    try:
        loaded = bcc.BPF(text=program_text(settings).encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception for compile failures
        raise SetupError(
            f"cannot compile {PROGRAM_FILE}: {str(exc).splitlines()[0]} "
            "(missing kernel headers? scripts/setup.sh installs them)"
        ) from None
    try:
        xdp = loaded.load_func(XDP_FUNCTION.encode(), bcc.BPF.XDP)
        tc = loaded.load_func(TC_FUNCTION.encode(), bcc.BPF.SCHED_CLS)
    except Exception as exc:  # verifier rejections arrive as bare Exception too
        loaded.cleanup()
        raise SetupError(f"kernel refused the programs: {str(exc).splitlines()[0]}") from None
    try:
        maps = KernelMaps(loaded, load_screens(bcc, loaded, settings), load_decaps(bcc, loaded))
        configure_maps(maps, settings)
    except BaseException:
        loaded.cleanup()
        raise
    try:
        ring_fds = create_rings(table(loaded, RINGS_MAP).map_fd, settings.shards, settings.ring_bytes)
    except SetupError:
        loaded.cleanup()
        raise
    return LoadedPrograms(loaded, xdp.fd, tc.fd, maps, ring_fds, tls=settings.tls is not None)


def load_screens(bcc: Any, loaded: Any, settings: KernelSettings) -> bool:
    """Load the screen programs. False when the kernel refuses them and neither
    feature is asked for: capture goes on without them (the hooks' tail call then
    finds no program and the match goes up), and turning a feature on later is
    refused in one line (KernelMaps)."""
    refused = _load_second_programs(bcc, loaded, SCREENS)
    if refused is None:
        return True
    if settings.dedup or settings.drop_methods:
        raise SetupError(f"kernel refused the screen programs (for --dedup / --drop-method): {refused}")
    _log.warning("kernel refused the screen programs: %s; --dedup and --drop-method are unavailable", refused)
    return False


def load_decaps(bcc: Any, loaded: Any) -> bool:
    """Load the tunnel programs. False when the kernel refuses them: capture goes on
    with no tunnel opened (said once here; KernelMaps keeps every kind off)."""
    refused = _load_second_programs(bcc, loaded, DECAPS)
    if refused is not None:
        _log.warning("kernel refused the tunnel programs: %s; no tunnel is opened (--decap)", refused)
    return refused is None


def _load_second_programs(bcc: Any, loaded: Any, programs: tuple[tuple[str, str], ...]) -> str | None:
    """Load an (XDP, TC) pair of tail-called programs into the hooks' one-slot
    arrays; the verifier's reason when the kernel refuses one, else None."""
    try:
        for (function, array), kind in zip(programs, (bcc.BPF.XDP, bcc.BPF.SCHED_CLS), strict=True):
            program = loaded.load_func(function.encode(), kind)
            table(loaded, array)[ctypes.c_int(0)] = ctypes.c_int(program.fd)
    except Exception as exc:  # verifier rejections arrive as bare Exception
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def create_rings(rings_fd: int, shards: int, size: int) -> tuple[int, ...]:
    """A ring buffer of ``size`` bytes per shard, each set at its shard's index of
    the programs' array of rings (bpf/otus.c). Returns their fds, by shard."""
    fds: list[int] = []
    try:
        for shard in range(shards):
            fds.append(map_create(_BPF_MAP_TYPE_RINGBUF, 0, 0, size))
            map_update(rings_fd, _U32.pack(shard), _U32.pack(fds[-1]))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise SetupError(f"cannot create the {size >> 20} MiB ring of shard {len(fds)}: {exc.strerror} "
                         "(filter.ring_mb sizes it)") from None
    return tuple(fds)


def configure_maps(maps: KernelMaps, settings: KernelSettings) -> None:
    maps.seed_dedup(int.from_bytes(os.urandom(8), "little"))
    maps.configure(signature=settings.signature, sip_snaplen=settings.snaplen,
                   media_snaplen=settings.media_snaplen, media_packets=settings.media is MediaMode.PACKETS,
                   dedup=settings.dedup, dedup_window_ms=settings.dedup_window_ms)
    maps.set_sip_ports(settings.capture_ports)
    maps.set_tunnel_ports(settings.vxlan_ports, PortBit.VXLAN)
    maps.set_tunnel_ports((GENEVE_PORT,), PortBit.GENEVE)
    maps.set_decap(settings.decap)
    maps.change_drop_methods(add=settings.drop_methods)
    for network in settings.include:
        maps.add_network("include", network)
    for network in settings.exclude:
        maps.add_network("exclude", network)
    for network in settings.mirrors:
        maps.add_network("mirrors", network)
    if settings.tls is not None:
        maps.configure_tls(settings.tls.ports, settings.tls.comms)


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SetupError(f"not an IPv4/IPv6 network: {text!r} (e.g. 10.0.0.0/8, 2001:db8::/32)") from None
