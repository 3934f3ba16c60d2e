"""The screen (bpf/otus.c): the method drop list and duplicate suppression on
crafted frames, through both hooks (BPF_PROG_TEST_RUN). Each case checks the
one verdict the packet ends in and what went up."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.bpfsys import map_info_by_fd
from otus_ebpf.kernel.introspect import LiveMaps
from otus_ebpf.kernel.loader import import_bcc
from otus_ebpf.kernel.maps import table
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.kernel.streams import KernelStreams
from tests.support.calls import rtp
from tests.support.frames import (
    FRAGMENT,
    TCP,
    UDP,
    V6,
    ethernet,
    ipv4,
    ipv6,
    ipv6_chain,
    ipv6_fragment,
    next_hop,
    raw,
    tcp,
    udp,
    with_checksum,
)
from tests.support.kernel import Hook, KernelHarness, Run
from tests.support.sip_samples import INVITE, OK_200, request, response
from userspace.event import VERDICTS, Counter, Kind
from userspace.kernel_streams import apply_snapshot, stream_key
from userspace.rtp import RtpStream

DROPPED = ("OPTIONS", "NOTIFY", "100")
LONG_WINDOW_MS = 10_000  # nothing here takes that long: a copy sent now is always within it


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelHarness]:
    """Routed by Call-ID (the programs' largest build), the kernel measuring RTP."""
    harness = KernelHarness(KernelSettings(shards=2, route_by_call_id=True, drop_methods=DROPPED, dedup=True,
                                           dedup_window_ms=LONG_WINDOW_MS))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(autouse=True)
def forgotten(kernel: KernelHarness) -> Iterator[None]:
    """Each test starts with no packet seen and the module's filters."""
    kernel.forget_seen()
    yield
    kernel.maps.set_dedup(True, LONG_WINDOW_MS)
    kernel.maps.change_drop_methods(add=DROPPED, remove=set(kernel.maps.drop_methods()) - set(DROPPED))


@pytest.fixture(params=[Hook.XDP, Hook.TC], ids=["xdp", "tc"])
def hook(request: pytest.FixtureRequest) -> Hook:
    chosen: Hook = request.param
    return chosen


def verdict(kernel: KernelHarness, frame: bytes, hook: Hook) -> tuple[Counter, Run]:
    """The one verdict the frame ends in (the verdicts add up to SEEN), and the run."""
    run = kernel.run(frame, hook)
    assert run.retval == hook.pass_verdict, "monitoring never changes the traffic"
    assert run.moved.get(Counter.SEEN) == 1
    (ended,) = [c for c in run.moved if c in VERDICTS]
    assert run.moved[ended] == 1
    return ended, run


def sip(payload: bytes, sport: int = 5070, dport: int = 5060, **ip: Any) -> bytes:
    return with_checksum(ethernet(ipv4(udp(payload, sport, dport), src="10.1.0.1", dst="10.1.0.2", **ip)))


def sip6(payload: bytes, **ip: Any) -> bytes:
    return ethernet(ipv6(udp(payload, 5070, 5060), src="fd00:1::1", dst="fd00:1::2", **ip), ethertype=V6)


# ---- the method drop list --------------------------------------------------------------------------

@pytest.mark.parametrize("message", [request("OPTIONS"), request("NOTIFY"),
                                     response("100 Trying", "INVITE")], ids=["OPTIONS", "NOTIFY", "100"])
def test_a_listed_method_or_status_code_stays_down(kernel: KernelHarness, hook: Hook, message: bytes) -> None:
    ended, run = verdict(kernel, sip(message), hook)
    assert (ended, run.events) == (Counter.DROPPED_METHOD, [])
    assert Counter.SUBMITTED not in run.moved


@pytest.mark.parametrize("message", [INVITE, OK_200, request("REGISTER"), request("OPTIONSX"),
                                     response("180 Ringing", "INVITE"), response("1000 Odd", "INVITE"),
                                     b"options sip:core@10.1.0.2 SIP/2.0\r\n\r\n"],
                         ids=["INVITE", "200-INVITE", "REGISTER", "longer-method", "180", "4-digit-code",
                              "lower-case"])
def test_other_messages_go_up(kernel: KernelHarness, hook: Hook, message: bytes) -> None:
    ended, run = verdict(kernel, sip(message), hook)
    assert ended == Counter.MATCHED_SIP_PORT
    assert run.event.kind == Kind.SIP and run.moved[Counter.SUBMITTED] == 1


@pytest.mark.parametrize("cseq", ["CSeq: 1 OPTIONS", "cseq:7 OPTIONS", "CSEQ:\t 2147483647 \tOPTIONS",
                                  "CSeq: 1 NOTIFY"])
def test_the_answer_to_a_dropped_method_stays_down_by_its_cseq(kernel: KernelHarness, hook: Hook,
                                                               cseq: str) -> None:
    ended, run = verdict(kernel, sip(response("200 OK", "OPTIONS", cseq_line=cseq)), hook)
    assert (ended, run.events) == (Counter.DROPPED_METHOD, [])


@pytest.mark.parametrize(("cseq", "before"), [
    ("CSeq: 1 INVITE", []),
    ("CSeq : 1 OPTIONS", []),                          # a blank before the colon: not the kernel's form
    ("CSeq: OPTIONS", []),                             # no number
    ("CSeq: 12345678901 OPTIONS", []),                 # 11 digits: more than a CSeq number holds
    ("CSeq: 1OPTIONS", []),                            # no blank between
    ("CSeq: 1 OPTIONSOPTIONSOPTIONS", []),             # longer than a drop-list token
    ("CSeq: 1 OPTIONS", ["X-Pad: " + "p" * 500]),      # past the scan
], ids=["other-method", "blank-before-colon", "no-number", "11-digits", "no-blank", "long-method",
        "past-the-scan"])
def test_an_answer_whose_cseq_the_scan_does_not_read_as_dropped_goes_up(
        kernel: KernelHarness, hook: Hook, cseq: str, before: list[str]) -> None:
    message = response("200 OK", "OPTIONS", cseq_line=cseq, before_cseq=before)
    ended, _run = verdict(kernel, sip(message), hook)
    assert ended == Counter.MATCHED_SIP_PORT


def test_found_by_its_signature_on_another_port_it_stays_down_too(kernel: KernelHarness, hook: Hook) -> None:
    kernel.maps.configure(signature=True, sip_snaplen=2048, media_snaplen=64, dedup=True,
                          dedup_window_ms=LONG_WINDOW_MS)
    try:
        assert verdict(kernel, sip(request("OPTIONS"), 7000, 7001), hook)[0] == Counter.DROPPED_METHOD
        assert verdict(kernel, sip(request("INFO"), 7000, 7001), hook)[0] == Counter.MATCHED_SIP_SIGNATURE
    finally:
        kernel.maps.configure(signature=False, sip_snaplen=2048, media_snaplen=64, dedup=True,
                              dedup_window_ms=LONG_WINDOW_MS)


def test_ipv6_and_vlan_tags_change_nothing(kernel: KernelHarness, hook: Hook) -> None:
    assert verdict(kernel, sip6(request("OPTIONS")), hook)[0] == Counter.DROPPED_METHOD
    tagged = ethernet(ipv4(udp(request("NOTIFY", 2), 5070, 5060)), vlans=(100, 200))
    assert verdict(kernel, tagged, hook)[0] == Counter.DROPPED_METHOD


def test_tcp_and_fragments_are_not_looked_at(kernel: KernelHarness, hook: Hook) -> None:
    """Neither holds a whole message: only user space frames one."""
    over_tcp = ethernet(ipv4(tcp(request("OPTIONS"), 40000, 5060), proto=TCP))
    assert verdict(kernel, over_tcp, hook)[0] == Counter.MATCHED_SIP_PORT
    first_fragment = ethernet(ipv4(udp(request("OPTIONS", 3), 5070, 5060)[:200], frag=0x2000))
    assert verdict(kernel, first_fragment, hook)[0] == Counter.MATCHED_FRAGMENT


def test_the_list_changes_while_loaded(kernel: KernelHarness, hook: Hook) -> None:
    kernel.maps.change_drop_methods(remove=["OPTIONS"], add=["INFO"])
    assert verdict(kernel, sip(request("OPTIONS", 4)), hook)[0] == Counter.MATCHED_SIP_PORT
    assert verdict(kernel, sip(request("INFO", 4)), hook)[0] == Counter.DROPPED_METHOD
    kernel.maps.change_drop_methods(remove=["INFO", "NOTIFY", "100"])
    assert kernel.maps.drop_methods() == []
    assert verdict(kernel, sip(request("INFO", 5)), hook)[0] == Counter.MATCHED_SIP_PORT


# ---- duplicates --------------------------------------------------------------------------------------

def test_the_same_packet_one_hop_later_is_a_duplicate(kernel: KernelHarness, hook: Hook) -> None:
    original = sip(INVITE)
    assert verdict(kernel, original, hook)[0] == Counter.MATCHED_SIP_PORT
    copy = next_hop(original, vlans=(42,))  # TTL - 1, checksum recomputed, other MACs, a VLAN tag
    assert copy[14 + 4 + 8] == 63 and copy[14 + 4 + 10:14 + 4 + 12] != original[14 + 10:14 + 12]
    ended, run = verdict(kernel, copy, hook)
    assert (ended, run.events) == (Counter.DUPLICATE, [])
    assert verdict(kernel, next_hop(copy, vlans=(1, 2)), hook)[0] == Counter.DUPLICATE  # two hops, QinQ


def test_ipv6_one_hop_later_is_a_duplicate(kernel: KernelHarness, hook: Hook) -> None:
    original = sip6(OK_200, flow_label=0x12345)
    assert verdict(kernel, original, hook)[0] == Counter.MATCHED_SIP_PORT
    assert verdict(kernel, next_hop(original), hook)[0] == Counter.DUPLICATE
    remarked = sip6(OK_200, flow_label=0x12345, hop_limit=9, traffic_class=0xB8)  # DSCP EF
    assert verdict(kernel, remarked, hook)[0] == Counter.DUPLICATE


def test_what_copies_do_not_share_tells_packets_apart(kernel: KernelHarness, hook: Hook) -> None:
    assert verdict(kernel, sip(INVITE), hook)[0] == Counter.MATCHED_SIP_PORT
    # changed at each hop, so not the packet's identity
    assert verdict(kernel, sip(INVITE, tos=0x10, ttl=3), hook)[0] == Counter.DUPLICATE
    others = {
        "another IP id": sip(INVITE, ident=2),
        "another source port": sip(INVITE, sport=5071),
        "a byte changed within the first 128": sip(INVITE.replace(b"bob@", b"bib@", 1)),
        "another length": sip(INVITE + b"\r\n"),
        "other addresses": with_checksum(ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.9",
                                                       dst="10.1.0.2"))),
    }
    for name, frame in others.items():
        assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT, name
    # Past the payload prefix the identity does not look: a change there is not told apart.
    assert INVITE.index(b"tag=1928301774") > 128
    assert verdict(kernel, sip(INVITE.replace(b"tag=1928301774", b"tag=1928301775")), hook)[0] == \
        Counter.DUPLICATE


