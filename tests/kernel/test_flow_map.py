"""The kernel's flow map is sized from the call limit, and a full map is a
counted condition: the update is refused, nothing raises, SIP goes on."""

from __future__ import annotations

import ctypes
import random
from collections.abc import Iterator

import pytest

from otus_ebpf.kernel.abi import FLOW_KEY
from otus_ebpf.kernel.bpfsys import map_info_by_fd
from otus_ebpf.kernel.flows import FlowMapWriter, FlowStats, FlowTableFull, apply_each
from otus_ebpf.kernel.maps import FLOW_PORTS_MAP, FLOWS_MAP, table
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.options import AttachOptions
from tests.support.frames import ethernet, ipv4, udp
from tests.support.kernel import KernelHarness
from tests.support.sip_samples import INVITE
from userspace.boundary import Boundary
from userspace.calls import CallLimits
from userspace.endpoints import FlowAction, FlowEvent
from userspace.event import Counter, Kind

CALLS = 8  # a map of 32 endpoints


@pytest.fixture(scope="module")
def small() -> Iterator[KernelHarness]:
    options = AttachOptions(("lo",), calls=CallLimits(max_calls=CALLS))
    harness = KernelHarness(options.capture.kernel)
    try:
        yield harness
    finally:
        harness.close()


def test_the_map_holds_four_endpoints_per_call_of_the_limit(small: KernelHarness) -> None:
    flows = table(small.programs.bpf, FLOWS_MAP)
    assert map_info_by_fd(flows.map_fd).max_entries == CALLS * 4
    assert KernelSettings().max_flows == CallLimits().flow_map_entries == 400_000


def test_a_full_map_refuses_learning_counted_and_sip_still_matches(small: KernelHarness) -> None:
    """Regression: a full flows map raised bcc's bare Exception out of the poll loop."""
    maps = small.maps
    events = [FlowEvent(FlowAction.LEARN, bytes([10, 200, 0, n]), 20000, Kind.RTP, f"c{n}", 0)
              for n in range(100)]
    stats = FlowStats()

    def learn(event: FlowEvent) -> None:
        maps.learn_flow((event.address, event.port), event.kind, 0)

    def forget(event: FlowEvent) -> None:
        maps.forget_flow((event.address, event.port))

    apply_each(events, learn, forget, stats, Boundary())  # strict: any other error fails the test
    assert (stats.learned, stats.flows_map_full) == (CALLS * 4, 100 - CALLS * 4)
    with pytest.raises(FlowTableFull):
        learn(events[-1])
    learned_media = small.run(ethernet(ipv4(udp(b"\x80" * 20, 40000, 20000), dst="10.200.0.0")))
    assert learned_media.moved[Counter.MATCHED_RTP] == 1, "what fitted is captured"
    sip = small.run(ethernet(ipv4(udp(INVITE))))
    assert sip.moved[Counter.MATCHED_SIP_PORT] == 1, "SIP is captured whatever the map holds"
    forgets = [FlowEvent(FlowAction.FORGET, e.address, e.port, e.kind, e.call_id, 0) for e in events]
    apply_each(forgets, learn, forget, stats, Boundary())  # forgetting what never fitted is harmless
    assert stats.forgotten == 100
    flows = table(small.programs.bpf, FLOWS_MAP)
    assert len(list(flows.keys())) == 0


