"""AF_PACKET fallback capture: TPACKET_V3 rings, a classic BPF filter from the
same settings, PACKET_FANOUT across workers, the same event records.

Used with --mode afpacket, or by --mode auto when the eBPF programs cannot
load. Each (interface, worker) pair has one socket: a fanout group per
interface spreads packets by the kernel's symmetric flow hash (without the
defrag flag: our own reassembly handles fragments). A socket's ring is a
series of blocks the kernel hands over whole; we walk every packet of a
ready block and give the block back, with no per-packet system call.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass

from otus_ebpf.capture.cbpf import MediaPorts, compile_filter, filter_expression, socket_filter
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.settings import KernelSettings
from userspace.classify import Networks, Rules, Screen, classify_frame
from userspace.event import Direction, Event, Kind
from userspace.tunnel import TunnelCounts

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1

BLOCK_SIZE = 1 << 20  # 1 MiB blocks,
BLOCK_COUNT = 32      # 32 MiB of ring per socket
FRAME_SIZE = 2048     # TPACKET_V3 packs variable-size frames; this only sizes the request
# Hand a part-filled block to user space after this long. 10 ms wasted most
# of each block at high rates on these machines; 200 ms dropped nothing.
BLOCK_TIMEOUT_MS = 200

# struct tpacket_block_desc → tpacket_hdr_v1, and struct tpacket3_hdr (linux/if_packet.h).
_BLOCK = struct.Struct("=III")           # block_status, num_pkts, offset_to_first_pkt at 8
_PACKET = struct.Struct("=IIIIIIHH")     # next_offset, sec, nsec, snaplen, len, status, mac, net
_SLL_PKTTYPE = 48 + 10                   # sockaddr_ll follows the 48-byte header
_STATS = struct.Struct("=III")           # tp_packets, tp_drops, tp_freeze_q_cnt


@dataclass
class _Member:
    sock: socket.socket
    ring: mmap.mmap
    ifindex: int
    next_block: int = 0


@dataclass
class PacketStats:
    packets: int = 0
    drops: int = 0


_ACCEPT_NOTHING = (0x06, 0, 0, 0)  # BPF_RET|BPF_K 0: keep no byte of any packet


class AfPacketCapture:
    def __init__(self, interfaces: dict[int, str], settings: KernelSettings, capture_ingress: bool,
                 capture_egress: bool, clock_offset_ns: int) -> None:
        self._settings = settings
        self._paused = False
        # Learned endpoints, as the kernel's flow map would hold them; the rules see this
        # dict itself, so learning is one assignment, not a copy of every endpoint.
        self._media: dict[tuple[bytes, int, int], tuple[Kind, int]] = {}
        # Tunnelled frames' inner addresses judged here (the socket filter lets tunnels through)
        self._networks = Networks.of(settings.include, settings.exclude)
        self._filtered_before = 0  # by the address filters replaced since (set_filters)
        self.tunnel_counts = TunnelCounts()  # the kernel's DECAP_* counters, counted here
        self._rules = Rules(frozenset(settings.capture_ports), settings.signature, settings.shards,
                            self._media, settings.tunnels, self._networks, self.tunnel_counts)
        # The drop list and dedup, as the kernel applies them after a match; socket time is the window's.
        self.screen = Screen(settings.drop_methods, _window_ns(settings), settings.snaplen)
        self._ports = MediaPorts()
        self._ingress, self._egress = capture_ingress, capture_egress
        self._clock_offset_ns = clock_offset_ns
        self._snaplen = settings.snaplen
        self.stats = PacketStats()
        self.filter_failures = 0  # socket filter swaps that failed (counted; the old filter stays)
        self._members: list[_Member] = []
        program = compile_filter(filter_expression(settings), settings.snaplen)
        try:
            for ifindex, name in interfaces.items():
                group = (os.getpid() ^ ifindex) & 0xFFFF
                for _ in range(settings.shards):
                    self._members.append(self._open(ifindex, name, program, group, settings.shards))
        except BaseException:
            self.close()
            raise
        self._poller = select.poll()
        for member in self._members:
            self._poller.register(member.sock, select.POLLIN | select.POLLERR)

    def _open(self, ifindex: int, name: str, program: list[tuple[int, int, int, int]], group: int,
              workers: int) -> _Member:
        # Protocol 0 until bound: no packet reaches the ring before the filter is on.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            fprog, _keep = socket_filter(program)
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            request = struct.pack("=7I", BLOCK_SIZE, BLOCK_COUNT, FRAME_SIZE,
                                  BLOCK_SIZE * BLOCK_COUNT // FRAME_SIZE, BLOCK_TIMEOUT_MS, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
            ring = mmap.mmap(sock.fileno(), BLOCK_SIZE * BLOCK_COUNT, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((name, ETH_P_ALL))
            if workers > 1:
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | PACKET_FANOUT_HASH << 16)
        except OSError as exc:
            sock.close()
            raise SetupError(f"AF_PACKET capture on {name} failed: {exc.strerror}") from None
        return _Member(sock, ring, ifindex)

    def poll(self, timeout_ms: int) -> list[Event]:
        self._poller.poll(timeout_ms)
        return self.drain()

    def drain(self) -> list[Event]:
        batch: list[Event] = []
        for shard, member in enumerate(self._members):
            self._walk_ready_blocks(member, shard % max(1, self._rules.shards), batch)
        return batch

    def _walk_ready_blocks(self, member: _Member, shard: int, batch: list[Event]) -> None:
        ring = member.ring
        while True:
            base = member.next_block * BLOCK_SIZE
            status, count, first = _BLOCK.unpack_from(ring, base + 8)
            if not status & TP_STATUS_USER:
                return
            offset = base + first
            for _ in range(count):
                next_offset, sec, nsec, snaplen, wire_len, _st, mac, _net = _PACKET.unpack_from(ring, offset)
                outgoing = ring[offset + _SLL_PKTTYPE] == PACKET_OUTGOING
                if self._egress if outgoing else self._ingress:
                    frame = ring[offset + mac:offset + mac + snaplen]
                    self._add(frame, Direction.EGRESS if outgoing else Direction.INGRESS,
                              sec * 1_000_000_000 + nsec, member.ifindex, wire_len, batch)
                offset += next_offset
            struct.pack_into("=I", ring, base + 8, TP_STATUS_KERNEL)
            member.next_block = (member.next_block + 1) % BLOCK_COUNT

    def _add(self, frame: bytes, direction: Direction, wall_ns: int, ifindex: int, wire_len: int,
             batch: list[Event]) -> None:
        event = classify_frame(frame, self._rules, direction, wall_ns - self._clock_offset_ns, ifindex,
                               wire_len)
        # None: the socket filter is coarser than the kernel's verdicts (VLAN variants)
        if event is not None and (not self.screen.active or self.screen.admit(event)):
            batch.append(event)

    def set_filters(self, settings: KernelSettings) -> None:
        """New SIP ports, signature, networks, drop list and dedup: classification
        and the socket filter both change at once, the rings, learned media and
        the packets within the dedup window stay."""
        self._settings = settings
        self._filtered_before = self.filtered
        self._networks = Networks.of(settings.include, settings.exclude)
        self._rules = Rules(frozenset(settings.capture_ports), settings.signature, settings.shards,
                            self._media, settings.tunnels, self._networks, self.tunnel_counts)
        self.screen.change(settings.drop_methods, _window_ns(settings))
        self._attach_filter()

    @property
    def filtered(self) -> int:
        """Tunnelled frames the address filters kept out here (the kernel's FILTERED)."""
        return self._filtered_before + (0 if self._networks is None else self._networks.filtered)

    def set_paused(self, paused: bool) -> None:
        """Paused, the sockets take nothing (a filter that accepts no packet); resumed,
        the capture filter comes back. Sockets, rings and fanout stay."""
        self._paused = paused
        self._attach_filter()

    def _attach_filter(self) -> None:
        program = [_ACCEPT_NOTHING] if self._paused else \
            compile_filter(filter_expression(self._settings, self._ports.ranges), self._snaplen)
        fprog, _keep = socket_filter(program)
        for member in self._members:
            member.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))

    def set_media(self, learn: list[tuple[bytes, int, int, Kind, int]],
                  forget: list[tuple[bytes, int, int]]) -> None:
        """Learned RTP/RTCP endpoints (raw address, port, protocol[, kind, shard]):
        classify them like the kernel's flow map does, and let them through
        the socket filter; the new filter replaces the old one atomically."""
        for address, port, proto, kind, shard in learn:
            if (address, port, proto) not in self._media:
                self._ports.learn(port)
            self._media[address, port, proto] = (kind, shard)
        for key in forget:
            if self._media.pop(key, None) is not None:
                self._ports.forget(key[1])
        if not self._ports.update():
            return  # the same filter: nothing to compile
        try:
            self._attach_filter()
        except (OSError, SetupError):
            self.filter_failures += 1  # the filter in force stays; the new endpoints' media may be missed

    def read_stats(self) -> PacketStats:
        """Cumulative kernel figures; PACKET_STATISTICS resets on every read."""
        for member in self._members:
            packets, drops, _freezes = _STATS.unpack(member.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS,
                                                                             _STATS.size))
            self.stats.packets += packets
            self.stats.drops += drops
        return self.stats

    def close(self) -> None:
        for member in self._members:
            member.ring.close()
            member.sock.close()
        self._members = []


def _window_ns(settings: KernelSettings) -> int | None:
    return settings.dedup_window_ms * 1_000_000 if settings.dedup else None