def test_ipv6_flow_labels_tell_packets_apart(kernel: KernelHarness, hook: Hook) -> None:
    assert verdict(kernel, sip6(INVITE, flow_label=1), hook)[0] == Counter.MATCHED_SIP_PORT
    assert verdict(kernel, sip6(INVITE, flow_label=2), hook)[0] == Counter.MATCHED_SIP_PORT


def test_fragments_are_told_apart_by_their_offset(kernel: KernelHarness, hook: Hook) -> None:
    datagram = udp(INVITE, 5070, 5060)
    first = ethernet(ipv4(datagram[:256], frag=0x2000, ident=77))
    second = ethernet(ipv4(datagram[256:512], frag=0x2000 | 32, ident=77))
    last = ethernet(ipv4(datagram[512:], frag=64, ident=77))
    for fragment in (first, second, last):
        assert verdict(kernel, fragment, hook)[0] == Counter.MATCHED_FRAGMENT
    for fragment in (first, second, last):
        assert verdict(kernel, next_hop(fragment), hook)[0] == Counter.DUPLICATE
    v6 = ethernet(ipv6_chain(ipv6_fragment(UDP, 400, True, 9) + b"x" * 64, FRAGMENT), ethertype=V6)
    v6_next = ethernet(ipv6_chain(ipv6_fragment(UDP, 464, False, 9) + b"x" * 64, FRAGMENT), ethertype=V6)
    assert verdict(kernel, v6, hook)[0] == Counter.MATCHED_FRAGMENT
    assert verdict(kernel, v6_next, hook)[0] == Counter.MATCHED_FRAGMENT
    assert verdict(kernel, next_hop(v6_next), hook)[0] == Counter.DUPLICATE


