"""Carry HEP packets to collectors (Homer, heplify-server) over UDP or TCP.

Neither transport ever blocks the capture: UDP sends are non-blocking and a
packet the socket cannot take is dropped and counted; TCP keeps a bounded
queue per collector, writes what the socket takes, and reconnects with a
backoff when the connection fails (packets beyond the bound are dropped and
counted, a packet cut by a broken connection is sent again whole).
"""

from __future__ import annotations

import errno
import select
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from otus_ebpf.errors import SetupError

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
TCP_QUEUE_BYTES = 8 << 20
_SEND_ERRORS_TO_DROP = (BlockingIOError, InterruptedError)


class HepTransport(Enum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class HepCollector:
    transport: HepTransport
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.value}:{host}:{self.port}"


def parse_collector(text: str) -> HepCollector:
    """``[udp:|tcp:]HOST:PORT`` (an IPv6 host in brackets)."""
    transport, rest = HepTransport.UDP, text
    for candidate in HepTransport:
        if text.startswith(f"{candidate.value}:"):
            transport, rest = candidate, text[len(candidate.value) + 1:]
    host, sep, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise SetupError(f"--hep {text!r}: expected [udp:|tcp:]HOST:PORT")
    return HepCollector(transport, host, int(port))


Address = tuple[socket.AddressFamily, tuple[str, int]]


def _resolve(collector: HepCollector, kind: socket.SocketKind) -> Address:
    try:
        family, _type, _proto, _name, address = socket.getaddrinfo(collector.host, collector.port,
                                                                   type=kind)[0]
    except socket.gaierror as exc:
        raise SetupError(f"--hep {collector}: cannot resolve {collector.host!r}: {exc.strerror}") from None
    return family, (str(address[0]), int(address[1]))


@dataclass(slots=True)
class CollectorStats:
    sent: int = 0
    dropped: int = 0       # the socket could not take it, or the queue was full
    errors: int = 0        # failed sends and connections
    reconnects: int = 0
    queued: int = 0        # TCP: packets waiting now


class UdpCollector:
    def __init__(self, collector: HepCollector) -> None:
        family, address = _resolve(collector, socket.SOCK_DGRAM)
        self.collector = collector
        self.stats = CollectorStats()
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect(address)

    def send(self, packets: Sequence[bytes]) -> None:
        send, stats = self._sock.send, self.stats
        for packet in packets:
            try:
                send(packet)
            except _SEND_ERRORS_TO_DROP:
                stats.dropped += 1
            except OSError:  # ENOBUFS, or an ICMP error from an earlier packet (ECONNREFUSED)
                stats.dropped += 1
                stats.errors += 1
            else:
                stats.sent += 1

    def flush(self, timeout: float) -> int:
        return 0  # nothing is held

    def close(self) -> None:
        self._sock.close()


class TcpCollector:
    def __init__(self, collector: HepCollector, clock: Callable[[], float],
                 max_queue_bytes: int = TCP_QUEUE_BYTES) -> None:
        self._family, self._address = _resolve(collector, socket.SOCK_STREAM)
        self.collector = collector
        self.stats = CollectorStats()
        self._clock = clock
        self._max_queue_bytes = max_queue_bytes
        self._queue: deque[bytes] = deque()
        self._queue_bytes = 0
        self._offset = 0  # bytes of the first queued packet already written
        self._sock: socket.socket | None = None
        self._connecting = False
        self._failures = 0
        self._next_attempt = 0.0

    def send(self, packets: Sequence[bytes]) -> None:
        for packet in packets:
            if self._queue_bytes + len(packet) > self._max_queue_bytes:
                self.stats.dropped += 1
                continue
            self._queue.append(packet)
            self._queue_bytes += len(packet)
        self._pump()

    def _pump(self) -> None:
        if self._sock is None and not self._connect():
            self.stats.queued = len(self._queue)
            return
        assert self._sock is not None
        if self._connecting and not self._connected():
            self.stats.queued = len(self._queue)
            return
        queue = self._queue
        while queue:
            view = memoryview(queue[0])[self._offset:]
            try:
                written = self._sock.send(view)
            except _SEND_ERRORS_TO_DROP:
                break
            except OSError:
                self._fail()
                break
            if written < len(view):
                self._offset += written
                break
            self._queue_bytes -= len(queue.popleft())
            self._offset = 0
            self.stats.sent += 1
        self.stats.queued = len(queue)

    def _connect(self) -> bool:
        if self._clock() < self._next_attempt:
            return False
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self._address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._schedule_retry()
            return False
        self._sock, self._connecting = sock, code != 0
        return True

    def _connected(self) -> bool:
        assert self._sock is not None
        _readable, writable, _ = select.select([], [self._sock], [], 0)
        if not writable:
            return False
        if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._fail()
            return False
        self._connecting = False
        if self._failures:
            self.stats.reconnects += 1
        self._failures = 0
        return True

    def _fail(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._connecting = None, False
        self._offset = 0  # the collector saw a cut packet on the dead connection; send it whole again
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self.stats.errors += 1
        delay = RECONNECT_BACKOFF_S[min(self._failures, len(RECONNECT_BACKOFF_S) - 1)]
        self._failures += 1
        self._next_attempt = self._clock() + delay

    def flush(self, timeout: float) -> int:
        deadline = self._clock() + timeout
        while self._queue and self._clock() < deadline:
            self._pump()
            if self._queue:
                pending = [self._sock] if self._sock is not None else []
                select.select([], pending, [], min(0.05, max(0.0, deadline - self._clock())))
        return len(self._queue)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


Collector = UdpCollector | TcpCollector


class HepSender:
    """The HepSink of the HEP reporter: every packet to every collector."""

    def __init__(self, collectors: Sequence[HepCollector], clock: Callable[[], float]) -> None:
        self.collectors: list[Collector] = []
        try:
            for collector in collectors:
                if collector.transport is HepTransport.UDP:
                    self.collectors.append(UdpCollector(collector))
                else:
                    self.collectors.append(TcpCollector(collector, clock))
        except BaseException:
            self.close()
            raise

    def send(self, packets: Sequence[bytes]) -> None:
        for collector in self.collectors:
            collector.send(packets)

    def flush(self, timeout: float) -> int:
        return max((collector.flush(timeout) for collector in self.collectors), default=0)

    def close(self) -> None:
        for collector in self.collectors:
            collector.close()
