"""Capture sources: the eBPF programs with their rings, or AF_PACKET.

Both hand over ring records in batches and describe their own figures for
the stats line. Each registers its resources on the ExitStack it is given,
in an order that unwinds as: stop capturing (detach), hand the last records
and the stop to ``on_stop`` (deliver, flush, final figures), release.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from otus_ebpf import logs
from otus_ebpf.capture.afpacket import AfPacketCapture
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.attach import AttachMethod, XdpMode, attach_tc_egress, attach_xdp, refuse_foreign_xdp
from otus_ebpf.kernel.counters import program_counters, program_sections
from otus_ebpf.kernel.flows import FlowStats, apply_each
from otus_ebpf.kernel.loader import LoadedPrograms, import_bcc, load_programs
from otus_ebpf.kernel.rings import open_reader
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.kernel.streams import KernelStreams
from otus_ebpf.kernel.tls import attach_tls
from userspace.boundary import Boundary
from userspace.endpoints import FlowEvent
from userspace.event import Captured, Kind
from userspace.tunnel import media_protocol


class CaptureMode(Enum):
    XDP = "xdp"            # eBPF: XDP ingress + TC egress
    AFPACKET = "afpacket"  # AF_PACKET rings with a classic BPF filter
    AUTO = "auto"          # eBPF, else AF_PACKET


class CaptureDirection(Enum):
    INGRESS = "ingress"
    EGRESS = "egress"
    BOTH = "both"

    @property
    def ingress(self) -> bool:
        return self is not CaptureDirection.EGRESS

    @property
    def egress(self) -> bool:
        return self is not CaptureDirection.INGRESS


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    mode: CaptureMode
    direction: CaptureDirection
    xdp_mode: XdpMode
    method: AttachMethod
    force: bool
    kernel: KernelSettings


class Capture(Protocol):
    description: str
    mode: CaptureMode  # how it captures: XDP/TC programs or AF_PACKET sockets (never AUTO)

    def poll(self, timeout_ms: int) -> Sequence[Captured]: ...

    def stats_sections(self) -> list[str]: ...

    def counters(self) -> dict[str, dict[str, int]]:
        """Cumulative counters per capturer (a program, a ring shard, a socket)."""

    def set_filters(self, before: KernelSettings, after: KernelSettings) -> None:
        """Change SIP ports, signature and networks while capturing."""

    def set_paused(self, paused: bool) -> None:
        """Stop or restart taking packets, without detaching anything."""

    def apply_flows(self, events: list[FlowEvent], stats: FlowStats, boundary: Boundary) -> None:
        """Learn or forget media endpoints the dialogs announced (each event on its own:
        otus_ebpf.kernel.flows.apply_each)."""

    def stream_source(self) -> KernelStreams | None:
        """The kernel's RTP stream statistics, where the kernel keeps them."""


OnStop = Callable[[Sequence[Captured]], None]
UDP = 17  # media runs over UDP
_log = logs.get(__name__)


def preflight(options: CaptureOptions, interfaces: dict[int, str]) -> None:
    """Checks that need no kernel changes, so they fail before anything loads.

    A foreign XDP program is a conflict for the operator to settle (--force),
    not a reason for auto to fall back; a missing bcc is.
    """
    if options.mode is CaptureMode.AFPACKET:
        return
    if options.mode is CaptureMode.XDP:
        import_bcc()
    if options.direction.ingress:
        for ifindex, name in interfaces.items():
            refuse_foreign_xdp(ifindex, name, options.force)


def open_capture(stack: contextlib.ExitStack, options: CaptureOptions, interfaces: dict[int, str],
                 clock_offset_ns: int, on_stop: OnStop) -> Capture:
    if options.mode is not CaptureMode.AFPACKET:
        try:
            with contextlib.ExitStack() as attempt:
                capture = _EbpfCapture(attempt, options, interfaces, on_stop)
                stack.enter_context(attempt.pop_all())
                return capture
        except SetupError as exc:
            if options.mode is CaptureMode.XDP:
                raise
            _log.warning(f"eBPF capture unavailable ({exc}); falling back to AF_PACKET")
    return _open_afpacket(stack, options, interfaces, clock_offset_ns, on_stop)


def attach_hooks(stack: contextlib.ExitStack, programs: LoadedPrograms, options: CaptureOptions,
                 interfaces: dict[int, str]) -> list[str]:
    """XDP on ingress, TC on egress, per interface; each detach goes on ``stack``."""
    hooks = []
    for ifindex, name in interfaces.items():
        if options.direction.ingress:
            how = attach_xdp(stack, programs.xdp_fd, ifindex, name, options.xdp_mode, options.method,
                             options.force)
            hooks.append(f"{name} ingress XDP ({how})")
        if options.direction.egress:
            how = attach_tc_egress(stack, programs.tc_fd, ifindex, name, options.method)
            hooks.append(f"{name} egress TC ({how})")
    if options.kernel.tls is not None:
        hooks.append(attach_tls(stack, programs, options.kernel.tls))
    return hooks


