"""Media endpoints shared between live calls: held per call, owned by the
newest holder, forgotten with the last; the kernel's flow map changes only
when what it must hold changes; media goes to the call that owns it then."""

from __future__ import annotations

from dataclasses import replace

from tests.support import calls
from tests.support.calls import OFFERED, PCMA, PCMU, Datagram, Dialog, Party, Stream
from tests.support.frames import ethernet, ipv4, raw, ring_record, udp
from userspace.endpoints import EndpointRegistry, FlowAction, FlowEvent, Hold
from userspace.event import Kind
from userspace.pipeline import Pipeline
from userspace.records import CallSummary

SERVER = (raw("10.9.0.1"), 30000)
ENTRY = (*SERVER, 0)  # its kernel entry, announced outside any tunnel
RTP = Kind.RTP


def hold(call_id: str, shard: int = 0) -> Hold:
    return Hold(call_id, RTP, shard, {PCMA: "PCMA/8000"})


def test_the_last_holder_forgets_and_the_kernel_entry_changes_only_when_it_must() -> None:
    registry = EndpointRegistry()
    assert registry.take(SERVER, hold("a")) == FlowEvent(FlowAction.LEARN, *SERVER, RTP, "a", 0)
    assert registry.take(SERVER, hold("b")) is None, "same kind and shard: the kernel entry stands"
    assert registry.owner(SERVER) == hold("b") and len(registry) == 1
    assert registry.release(SERVER, "a") is None and registry.owner(SERVER) == hold("b")
    assert registry.release(SERVER, "a") is None, "released twice: nothing"
    assert registry.release(SERVER, "b") == FlowEvent(FlowAction.FORGET, *SERVER, RTP, "b", 0)
    assert len(registry) == 0 and registry.owner(SERVER) is None


def test_an_owner_on_another_shard_moves_the_entry_and_gives_it_back() -> None:
    registry = EndpointRegistry()
    registry.take(SERVER, hold("a", shard=0))
    assert registry.take(SERVER, hold("b", shard=1)) == FlowEvent(FlowAction.LEARN, *SERVER, RTP, "b", 1)
    assert registry.release(SERVER, "b") == FlowEvent(FlowAction.LEARN, *SERVER, RTP, "a", 0)
    assert registry.release(SERVER, "a") == FlowEvent(FlowAction.FORGET, *SERVER, RTP, "a", 0)


def test_a_flow_goes_to_the_call_that_holds_both_its_ends() -> None:
    registry = EndpointRegistry()
    first_caller, second_caller = (raw("10.1.0.1"), 4000), (raw("10.1.0.2"), 4000)
    registry.take(first_caller, hold("a"))
    registry.take(SERVER, hold("a"))
    registry.take(second_caller, hold("b"))
    registry.take(SERVER, hold("b"))
    assert registry.flow_owner(SERVER, first_caller) == (hold("a"), True), "the older call's own flow"
    assert registry.flow_owner(SERVER, second_caller) == (hold("b"), True)
    assert registry.flow_owner(first_caller, SERVER) == (hold("a"), True)
    stranger = (raw("10.7.7.7"), 1)
    assert registry.flow_owner(SERVER, stranger) == (hold("b"), True), "a stranger: the newest holder"
    assert registry.flow_owner(stranger, first_caller) == (hold("a"), False), "only the source known"
    assert registry.flow_owner(stranger, (raw("10.7.7.8"), 1)) == (None, False)


CALLEE = Party("10.2.0.1", 50000, "ivr")  # a media server answering both calls on one port
FIRST = Dialog("shared-1", Party("10.1.0.1", 40000, "alice"), CALLEE, OFFERED, {PCMU: "PCMU/8000"})
SECOND = Dialog("shared-2", Party("10.1.0.2", 42000, "carol"), CALLEE, OFFERED, {PCMA: "PCMA/8000"})
MS = 1_000_000


def events(datagrams: list[Datagram], media: bool) -> list[bytes]:
    return [ring_record(ethernet(ipv4(udp(d.payload, d.sport, d.dport), src=d.src, dst=d.dst)),
                        ts_ns=d.ts_ns, kind=Kind.RTP if media else Kind.SIP) for d in datagrams]