def test_two_workers_learning_and_forgetting_one_ports_endpoints_leave_its_count_exact(
        kernel: KernelHarness) -> None:
    """Regression: workers wrote flow_ports with a read-modify-write each, so their
    updates were lost. Two workers now hand their changes to one writer; after
    100,000 learns and forgets of endpoints on one port (the same endpoints in
    both, and some only in one), the port's count is the number of its entries."""
    port, addresses = 31000, [bytes([10, 210, n // 250, n % 250 + 1]) for n in range(60)]
    writer = FlowMapWriter(kernel.maps)
    rng = random.Random(14)
    held: list[set[bytes]] = [set(), set()]
    for step in range(1, 100_001):
        worker = rng.randrange(2)
        address = rng.choice(addresses[:40] if worker == 0 else addresses[20:])  # 20 in both
        action = FlowAction.FORGET if address in held[worker] else FlowAction.LEARN
        (held[worker].discard if action is FlowAction.FORGET else held[worker].add)(address)
        writer.take(worker, [FlowEvent(action, address, port, Kind.RTP, f"w{worker}", worker)])
        if step % 64 == 0:  # the supervisor writes once a loop turn, many changes at a time
            writer.write(Boundary())
        if step % 25_000 == 0:
            writer.write(Boundary())
            assert port_users(kernel, port) == len(entries_on(kernel, port)) == len(held[0] | held[1])
    for worker in (0, 1):
        forgets = [FlowEvent(FlowAction.FORGET, a, port, Kind.RTP, "", worker) for a in held[worker]]
        writer.take(worker, forgets)
    writer.write(Boundary())
    assert port_users(kernel, port) == 0 and entries_on(kernel, port) == []
    assert writer.stats.failed == writer.stats.flows_map_full == 0


def port_users(kernel: KernelHarness, port: int) -> int:
    return int(table(kernel.programs.bpf, FLOW_PORTS_MAP)[ctypes.c_uint32(port)].value)


def entries_on(kernel: KernelHarness, port: int) -> list[bytes]:
    flows = table(kernel.programs.bpf, FLOWS_MAP)
    return [bytes(key) for key in flows if FLOW_KEY.unpack(bytes(key))[1] == port]


def test_one_endpoint_announced_plain_and_inside_vxlan_leaves_no_entry_when_both_calls_end(
        kernel: KernelHarness) -> None:
    """Regression: the endpoint registry counted holders by address and port, the kernel's
    key carries the tunnel kind: a plain call and a VXLAN call announcing one endpoint
    learned two entries and forgot one, which stayed in the map and in flow_ports."""
    from tests.support.kernel import Hook  # noqa: PLC0415
    from tests.support.sip_samples import sip_message  # noqa: PLC0415
    from tests.support.tunnels import vxlan  # noqa: PLC0415
    from userspace.pipeline import Pipeline  # noqa: PLC0415

    plain_call, tunnelled_call = "a84b4c76e66710@pc33.atlanta.example.com", "tunnelled@mirror"

    def bye(call_id: str) -> bytes:
        return sip_message("BYE sip:bob@biloxi.example.com SIP/2.0",
                           ["Via: SIP/2.0/UDP a;branch=z9hG4bKx", "To: <sip:bob@b>;tag=1",
                            "From: <sip:a@a>;tag=2", f"Call-ID: {call_id}", "CSeq: 2 BYE"])

    def plain(message: bytes) -> bytes:
        return ethernet(ipv4(udp(message, 5070, 5060), src="10.1.0.1", dst="10.1.0.2"))

    def tunnelled(message: bytes) -> bytes:
        return vxlan(plain(message))

    pipeline, writer = Pipeline({}, 0), FlowMapWriter(kernel.maps)
    invite_b = INVITE.replace(plain_call.encode(), tunnelled_call.encode())
    steps = (plain(INVITE), tunnelled(invite_b), tunnelled(bye(tunnelled_call)), plain(bye(plain_call)))
    tunnels_seen = set()
    for n, frame in enumerate(steps):
        pipeline.process(kernel.run(frame, Hook.XDP).events)
        changes = pipeline.take_flow_events()
        tunnels_seen |= {c.tunnel for c in changes}
        writer.take(0, changes)
        writer.write(Boundary())
        if n == 1:
            assert len(entries_on(kernel, 49172)) == 2, "one entry per tunnel kind"
    assert tunnels_seen == {0, 1} and len(pipeline.calls) == 0
    assert entries_on(kernel, 49172) == [] and port_users(kernel, 49172) == 0
    assert writer.stats.failed == writer.stats.flows_map_full == 0
