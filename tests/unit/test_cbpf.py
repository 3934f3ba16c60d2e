"""The AF_PACKET socket filter stays small whatever the number of media
endpoints learned: their ports go in as a bounded number of ranges."""

from __future__ import annotations

import ipaddress
import random

from otus_ebpf.capture.cbpf import (
    MAX_MEDIA_RANGES,
    MediaPorts,
    compile_filter,
    filter_expression,
    port_ranges,
)
from otus_ebpf.kernel.settings import KernelSettings
from userspace.tunnel import TunnelKind

BPF_MAXINSNS = 4096  # the kernel's limit for a classic BPF program


def covered(ranges: list[tuple[int, int]], port: int) -> bool:
    return any(low <= port <= high for low, high in ranges)


def test_ports_become_at_most_the_ranges_allowed_covering_every_one() -> None:
    rng = random.Random(7)
    ports = {rng.randrange(1024, 65536) for _ in range(40_000)}
    ranges = port_ranges(ports)
    assert len(ranges) <= MAX_MEDIA_RANGES and all(covered(ranges, p) for p in ports)
    assert port_ranges([5004, 5006, 30000]) == [(5004, 5004), (5006, 5006), (30000, 30000)]
    assert port_ranges([5004, 5006, 30000], most=2) == [(5004, 5006), (30000, 30000)], "the widest gap out"


def test_a_filter_for_20000_calls_media_compiles_within_the_classic_limit() -> None:
    """One port per call passed the limit at ~100 calls (EINVAL), and libpcap's optimiser
    took minutes and gigabytes on a few hundred."""
    rng = random.Random(3)
    media = MediaPorts()
    for _ in range(80_000):  # RTP and RTCP both ways of 20,000 calls
        media.learn(rng.randrange(10_000, 60_000))
    assert media.update()
    program = compile_filter(filter_expression(KernelSettings(), media.ranges), 2048)
    assert len(program) < BPF_MAXINSNS


def test_learning_widens_ranges_without_sorting_everything_and_forgetting_tightens_later() -> None:
    media = MediaPorts(most=4)
    for port in (10_000, 10_002, 20_000, 30_000):
        media.learn(port)
    media.update()
    assert media.ranges == [(10_000, 10_000), (10_002, 10_002), (20_000, 20_000), (30_000, 30_000)]
    media.learn(10_010)  # a fifth range is not allowed: the nearest widens
    assert media.update() and media.ranges[1] == (10_002, 10_010)
    media.learn(10_005)
    assert not media.update(), "already covered: the filter stays"
    for port in (10_000, 10_002, 10_010, 10_005):
        media.forget(port)
    assert media.update() and media.ranges == [(20_000, 20_000), (30_000, 30_000)], "halved: tight again"
    for port in (20_000, 30_000):
        media.forget(port)
    assert media.update() and media.ranges == []


def test_the_tunnels_on_pass_the_filter_beside_the_address_filters_and_none_leaves_it_as_it_was() -> None:
    networks = (ipaddress.ip_network("10.1.0.0/16"),)
    every = filter_expression(KernelSettings(include=networks, vxlan_ports=(4789, 8472)))
    def ip(proto: int) -> str:  # an IPv6 fragment names its protocol after its fragment header
        return f"(ip proto {proto} or ip6 proto {proto} or (ip6 and ip6[6] == 44 and ip6[40] == {proto}))"
    tunnels = f"(udp and (dst port 4789 or dst port 6081 or dst port 8472)) or {ip(47)}"
    assert f"{tunnels} or {ip(4)} or {ip(41)})" in every
    assert every.index("net 10.1.0.0/16") < every.index("dst port 4789"), "include judges inner packets"
    assert len(compile_filter(every, 2048)) < BPF_MAXINSNS
    assert "proto 47" not in filter_expression(KernelSettings(decap=frozenset({TunnelKind.VXLAN})))
    assert filter_expression(KernelSettings(decap=frozenset())).count("port 4789") == 0