class _EbpfCapture:
    mode = CaptureMode.XDP

    def __init__(self, stack: contextlib.ExitStack, options: CaptureOptions, interfaces: dict[int, str],
                 on_stop: OnStop) -> None:
        programs = load_programs(options.kernel)
        stack.callback(programs.close)
        self._programs = programs
        self._reader = open_reader(programs)
        stack.callback(lambda: on_stop(self._reader.drain()))
        hooks = attach_hooks(stack, programs, options, interfaces)
        self.description = f"{'; '.join(hooks)}; {programs.shards} shard(s)"

    def poll(self, timeout_ms: int) -> Sequence[Captured]:
        return self._reader.poll(timeout_ms)

    def stream_source(self) -> KernelStreams | None:
        return KernelStreams(self._programs.bpf)

    def apply_flows(self, events: list[FlowEvent], stats: FlowStats, boundary: Boundary) -> None:
        maps, shards = self._programs.maps, self._programs.shards
        apply_each(events,
                   lambda e: maps.learn_flow((e.address, e.port), e.kind, e.shard % shards,
                                             owner=e.owner, clocks=e.clocks, tunnel=e.tunnel),
                   lambda e: maps.forget_flow((e.address, e.port), e.tunnel),
                   stats, boundary)

    def stats_sections(self) -> list[str]:
        return program_sections(self._programs)

    def set_filters(self, before: KernelSettings, after: KernelSettings) -> None:
        self._programs.maps.apply_filters(before, after)

    def set_paused(self, paused: bool) -> None:
        self._programs.maps.set_paused(paused)

    def counters(self) -> dict[str, dict[str, int]]:
        return program_counters(self._programs)


class _AfPacket:
    mode = CaptureMode.AFPACKET

    def __init__(self, capture: AfPacketCapture, description: str) -> None:
        self._capture = capture
        self.description = description

    def poll(self, timeout_ms: int) -> Sequence[Captured]:
        return self._capture.poll(timeout_ms)

    def apply_flows(self, events: list[FlowEvent], stats: FlowStats, boundary: Boundary) -> None:
        if not events:
            return
        learn: list[tuple[bytes, int, int, Kind, int]] = []
        forget: list[tuple[bytes, int, int]] = []
        apply_each(events,
                   lambda e: learn.append((e.address, e.port, media_protocol(UDP, e.tunnel), e.kind,
                                           e.shard)),
                   lambda e: forget.append((e.address, e.port, media_protocol(UDP, e.tunnel))),
                   stats, boundary)
        try:
            self._capture.set_media(learn, forget)  # one socket filter for the whole batch
        except Exception as exc:
            boundary.failed("flow_learning", exc)

    def stream_source(self) -> KernelStreams | None:
        return None  # user space measures every RTP packet

    def stats_sections(self) -> list[str]:
        stats = self._capture.read_stats()
        screen = self._capture.screen
        tunnels = self._capture.tunnel_counts
        return [f"afpacket packets={stats.packets} drops={stats.drops} "
                f"filter_failures={self._capture.filter_failures} filtered={self._capture.filtered} "
                f"dropped_method={screen.dropped_methods} "
                f"duplicate={screen.duplicates} decapsulated={sum(tunnels.opened.values())} "
                f"decap_bad={tunnels.bad} decap_nested={tunnels.nested} decap_untrusted={tunnels.untrusted}"]

    def set_filters(self, before: KernelSettings, after: KernelSettings) -> None:
        self._capture.set_filters(after)

    def set_paused(self, paused: bool) -> None:
        self._capture.set_paused(paused)

    def counters(self) -> dict[str, dict[str, int]]:
        stats = self._capture.read_stats()
        screen = self._capture.screen
        return {"afpacket": {"packets": stats.packets, "drops": stats.drops,
                             "filter_failures": self._capture.filter_failures,
                             "filtered": self._capture.filtered,
                             "dropped_method": screen.dropped_methods, "duplicate": screen.duplicates,
                             **self._capture.tunnel_counts.counters()}}


def _open_afpacket(stack: contextlib.ExitStack, options: CaptureOptions, interfaces: dict[int, str],
                   clock_offset_ns: int, on_stop: OnStop) -> Capture:
    options.kernel.validate()
    if options.kernel.tls is not None:
        raise SetupError("--tls reads TLS plaintext with eBPF uprobes, which AF_PACKET capture has not: "
                         "use --mode xdp (or auto on a kernel that loads the programs)")
    capture = AfPacketCapture(interfaces, options.kernel, options.direction.ingress,
                              options.direction.egress, clock_offset_ns)
    stack.callback(capture.close)
    stack.callback(lambda: on_stop(capture.drain()))
    names = ", ".join(interfaces.values())
    return _AfPacket(capture, f"{names} AF_PACKET (TPACKET_V3, {options.kernel.shards} fanout member(s) "
                              f"per interface)")