def test_overlapping_calls_on_one_endpoint_each_get_their_own_media_and_gauges_return_to_0() -> None:
    pipeline = Pipeline({2: "eth0"}, 0)
    pipeline.keep_frames = True
    first_up = Stream(0x1111, PCMU, 50, 100 * MS)
    second_up = Stream(0x2222, PCMA, 60, 2_000 * MS)
    first_down = Stream(0x3333, PCMU, 40, 2_100 * MS)  # the server to the first caller, after the second came
    late_first = Stream(0x1111, PCMU, 10, 4_000 * MS, first_seq=1050, first_timestamp=50 * 160)
    steps: list[tuple[list[Datagram], bool]] = [
        (calls.signalling(FIRST, [(0, "invite"), (10 * MS, "ok"), (20 * MS, "ack")]), False),
        (calls.media(first_up, FIRST.caller, CALLEE), True),
        (calls.signalling(SECOND, [(1_900 * MS, "invite"), (1_910 * MS, "ok"), (1_920 * MS, "ack")]), False),
        (calls.media(second_up, SECOND.caller, CALLEE) + calls.media(first_down, CALLEE, FIRST.caller), True),
        (calls.media(late_first, FIRST.caller, CALLEE), True),
        (calls.signalling(FIRST, [(5_000 * MS, "bye"), (5_010 * MS, "bye_ok")]), False),
        (calls.signalling(SECOND, [(6_000 * MS, "bye"), (6_010 * MS, "bye_ok")]), False),
    ]
    records = []
    flows: list[list[FlowEvent]] = []  # per step
    for datagrams, media in steps:
        for event in events(datagrams, media):
            records += pipeline.process([event])
        flows.append(pipeline.take_flow_events())
    summaries = {r.call_id: r for r in records if isinstance(r, CallSummary)}
    packets = {cid: {s["ssrc"]: s["packets"] for s in summary.streams} for cid, summary in summaries.items()}
    assert packets == {"shared-1": {0x1111: 60, 0x3333: 40}, "shared-2": {0x2222: 60}}
    codecs = {s["ssrc"]: s["codec"] for summary in summaries.values() for s in summary.streams}
    assert codecs == {0x1111: "PCMU/8000", 0x3333: "PCMU/8000", 0x2222: "PCMA/8000"}
    frames = pipeline.take_frames()
    media_frames = [f for f in frames if f.data[14 + 20 + 8 + 1] & 0x7F in (PCMA, PCMU)]
    by_call = {cid: sum(1 for f in media_frames if f.call_id == cid) for cid in ("shared-1", "shared-2")}
    assert by_call == {"shared-1": 100, "shared-2": 60}
    assert pipeline.calls.flows_active == 0 and len(pipeline.calls) == 0
    def endpoints(step: int, action: FlowAction) -> set[tuple[bytes, int]]:
        return {(e.address, e.port) for e in flows[step] if e.action is action}

    server = {(raw(CALLEE.address), CALLEE.media_port), (raw(CALLEE.address), CALLEE.media_port + 1)}
    assert endpoints(0, FlowAction.LEARN) >= server
    # The second call takes them over: the kernel's entry names it now (its owner tag keys its
    # streams), and when it ends first the entry goes back to the first call, never away.
    taken = [e for e in flows[2] if (e.address, e.port) in server]
    assert {e.action for e in taken} == {FlowAction.LEARN} and {e.call_id for e in taken} == {"shared-2"}
    assert not endpoints(5, FlowAction.FORGET) & server, "the second call still holds them"
    assert endpoints(6, FlowAction.FORGET) >= server


def test_thousands_of_holders_ending_in_any_order_keep_the_owner_at_hand() -> None:
    """Releasing 40,000 holders of one endpoint newest-first made each later lookup walk
    the popped slots of a dict (35 us a packet): the owner must stay O(1) to find."""
    from userspace.endpoints import Holders, _Shared  # noqa: PLC0415 - the structure under test

    registry = Holders()
    calls = [f"c{n}" for n in range(2_000)]
    for call in calls:
        registry.take(SERVER, hold(call))
    for n in range(len(calls) - 1, 0, -1):  # newest first; then the middle ones
        assert registry.release(SERVER, calls[n]) is None
        assert registry.owner(SERVER) == hold(calls[n - 1])
        shared = registry._holders[SERVER]
        if isinstance(shared, _Shared):
            assert len(shared.order) <= 2 * len(shared.holds) + 16
    assert registry._holders[SERVER] == hold("c0"), "one holder left: the plain form again"
    for call in calls[1:]:
        registry.take(SERVER, hold(call))
    for call in calls[1:-1]:  # every one but the newest, oldest first: the owner never changes
        registry.release(SERVER, call)
        shared = registry._holders[SERVER]
        assert isinstance(shared, _Shared) and len(shared.order) <= 2 * len(shared.holds) + 16
    assert registry.owner(SERVER) == hold(calls[-1])