def test_tcp_segments_are_told_apart_by_their_sequence(kernel: KernelHarness, hook: Hook) -> None:
    segment = ethernet(ipv4(tcp(INVITE[:300], 40000, 5060, seq=1000), proto=TCP))
    assert verdict(kernel, segment, hook)[0] == Counter.MATCHED_SIP_PORT
    assert verdict(kernel, next_hop(segment), hook)[0] == Counter.DUPLICATE
    later = ethernet(ipv4(tcp(INVITE[:300], 40000, 5060, seq=1300), proto=TCP))
    assert verdict(kernel, later, hook)[0] == Counter.MATCHED_SIP_PORT


def test_a_copy_after_the_window_goes_up(kernel: KernelHarness, hook: Hook) -> None:
    """A SIP retransmission (500 ms after the original at the soonest) is not a duplicate."""
    kernel.maps.set_dedup(True, 1)
    frame = sip(request("INFO", 9))
    assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT
    time.sleep(0.02)  # 20 times the window: not a timing test, the copy is surely late
    assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT
    kernel.maps.set_dedup(True, LONG_WINDOW_MS)  # the window counts from the latest first sighting
    assert verdict(kernel, frame, hook)[0] == Counter.DUPLICATE


def test_off_every_copy_goes_up(kernel: KernelHarness, hook: Hook) -> None:
    kernel.maps.set_dedup(False, LONG_WINDOW_MS)
    frame = sip(INVITE)
    for _ in range(3):
        assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT


