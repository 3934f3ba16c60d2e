"""Live: a dialog mirrored inside each kind of tunnel (VXLAN, Geneve, GRE with
IPv4 and with Ethernet inside, ERSPAN II and III, IP-in-IP), each kind four
times: plain, with an inner 802.1Q tag (QinQ for VXLAN; the kinds that carry
Ethernet), with its INVITE in two inner IPv4 fragments, and with the tunnel
packet carrying its INVITE in two outer fragments (an underlay that
fragments). Crafted frames are
replayed onto the lab's veth towards the agent. Every SIP message inside is
recorded once, with its tunnel's kind and id, and the records say what
tshark's dissection of the same capture says (Call-ID, method or status, CSeq):
by the kernel programs and by the AF_PACKET capture alike."""

from __future__ import annotations

import signal
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import require_tool
from tests.support.agent import final_stats, read_records, start_agent
from tests.support.calls import LINKTYPE_ETHERNET, NANOSECOND_PCAP_MAGIC
from tests.support.frames import UDP, ethernet, ipv4, udp
from tests.support.lab import Lab, tcpreplay
from tests.support.sip_samples import SDP, sip_message
from tests.support.tshark import sip_messages
from tests.support.tunnels import (
    TEB,
    erspan2,
    erspan3,
    from_source,
    geneve,
    gre,
    ipip,
    underlay_fragments,
    vxlan,
)

PPS = 200
# A dialog's messages: start line, CSeq, and whether the caller sends it
DIALOG = (("INVITE sip:bob@10.1.0.2 SIP/2.0", "1 INVITE", True), ("SIP/2.0 100 Trying", "1 INVITE", False),
          ("SIP/2.0 180 Ringing", "1 INVITE", False), ("SIP/2.0 200 OK", "1 INVITE", False),
          ("ACK sip:bob@10.1.0.2 SIP/2.0", "1 ACK", True), ("BYE sip:bob@10.1.0.2 SIP/2.0", "2 BYE", True),
          ("SIP/2.0 200 OK", "2 BYE", False))
CALLER, CALLEE = "10.1.0.1", "10.1.0.2"
FIRST_FRAGMENT_BYTES = 256  # of the INVITE's UDP datagram: header, start line and some headers