def test_workers_sharing_an_endpoint_have_one_writer_of_the_kernel_entry() -> None:
    """Each worker wrote the map itself: one worker's call ending removed the entry
    another worker's call still needed."""
    from otus_ebpf.kernel.flows import SharedFlows  # noqa: PLC0415

    flows = SharedFlows()

    def event(action: FlowAction, shard: int) -> FlowEvent:
        return FlowEvent(action, *SERVER, RTP, f"call-of-w{shard}", shard)

    def writes(changes: list[FlowEvent]) -> list[tuple[FlowAction, int]]:
        return [(c.action, c.shard) for c in changes]

    assert writes(flows.apply(0, [event(FlowAction.LEARN, 0)])) == [(FlowAction.LEARN, 0)]
    assert not flows.shared(ENTRY)
    assert writes(flows.apply(1, [event(FlowAction.LEARN, 1)])) == [(FlowAction.LEARN, 1)]
    assert flows.shared(ENTRY), "the kernel entry is marked: its packets go by their other end"
    assert writes(flows.apply(1, [event(FlowAction.FORGET, 1)])) == [(FlowAction.LEARN, 0)], \
        "worker 0's call still holds it: back to worker 0, not forgotten"
    assert not flows.shared(ENTRY)
    flows.apply(1, [event(FlowAction.LEARN, 1)])
    assert writes(flows.drop(0)) == [(FlowAction.LEARN, 1)], "same owner; the shared mark goes"
    assert not flows.shared(ENTRY)
    assert writes(flows.drop(1)) == [(FlowAction.FORGET, 1)] and len(flows) == 0


VXLAN = 1  # TunnelCode.VXLAN


def _kernel_after(events: list[FlowEvent | None]) -> set[tuple[bytes, int, int]]:
    """The flow map's keys (address, port, tunnel kind) after these writes, in order."""
    entries: set[tuple[bytes, int, int]] = set()
    for e in events:
        if e is not None:
            key = (e.address, e.port, e.tunnel)
            (entries.add if e.action is FlowAction.LEARN else entries.discard)(key)
    return entries


def test_an_endpoint_announced_plain_and_inside_a_tunnel_leaves_no_kernel_entry_behind() -> None:
    # The kernel's flow key holds the tunnel kind: a plain call and a VXLAN call announcing
    # one address:port are two entries, each forgotten with the last call of its kind.
    for order in (("a", "b"), ("b", "a")):
        registry = EndpointRegistry()
        plain = Hold("a", RTP, 0, {}, owner=1)
        tunnelled = Hold("b", RTP, 0, {}, owner=2, tunnel=VXLAN)
        events = [registry.take(SERVER, plain), registry.take(SERVER, tunnelled)]
        assert _kernel_after(events) == {(*SERVER, 0), (*SERVER, VXLAN)} and len(registry) == 2
        events += [registry.release(SERVER, call) for call in order]
        assert _kernel_after(events) == set(), f"calls ending {order}"
        assert len(registry) == 0 and registry.owner(SERVER) is None


def test_workers_holding_an_endpoint_plain_and_inside_a_tunnel_forget_both_entries() -> None:
    from otus_ebpf.kernel.flows import SharedFlows  # noqa: PLC0415

    for same_worker in (True, False):
        flows = SharedFlows()
        second = 0 if same_worker else 1
        learn_plain = FlowEvent(FlowAction.LEARN, *SERVER, RTP, "a", 0, owner=1)
        learn_vxlan = FlowEvent(FlowAction.LEARN, *SERVER, RTP, "b", 0, owner=2, tunnel=VXLAN)
        writes = flows.apply(0, [learn_plain]) + flows.apply(second, [learn_vxlan])
        assert _kernel_after(list(writes)) == {(*SERVER, 0), (*SERVER, VXLAN)}
        writes += flows.apply(second, [replace(learn_vxlan, action=FlowAction.FORGET)])
        writes += flows.apply(0, [replace(learn_plain, action=FlowAction.FORGET)])
        assert _kernel_after(list(writes)) == set() and len(flows) == 0, f"same worker: {same_worker}"