def test_a_dropped_method_is_counted_as_dropped_not_as_a_duplicate(kernel: KernelHarness, hook: Hook) -> None:
    frame = sip(request("OPTIONS", 11))
    for _ in range(2):
        assert verdict(kernel, frame, hook)[0] == Counter.DROPPED_METHOD


# ---- RTP measured in the kernel ------------------------------------------------------------------------

RTP_SRC, RTP_DST, RTP_SPORT, RTP_DPORT, WORKER, SSRC = "10.9.1.1", "10.9.1.2", 31000, 41000, 1, 0x4321


def rtp_frame(seq: int, ident: int) -> bytes:
    payload = rtp(seq, seq * 160, SSRC, 0, b"\xd5" * 160)
    return with_checksum(ethernet(ipv4(udp(payload, RTP_SPORT, RTP_DPORT), src=RTP_SRC, dst=RTP_DST,
                                       ident=ident)))


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
def test_a_copied_rtp_packet_never_counts_as_its_streams_duplicate(kernel: KernelHarness, hook: Hook,
                                                                   dedup: bool) -> None:
    """Duplicates are dropped before the statistics: with dedup on, a stream seen
    twice (both sides of a router) measures as once; off, each copy is a duplicate."""
    kernel.maps.set_dedup(dedup, LONG_WINDOW_MS)
    owner = 0xD000 + dedup + 2 * (hook is Hook.TC)
    endpoint = (ipaddress.ip_address(RTP_DST).packed, RTP_DPORT)
    kernel.maps.learn_flow(endpoint, Kind.RTP, WORKER, owner=owner)
    streams = KernelStreams(kernel.programs.bpf)
    key = stream_key(raw(RTP_SRC), RTP_SPORT, raw(RTP_DST), RTP_DPORT, SSRC, owner, WORKER)
    sent = 50
    try:
        ends: list[Counter] = []
        for seq in range(sent):
            frame = rtp_frame(seq, ident=seq)
            ends += [verdict(kernel, frame, hook)[0], verdict(kernel, next_hop(frame, vlans=(5,)), hook)[0]]
        (value,) = streams.read([key])
        assert value is not None
        measured = RtpStream((raw(RTP_SRC), RTP_SPORT, raw(RTP_DST), RTP_DPORT), SSRC, "c", {}, 0)
        apply_snapshot(measured, value)
        report = measured.report()
        if dedup:
            assert ends == [Counter.MATCHED_RTP, Counter.DUPLICATE] * sent
            assert (report["packets"], report["duplicates"]) == (sent, 0)
        else:
            assert ends == [Counter.MATCHED_RTP] * 2 * sent
            assert (report["packets"], report["duplicates"]) == (sent, sent)
    finally:
        streams.delete([key])
        kernel.maps.forget_flow(endpoint)