def dialog(call_id: str, caller: str = CALLER, callee: str = CALLEE, fragmented: bool = False,
           ident: int = 1) -> list[bytes]:
    """The dialog's SIP datagrams as IP packets (UDP 5060 both ways), the INVITE with SDP;
    ``fragmented``: the INVITE in two IPv4 fragments of datagram ``ident``."""
    packets = []
    for start, cseq, from_caller in DIALOG:
        invite = cseq == "1 INVITE" and from_caller
        message = sip_message(start, [f"Via: SIP/2.0/UDP {caller}:5060;branch=z9hG4bK-{cseq.split()[0]}",
                                      f"From: <sip:alice@{caller}>;tag=a1", f"To: <sip:bob@{callee}>",
                                      f"Call-ID: {call_id}", f"CSeq: {cseq}", "Max-Forwards: 70",
                                      *(["Content-Type: application/sdp"] if invite else [])],
                              SDP if invite else b"")
        src, dst = (caller, callee) if from_caller else (callee, caller)
        datagram = udp(message, 5060, 5060)
        if invite and fragmented:
            head, tail = datagram[:FIRST_FRAGMENT_BYTES], datagram[FIRST_FRAGMENT_BYTES:]
            packets.append(ipv4(head, src=src, dst=dst, ident=ident, frag=0x2000))  # more fragments
            packets.append(ipv4(tail, proto=UDP, src=src, dst=dst, ident=ident,
                                frag=FIRST_FRAGMENT_BYTES // 8))
        else:
            packets.append(ipv4(datagram, src=src, dst=dst))
    return packets


# kind -> (how one inner IP packet goes into the tunnel, given the inner frame's 802.1Q tags;
#          the kind and id its records must carry)
Wrap = Callable[[bytes, tuple[int, ...]], bytes]
KINDS: dict[str, tuple[Wrap, tuple[str, int | None]]] = {
    "vxlan": (lambda ip, tags: vxlan(ethernet(ip, vlans=tags), vni=5001), ("vxlan", 5001)),
    "geneve": (lambda ip, tags: geneve(ethernet(ip, vlans=tags), vni=6001), ("geneve", 6001)),
    "gre-ipv4": (lambda ip, _tags: gre(ip, 0x0800, key=7001), ("gre", 7001)),
    "gre-ethernet": (lambda ip, tags: gre(ethernet(ip, vlans=tags), TEB, key=7002), ("gre", 7002)),
    "erspan2": (lambda ip, tags: erspan2(ethernet(ip, vlans=tags), session=101), ("erspan", 101)),
    "erspan3": (lambda ip, tags: erspan3(ethernet(ip, vlans=tags), session=102), ("erspan", 102)),
    "ipip": (lambda ip, _tags: ipip(ip), ("ipip", None)),
}
CARRIES_ETHERNET = {"vxlan", "geneve", "gre-ethernet", "erspan2", "erspan3"}


class Variant(NamedTuple):
    kind: str
    tags: tuple[int, ...] = ()  # the inner frame's 802.1Q tags
    fragmented: bool = False    # the INVITE in two inner fragments
    underlay: bool = False      # the tunnel packet carrying the INVITE in two outer fragments


def variants() -> dict[str, Variant]:
    """Call-ID's user part -> how its dialog is mirrored."""
    cases: dict[str, Variant] = {}
    for kind in KINDS:
        cases[kind] = Variant(kind)
        if kind in CARRIES_ETHERNET:
            cases[f"{kind}-tagged"] = Variant(kind, (100, 300) if kind == "vxlan" else (300,))
        cases[f"{kind}-fragmented"] = Variant(kind, fragmented=True)
        cases[f"{kind}-underlay"] = Variant(kind, underlay=True)
    return cases


VARIANTS = variants()


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """A nanosecond pcap, a millisecond between frames (tests.support.calls writes them so)."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", NANOSECOND_PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for n, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1, n * 1_000_000, len(frame), len(frame)) + frame)


def mirrored_frames() -> list[bytes]:
    frames = []
    for ident, (name, variant) in enumerate(VARIANTS.items(), start=100):
        wrap = KINDS[variant.kind][0]
        for n, packet in enumerate(dialog(f"{name}@mirror", fragmented=variant.fragmented, ident=ident)):
            frame = wrap(packet, variant.tags)
            frames += underlay_fragments(frame, ident=ident) if variant.underlay and n == 0 else [frame]
    return frames


def comparable(records: list[dict[str, Any]]) -> Counter[tuple[str, str, int, str]]:
    """tshark's fields of each SIP record: Call-ID, method or status code, CSeq."""
    return Counter((r["call_id"], r["method"] or str(r["status"]), r["cseq"], r["cseq_method"])
                   for r in records if r["kind"] == "sip")


@pytest.mark.parametrize("mode", ["xdp", "afpacket"])
def test_sip_in_every_tunnel_is_recorded_as_tshark_reads_it(lab: Lab, tmp_path: Path, mode: str) -> None:
    require_tool("tshark")
    require_tool("tcpreplay")
    pcap = tmp_path / "mirrored.pcap"
    write_pcap(pcap, mirrored_frames())
    tshark = Counter(sip_messages(pcap))
    assert sum(tshark.values()) == len(VARIANTS) * len(DIALOG), "tshark must read every message too"

    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log", ["--mode", mode])
    try:
        tcpreplay(lab, pcap, PPS)
        time.sleep(1.5)  # a stats line after the last packet
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    records = read_records(out)
    assert comparable(records) == tshark
    for record in (r for r in records if r["kind"] == "sip"):
        kind, tunnel_id = KINDS[VARIANTS[record["call_id"].split("@")[0]].kind][1]
        assert (record["encap"] or {}).get("kind") == kind and record["encap"]["id"] == tunnel_id, \
            (record["call_id"], record["method"], record["status"], record["encap"])
        assert record["encap"]["src"] == "192.0.2.1" and record["encap"]["dst"] == "192.0.2.2"
    stats = final_stats(agent)
    fragments = sum(v.fragmented for v in VARIANTS.values())  # each goes up opened
    underlay = sum(v.underlay for v in VARIANTS.values())  # opened by user space, once whole
    opened = len(VARIANTS) * len(DIALOG) + fragments - underlay
    assert stats["tunnels_reassembled"] == underlay, stats
    if mode == "xdp":
        assert stats["ingress_decapsulated"] == opened, stats
        assert stats["ingress_decap_bad"] == stats["ingress_decap_nested"] == 0, stats
    else:  # the Python walk counts as the kernel does
        assert stats["afpacket_decapsulated"] == opened, stats
        assert stats["afpacket_decap_bad"] == stats["afpacket_decap_nested"] == 0, stats


@pytest.mark.parametrize("mode", ["xdp", "afpacket"])
def test_the_address_filters_judge_a_tunnelled_dialog_by_its_inner_addresses(lab: Lab, tmp_path: Path,
                                                                             mode: str) -> None:
    """--exclude names a network inside the tunnels: its dialog is not recorded, whatever the
    mirror's outer addresses, by the kernel programs and by the AF_PACKET capture alike (whose
    socket filter lets every tunnel through); also when the underlay fragmented the tunnel
    packet carrying its INVITE (judged once user space has it whole). A tunnel from a host
    that is not the trusted mirror (--mirror) is not opened, and counted."""
    require_tool("tcpreplay")
    kept = [vxlan(ethernet(ip), vni=5001) for ip in dialog("kept@mirror")]
    excluded = [vxlan(ethernet(ip), vni=5001) for ip in dialog("excluded@mirror", "10.9.0.1", "10.9.0.2")]

    def in_fragmenting_gre(packets: list[bytes], ident: int) -> list[bytes]:  # the INVITE in two fragments
        return [*underlay_fragments(gre(packets[0], 0x0800, key=9), ident=ident),
                *(gre(packet, 0x0800, key=9) for packet in packets[1:])]
    kept += in_fragmenting_gre(dialog("kept-underlay@mirror"), 1)
    excluded += in_fragmenting_gre(dialog("excluded-underlay@mirror", "10.9.0.1", "10.9.0.2"), 2)
    # another host on the link sends a tunnel of its own: --mirror trusts only the mirror
    spoofed = [from_source(vxlan(ethernet(ip), vni=5001), "192.0.2.9") for ip in dialog("spoofed@mirror")]
    pcap = tmp_path / "mirrored.pcap"
    write_pcap(pcap, [frame for pair in zip(kept, excluded, strict=True) for frame in pair] + spoofed)
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--mode", mode, "--exclude", "10.9.0.0/24", "--mirror", "192.0.2.1/32"])
    try:
        tcpreplay(lab, pcap, PPS)
        time.sleep(1.5)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    call_ids = Counter(r["call_id"] for r in read_records(out) if r["kind"] == "sip")
    assert call_ids == {"kept@mirror": len(DIALOG), "kept-underlay@mirror": len(DIALOG)}, call_ids
    untrusted = final_stats(agent)["ingress_decap_untrusted" if mode == "xdp" else "afpacket_decap_untrusted"]
    assert untrusted == len(DIALOG)
