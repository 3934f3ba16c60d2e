"""The kernel's RTP stream statistics against userspace/rtp.py as the oracle.

Every packet runs through the real XDP (or TC) program with
BPF_PROG_TEST_RUN on a learned flow; after each one the stream's state is
read back, and the arrival time the kernel used (its last_ns when it counted
the packet) is fed to a Python ``RtpStream`` with the same packet. At the
end packets, bytes, expected, lost, reordered, duplicates, strays, events
and payload types must be equal, and the jitter within one timestamp unit.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otus_ebpf.kernel.bpfsys import prog_test_run
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.kernel.streams import KernelStreams
from tests.support.calls import dtmf_payload, rtp
from tests.support.frames import ethernet, ipv4, ipv6, raw, udp
from tests.support.kernel import Hook, KernelHarness
from userspace.event import Counter, Flag, Kind
from userspace.kernel_streams import apply_snapshot, clock_table, stream_key
from userspace.rtp import RtpStream

SRC, DST, SPORT, DPORT = "10.9.0.1", "10.9.0.2", 30000, 40000
WORKER = 1
PCMU, PCMA, OPUS, EVENT = 0, 8, 111, 101
FORMATS = MappingProxyType({PCMU: "PCMU/8000", PCMA: "PCMA/8000", OPUS: "opus/48000/2",
                            EVENT: "telephone-event/8000"})
AUDIO = b"\xd5" * 160
ETH_IPV6 = 0x86DD


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelHarness]:
    """The real programs with the kernel measuring RTP (the default), workers routed by Call-ID."""
    harness = KernelHarness(KernelSettings(shards=2, route_by_call_id=True))
    try:
        yield harness
    finally:
        harness.close()


@dataclass(frozen=True, slots=True)
class Packet:
    seq: int
    timestamp: int
    payload_type: int = PCMU
    ssrc: int = 0x1234
    marker: bool = False

    def payload(self) -> bytes:
        if self.payload_type == EVENT:
            return rtp(self.seq, self.timestamp, self.ssrc, EVENT, dtmf_payload(5, False, 160), self.marker)
        return rtp(self.seq, self.timestamp, self.ssrc, self.payload_type, AUDIO, self.marker)


class Flow:
    """One learned flow in the kernel, its streams read back and measured by the oracle too."""

    def __init__(self, kernel: KernelHarness, owner: int, hook: Hook = Hook.XDP, src: str = SRC,
                 dst: str = DST) -> None:
        self.kernel, self.owner, self.hook = kernel, owner, hook
        self.src, self.dst = src, dst
        self.streams = KernelStreams(kernel.programs.bpf)
        self.endpoint = (ipaddress.ip_address(dst).packed, DPORT)
        kernel.maps.learn_flow(self.endpoint, Kind.RTP, WORKER, owner=owner, clocks=clock_table(FORMATS))
        self.oracle: dict[int, RtpStream] = {}
        self.first_packets: list[int] = []  # SSRCs whose first packet came up flagged
        self.counted_in_kernel = 0

    def key(self, ssrc: int) -> bytes:
        return stream_key(ipaddress.ip_address(self.src).packed, SPORT, ipaddress.ip_address(self.dst).packed,
                          DPORT, ssrc, self.owner, WORKER)

    def send(self, packet: Packet) -> None:
        payload = packet.payload()
        datagram = udp(payload, SPORT, DPORT)
        frame = (ethernet(ipv6(datagram, src=self.src, dst=self.dst), ethertype=ETH_IPV6) if ":" in self.src
                 else ethernet(ipv4(datagram, src=self.src, dst=self.dst)))
        run = self.kernel.run(frame, self.hook)
        assert run.retval == self.hook.pass_verdict, "monitoring never changes the traffic"
        for event in run.events:
            assert event.flags & Flag.STREAM and event.owner == self.owner and event.flow_hash == WORKER
            self.first_packets.append(packet.ssrc)
        self.counted_in_kernel += run.moved.get(Counter.MEDIA_COUNTED, 0)
        (value,) = self.streams.read([self.key(packet.ssrc)])
        assert value is not None
        mirror = RtpStream((raw(SRC), SPORT, raw(DST), DPORT), packet.ssrc, "c", FORMATS, 0)
        apply_snapshot(mirror, value)
        stream = self.oracle.get(packet.ssrc)
        if stream is None:
            flow = (raw(SRC), SPORT, raw(DST), DPORT)
            stream = self.oracle[packet.ssrc] = RtpStream(flow, packet.ssrc, "c", FORMATS, mirror.first_ns)
        arrival = mirror.last_ns  # the kernel's clock at this packet, when it counted it
        stream.update(packet.seq, packet.timestamp, packet.payload_type, arrival, len(payload))

    def compare(self) -> None:
        for ssrc, expected in self.oracle.items():
            (value,) = self.streams.read([self.key(ssrc)])
            assert value is not None
            measured = RtpStream((raw(SRC), SPORT, raw(DST), DPORT), ssrc, "c", FORMATS, 0)
            apply_snapshot(measured, value)
            got, want = measured.report(), expected.report()
            exact = ("packets", "bytes", "expected", "lost", "reordered", "duplicates", "stray",
                     "dtmf_events", "dtmf_packets", "payload_types", "payload_type", "codec")
            assert {k: got[k] for k in exact} == {k: want[k] for k in exact}, f"SSRC {ssrc:#x}"
            assert abs(measured.jitter - expected.jitter) <= 1.0, (measured.jitter, expected.jitter)
            assert measured.clock_rate == expected.clock_rate
        assert sorted(self.first_packets) == sorted(self.oracle), "one flagged first packet per stream"

    def close(self) -> None:
        self.streams.delete([self.key(ssrc) for ssrc in self.oracle])
        self.kernel.maps.forget_flow(self.endpoint)


def sequence(n: int, start: int = 1000, ts: int = 0, step: int = 160, payload_type: int = PCMU,
             ssrc: int = 0x1234) -> list[Packet]:
    return [Packet((start + i) & 0xFFFF, (ts + i * step) & 0xFFFFFFFF, payload_type, ssrc) for i in range(n)]


def _reordered(packets: list[Packet]) -> list[Packet]:
    out = list(packets)
    for i in range(5, len(out) - 1, 9):
        out[i], out[i + 1] = out[i + 1], out[i]
    out[40], out[60] = out[60], out[40]  # 20 behind: still within the window
    return out


def _with_events(packets: list[Packet]) -> list[Packet]:
    out: list[Packet] = []
    seq = 5000
    for i, p in enumerate(packets):
        if 30 <= i < 40:  # one DTMF digit: ten packets with the timestamp of its start
            out.append(Packet(seq, packets[30].timestamp, EVENT, marker=i == 30))
        else:
            out.append(Packet(seq, p.timestamp))
        seq += 1
    return out


CASES: dict[str, list[Packet]] = {
    "in-order": sequence(120),
    "loss": [p for i, p in enumerate(sequence(150)) if i % 7 != 3],
    "reordering": _reordered(sequence(120)),
    "duplicates": [q for p in sequence(80) for q in ((p, p) if p.seq % 5 == 0 else (p,))],
    "wrap": sequence(200, start=65450),
    "ssrc-change": sequence(60) + sequence(60, start=7, ssrc=0x9999),
    "ssrc-interleaved": [q for a, b in zip(sequence(50), sequence(50, start=300, ssrc=0x77), strict=True)
                         for q in (a, b)],
    # a 6 s jump, then back by 4000 across the 2**32 wrap
    "timestamp-jumps": [Packet(2000 + i, (i * 160 + (48_000 if i >= 40 else 0) - (4000 if i >= 80 else 0))
                                & 0xFFFFFFFF) for i in range(120)],
    "marker-bits": [Packet(p.seq, p.timestamp, marker=p.seq % 10 == 0) for p in sequence(60)],
    "payload-type-change": sequence(40) + sequence(40, start=1040, ts=6400, payload_type=PCMA)
                           + sequence(40, start=1080, ts=0, step=960, payload_type=OPUS),
    "telephone-event": _with_events(sequence(80)),
    "restart-confirmed": sequence(30) + sequence(30, start=40000),
    "stray": [*sequence(20), Packet(30000, 0), *sequence(20, start=1020, ts=3200)],
    "probation-start": [Packet(100, 0), Packet(20000, 160), *sequence(20, start=20001, ts=320)],
    "late-beyond-window": sequence(150)[:10] + sequence(150)[11:140] + [sequence(150)[10]],
    # gaps at the edges of the duplicate bitmap's two words, then late packets across them
    "bitmap-edges": sequence(10) + sequence(5, start=1073) + sequence(5, start=1205) + sequence(5, start=1333)
                    + [Packet(1070, 0), Packet(1200, 0), Packet(1300, 0), Packet(1240, 0), Packet(1240, 0)],
}


@pytest.mark.parametrize("name", CASES)
def test_the_kernel_measures_each_sequence_as_the_oracle_does(kernel: KernelHarness, name: str) -> None:
    flow = Flow(kernel, owner=0xA000 + list(CASES).index(name))
    try:
        for packet in CASES[name]:
            flow.send(packet)
        flow.compare()
    finally:
        flow.close()


def test_the_egress_program_keeps_the_same_statistics(kernel: KernelHarness) -> None:
    flow = Flow(kernel, owner=0xB001, hook=Hook.TC)
    try:
        for packet in CASES["reordering"]:
            flow.send(packet)
        flow.compare()
    finally:
        flow.close()


def test_only_a_streams_first_packet_goes_up_the_rest_is_counted_in_the_kernel(kernel: KernelHarness) -> None:
    flow = Flow(kernel, owner=0xB002)
    try:
        for packet in CASES["ssrc-change"]:
            flow.send(packet)
        assert flow.first_packets == [0x1234, 0x9999]
        assert flow.counted_in_kernel == len(CASES["ssrc-change"]) - 2
    finally:
        flow.close()


_steps = st.lists(st.tuples(st.sampled_from([1, 1, 1, 1, 2, 0, -1, -3, -30, 120, 4000, 40000]),
                            st.sampled_from([160, 160, 160, 0, 320, -160, 90_000]),
                            st.sampled_from([PCMU, PCMU, PCMU, PCMA, OPUS, EVENT]),
                            st.sampled_from([0x1234, 0x1234, 0x1234, 0x5678]),
                            st.booleans()),
                  min_size=1, max_size=80)


_OWNERS = itertools.count(0xC0000000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, start=st.integers(0, 65535))
def test_random_sequences_measure_alike(kernel: KernelHarness, steps: list[tuple[int, int, int, int, bool]],
                                        start: int) -> None:
    flow = Flow(kernel, owner=next(_OWNERS))
    seq, ts = start, 1000
    try:
        for seq_step, ts_step, payload_type, ssrc, marker in steps:
            seq, ts = (seq + seq_step) & 0xFFFF, (ts + ts_step) & 0xFFFFFFFF
            flow.send(Packet(seq, ts, payload_type, ssrc, marker))
        flow.compare()
    finally:
        flow.close()


def test_a_stream_updated_on_two_cpus_at_once_loses_no_update(kernel: KernelHarness) -> None:
    """Why a bpf_spin_lock and not per-CPU state: sequence tracking and jitter need the
    packets one after another, which per-CPU copies cannot be merged back into. Two
    CPUs hammer one stream at once; under the lock every packet lands exactly once:
    the first counted, every other one a duplicate."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("needs two CPUs to run the program on at once")
    flow = Flow(kernel, owner=0xB003)
    packet = Packet(777, 0)
    frame = ethernet(ipv4(udp(packet.payload(), SPORT, DPORT), src=SRC, dst=DST))
    repeats = 200_000
    barrier = threading.Barrier(2)

    def hammer(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        barrier.wait()
        prog_test_run(kernel.programs.xdp_fd, frame, repeat=repeats)

    try:
        threads = [threading.Thread(target=hammer, args=(cpu,)) for cpu in cpus[:2]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        kernel.reader.drain()
        (value,) = flow.streams.read([flow.key(packet.ssrc)])
        assert value is not None
        measured = RtpStream((raw(SRC), SPORT, raw(DST), DPORT), packet.ssrc, "c", FORMATS, 0)
        apply_snapshot(measured, value)
        assert (measured.packets, measured.duplicates) == (1, 2 * repeats - 1)
    finally:
        flow.oracle[packet.ssrc] = RtpStream((raw(SRC), SPORT, raw(DST), DPORT), packet.ssrc, "c", FORMATS, 0)
        flow.close()


def test_a_full_map_sends_new_streams_up_counted_where_user_space_measures_them() -> None:
    harness = KernelHarness(KernelSettings(max_streams=2))
    try:
        flow = Flow(harness, owner=0xD001)
        for ssrc in (1, 2):
            flow.send(Packet(10, 0, ssrc=ssrc))
        frame = ethernet(ipv4(udp(Packet(10, 0, ssrc=3).payload(), SPORT, DPORT), src=SRC, dst=DST))
        for _ in range(3):
            run = harness.run(frame)
            assert run.moved.get(Counter.STREAMS_FULL) == 1 and run.moved.get(Counter.SUBMITTED) == 1
            assert not run.event.flags & Flag.STREAM, "measured packet by packet in user space"
        flow.close()
    finally:
        harness.close()


def test_an_ipv6_stream_is_measured_alike(kernel: KernelHarness) -> None:
    flow = Flow(kernel, owner=0xB004, src="fd00:9::1", dst="fd00:9::2")
    try:
        for packet in CASES["loss"] + CASES["reordering"][:40]:
            flow.send(packet)
        flow.compare()
    finally:
        flow.close()