# ---- `otus-ebpf filter` on a running agent's maps ---------------------------------------------------------

def _live(kernel: KernelHarness, names: list[str]) -> LiveMaps:
    """The maps `otus-ebpf filter` would find, by name (the screens' only when they load)."""
    fds = {name: table(kernel.programs.bpf, name).map_fd for name in names}
    return LiveMaps({name: (fd, map_info_by_fd(fd)) for name, fd in fds.items()})


def test_otus_ebpf_filter_shows_and_changes_the_drop_list_and_dedup(kernel: KernelHarness) -> None:
    tries = [f"{which}_v{version}" for which in ("include", "exclude") for version in (4, 6)]
    live = _live(kernel, ["config", "sip_ports", "drop_methods", "dedup", *tries])
    state = live.filters()
    assert (sorted(state.drop_methods), state.dedup_window_ms) == (sorted(DROPPED), LONG_WINDOW_MS)
    assert "drop       100 NOTIFY OPTIONS" in state.lines() and "dedup      on, 10000 ms" in state.lines()
    live.change_drop_method("OPTIONS", add=False)
    live.change_drop_method("INFO", add=True)
    live.set_dedup(False)
    assert verdict(kernel, sip(request("INFO", 20)), Hook.XDP)[0] == Counter.DROPPED_METHOD
    assert verdict(kernel, sip(request("OPTIONS", 20)), Hook.XDP)[0] == Counter.MATCHED_SIP_PORT
    assert verdict(kernel, sip(request("OPTIONS", 20)), Hook.XDP)[0] == Counter.MATCHED_SIP_PORT
    for token in ("INFO", "NOTIFY", "100"):
        live.change_drop_method(token, add=False)
    live.set_dedup(True, 5)
    state = live.filters()
    assert (state.drop_methods, state.dedup_window_ms) == ((), 5)
    assert "drop       -" in state.lines()
    assert verdict(kernel, sip(request("NOTIFY", 21)), Hook.XDP)[0] == Counter.MATCHED_SIP_PORT
    for n in range(16):
        live.change_drop_method(f"M{n}", add=True)
    with pytest.raises(SetupError, match="full"):
        live.change_drop_method("ONE_MORE"[:3], add=True)
    for n in range(16):
        live.change_drop_method(f"M{n}", add=False)


# ---- the dedup table: direct-mapped, a slot taken over by the next digest ------------------------------

def _slots(kernel: KernelHarness) -> dict[int, tuple[int, int]]:
    """The dedup table's slots in use: index -> (digest, first sighting)."""
    return {k.value: (v.digest, v.first_ns) for k, v in table(kernel.programs.bpf, "dedup").items()
            if v.first_ns}


def test_a_copy_whose_slot_another_packet_took_goes_up_and_the_taking_is_counted(
        kernel: KernelHarness, hook: Hook) -> None:
    """Each digest has one slot; a packet whose digest lands in a slot held by
    another one still inside its window takes it (counted), and a later copy of
    the one it displaced is no longer recognised: it goes up, as without dedup."""
    frame = sip(request("INFO", 21))
    assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT
    ((index, (digest, _first)),) = _slots(kernel).items()
    dedup = table(kernel.programs.bpf, "dedup")
    slot = dedup[dedup.Key(index)]
    slot.digest, slot.first_ns = digest ^ 1, time.monotonic_ns()  # another packet, just now, same slot
    dedup[dedup.Key(index)] = slot
    ended, run = verdict(kernel, next_hop(frame), hook)
    assert ended == Counter.MATCHED_SIP_PORT and len(run.events) == 1
    assert run.moved.get(Counter.DEDUP_DISPLACED) == 1
    assert _slots(kernel)[index][0] == digest  # the copy holds the slot now: its own copies are duplicates
    ended, run = verdict(kernel, next_hop(next_hop(frame)), hook)
    assert ended == Counter.DUPLICATE and Counter.DEDUP_DISPLACED not in run.moved


def test_a_stale_slot_is_taken_without_counting(kernel: KernelHarness, hook: Hook) -> None:
    """A slot whose packet's window has passed is free: taking it displaces nothing."""
    frame = sip(request("INFO", 22))
    assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT
    ((index, (digest, _first)),) = _slots(kernel).items()
    dedup = table(kernel.programs.bpf, "dedup")
    slot = dedup[dedup.Key(index)]
    slot.digest, slot.first_ns = digest ^ 1, time.monotonic_ns() - (LONG_WINDOW_MS + 1000) * 1_000_000
    dedup[dedup.Key(index)] = slot
    ended, run = verdict(kernel, next_hop(frame), hook)
    assert ended == Counter.MATCHED_SIP_PORT and Counter.DEDUP_DISPLACED not in run.moved


def _udp_checksum(frame: bytes, value: int) -> bytes:
    """``frame`` (IPv4 UDP, no options) with its UDP checksum field set to ``value``."""
    at = 14 + 20 + 6
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2:]


def test_a_decoy_with_the_same_first_bytes_and_another_tail_does_not_hide_the_genuine_packet(
        kernel: KernelHarness, hook: Hook) -> None:
    """The L4 checksum stands for what lies past the digested prefix: a decoy sent
    first with another tail (and so another checksum) is another packet."""
    genuine = _udp_checksum(sip(INVITE), 0x1234)
    decoy = _udp_checksum(sip(INVITE.replace(b"tag=1928301774", b"tag=1928301775")), 0x4321)
    assert verdict(kernel, decoy, hook)[0] == Counter.MATCHED_SIP_PORT
    ended, run = verdict(kernel, genuine, hook)
    assert ended == Counter.MATCHED_SIP_PORT and len(run.events) == 1


def test_the_digest_is_keyed_by_the_seed_set_at_load(kernel: KernelHarness, hook: Hook) -> None:
    """The same packet under two seeds lands as two digests: a sender who cannot
    read the seed can neither forge a packet's digest nor aim at its slot."""
    frame = sip(request("INFO", 23))
    digests = []
    for seed in (1, 2):
        kernel.forget_seen()
        kernel.maps.seed_dedup(seed)
        assert verdict(kernel, frame, hook)[0] == Counter.MATCHED_SIP_PORT
        ((_index, (digest, _first)),) = _slots(kernel).items()
        digests.append(digest)
    assert digests[0] != digests[1]


# ---- a kernel that refuses the screens ------------------------------------------------------------------

@pytest.fixture
def screens_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """bcc's load_func raising for the screens, as a verifier rejection arrives."""
    bcc = import_bcc()
    real = bcc.BPF.load_func

    def refusing(self: Any, name: bytes, *args: Any, **kwargs: Any) -> Any:
        if name.endswith(b"_screen"):
            raise Exception(f"Failed to load BPF program {name!r}: Permission denied")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(bcc.BPF, "load_func", refusing)


@pytest.mark.usefixtures("screens_refused")
def test_without_the_screens_capture_goes_on_and_the_features_are_refused_in_one_line(
        logged: pytest.LogCaptureFixture) -> None:
    harness = KernelHarness(KernelSettings())
    try:
        assert "kernel refused the screen programs" in logged.text
        assert verdict(harness, sip(INVITE), Hook.XDP)[0] == Counter.MATCHED_SIP_PORT
        with pytest.raises(SetupError, match="dedup needs the screen programs"):
            harness.maps.set_dedup(True, 50)
        with pytest.raises(SetupError, match="the method drop list needs the screen programs"):
            harness.maps.change_drop_methods(add=["OPTIONS"])
        assert harness.maps.drop_methods() == []
        with pytest.raises(SetupError, match="dedup needs the screen programs"):
            _live(harness, ["config"]).set_dedup(True, 50)  # `otus-ebpf filter`: no screen, no dedup map
        ended, run = verdict(harness, sip(request("OPTIONS")), Hook.XDP)
        assert ended == Counter.MATCHED_SIP_PORT and len(run.events) == 1
    finally:
        harness.close()


@pytest.mark.usefixtures("screens_refused")
def test_asked_for_without_the_screens_the_load_fails_saying_why() -> None:
    with pytest.raises(SetupError, match=r"kernel refused the screen programs \(for --dedup"):
        KernelHarness(KernelSettings(dedup=True))
