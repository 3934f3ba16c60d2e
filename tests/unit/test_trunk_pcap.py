"""The trunk load generator (tests/support/trunk.py): its pcaps, read back with
dpkt, carry exactly its SIP messages, over valid IPv4 fragments and a valid
TCP stream, and every call is a complete, well-formed dialog."""

from __future__ import annotations

import re
import socket
import struct
from collections import Counter, defaultdict
from pathlib import Path

import dpkt
from dpkt.tcp import TH_ACK, TH_FIN, TH_PUSH, TH_SYN

from tests.support.trunk import MAC_A, MAC_B, trunk_messages, write_tcp_pcap, write_udp_pcap

A_IP, B_IP = "10.77.0.1", "10.77.0.2"
ETH = 14
CALL_FLOW = [("a->b", "INVITE"), ("b->a", "100 1 INVITE"), ("b->a", "180 1 INVITE"), ("b->a", "200 1 INVITE"),
             ("a->b", "ACK"), ("a->b", "BYE"), ("b->a", "200 2 BYE")]


def frames(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    magic, _, _, _, _, snaplen, linktype = struct.unpack("<IHHiIII", raw[:24])
    assert (magic, snaplen, linktype) == (0xA1B2C3D4, 65535, 1)
    with path.open("rb") as f:
        packets = list(dpkt.pcap.Reader(f))
    times = [ts for ts, _ in packets]
    assert times == sorted(times) and len(set(times)) == len(times)
    return [bytes(buf) for _, buf in packets]


def direction(frame: bytes) -> str:
    """a->b or b->a, from the IP addresses, checked against the MAC addresses."""
    eth = dpkt.ethernet.Ethernet(frame)
    ends = (socket.inet_ntoa(eth.data.src), socket.inet_ntoa(eth.data.dst), eth.src, eth.dst)
    assert ends in ((A_IP, B_IP, MAC_A, MAC_B), (B_IP, A_IP, MAC_B, MAC_A))
    return "a->b" if ends[0] == A_IP else "b->a"


def ip_header_ok(frame: bytes) -> bool:
    """The ones' complement sum over a valid header is 0xffff (RFC 1071), and
    dpkt recomputes the same checksum from a zeroed field."""
    header = frame[ETH:ETH + (frame[ETH] & 0xF) * 4]
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    ip = dpkt.ethernet.Ethernet(frame).data
    stored, ip.sum = ip.sum, 0
    return total == 0xFFFF and bool(dpkt.ip.IP(bytes(ip)).sum == stored)


def sip_fields(message: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, body = message.split(b"\r\n\r\n", 1)
    assert b"\n" not in head.replace(b"\r\n", b""), "a line not ended by CRLF"
    start, *lines = head.decode().split("\r\n")
    return start, [(name, value.strip()) for name, value in (line.split(":", 1) for line in lines)], body


def header(message: bytes, name: str) -> str:
    values = [value for key, value in sip_fields(message)[1] if key == name]
    assert len(values) == 1, (name, values)
    return values[0]


def kind(message: bytes) -> str:
    """INVITE, ACK, BYE, or status and CSeq for a response."""
    start = sip_fields(message)[0]
    if start.startswith("SIP/2.0 "):
        return f"{start.split()[1]} {header(message, 'CSeq')}"
    return start.split()[0]


def test_udp_fragments_reassemble_to_the_messages(tmp_path: Path) -> None:
    calls, pad, mtu = 30, 1600, 1500
    path = tmp_path / "udp.pcap"
    written = write_udp_pcap(path, calls, seed=7, pad_invite=pad, mtu=mtu, concurrent=10)
    expected = trunk_messages(calls, seed=7, pad_invite=pad, concurrent=10)

    datagrams: list[tuple[str, bytes]] = []
    fragment_counts: list[int] = []
    ids: list[int] = []
    partial: bytes | None = None
    for frame in frames(path):
        assert len(frame) <= ETH + mtu and ip_header_ok(frame)
        ip = dpkt.ethernet.Ethernet(frame).data
        data = frame[ETH + ip.hl * 4:ETH + ip.len]
        assert len(frame) == ETH + ip.len and ip.p == dpkt.ip.IP_PROTO_UDP
        if partial is None:      # a first fragment or a whole datagram: a new ID, the UDP header first
            assert ip.offset == 0 and ip.id not in ids
            partial = b""
            ids.append(ip.id)
            fragment_counts.append(0)
        assert ip.id == ids[-1] and ip.offset * 8 == len(partial)
        if ip.mf:
            assert len(data) % 8 == 0
        partial += data
        fragment_counts[-1] += 1
        if not ip.mf:
            sport, dport, length, udp_sum = struct.unpack("!HHHH", partial[:8])
            assert (sport, dport, length, udp_sum) == (5060, 5060, len(partial), 0)
            datagrams.append((direction(frame), partial[8:]))
            partial = None

    assert partial is None
    assert written == len(datagrams) == calls * 7
    assert datagrams == expected
    # Only the padded INVITEs exceed the MTU, and each of them is fragmented.
    assert [count > 1 for count in fragment_counts] == [kind(m) == "INVITE" for _, m in expected]


def test_tcp_stream_carries_the_messages_in_each_direction(tmp_path: Path) -> None:
    calls, mss = 20, 500
    path = tmp_path / "tcp.pcap"
    written = write_tcp_pcap(path, calls, seed=3, mss=mss, pad_invite=800, concurrent=8)
    expected = trunk_messages(calls, seed=3, pad_invite=800, concurrent=8, a=(A_IP, 40000), transport="TCP")
    segments = []
    for frame in frames(path):
        assert ip_header_ok(frame)
        ip = dpkt.ethernet.Ethernet(frame).data
        stored, ip.sum, ip.data.sum = ip.data.sum, 0, 0   # zeroed, dpkt recomputes both on packing
        assert dpkt.ip.IP(bytes(ip)).data.sum == stored, "TCP checksum"
        tcp = dpkt.ethernet.Ethernet(frame).data.data
        ports = (tcp.sport, tcp.dport)
        assert ports == ((40000, 5060) if direction(frame) == "a->b" else (5060, 40000))
        segments.append((direction(frame), tcp))

    syn, syn_ack, ack = (tcp for _, tcp in segments[:3])
    assert [tcp.flags for _, tcp in segments[:3]] == [TH_SYN, TH_SYN | TH_ACK, TH_ACK]
    assert (syn_ack.ack, ack.seq, ack.ack) == (syn.seq + 1, syn.seq + 1, syn_ack.seq + 1)
    assert [(d, tcp.flags) for d, tcp in segments[-3:]] == [
        ("a->b", TH_FIN | TH_ACK), ("b->a", TH_FIN | TH_ACK), ("a->b", TH_ACK)]

    next_seq = {"a->b": syn.seq + 1, "b->a": syn_ack.seq + 1}
    other = {"a->b": "b->a", "b->a": "a->b"}
    stream: dict[str, bytes] = defaultdict(bytes)
    pushed: dict[str, list[bytes]] = defaultdict(list)
    for d, tcp in segments[2:]:
        assert tcp.seq == next_seq[d] and tcp.ack == next_seq[other[d]]
        assert len(tcp.data) <= mss
        stream[d] += tcp.data
        next_seq[d] += len(tcp.data) + bool(tcp.flags & TH_FIN)
        if tcp.flags & TH_PUSH:
            pushed[d].append(stream[d][sum(map(len, pushed[d])):])
    assert segments[-1][1].ack == next_seq["b->a"]

    assert written == len(expected) == calls * 7
    for d in ("a->b", "b->a"):
        sent = [m for md, m in expected if md == d]
        assert stream[d] == b"".join(sent)
        assert pushed[d] == sent, "PSH marks the end of each message"
    assert max(len(m) for _, m in expected) > 2 * mss, "some message spans several segments"


def test_every_call_is_a_complete_well_formed_dialog() -> None:
    calls, pad = 150, 400
    messages = trunk_messages(calls, seed=11, pad_invite=pad, concurrent=40)
    by_call: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for d, message in messages:
        assert int(header(message, "Content-Length")) == len(sip_fields(message)[2])
        assert header(message, "User-Agent")
        by_call[header(message, "Call-ID")].append((d, message))

    assert len(by_call) == calls
    assert all(re.fullmatch(rf"trunk-\d+-[0-9a-f]+@{A_IP}", call_id) for call_id in by_call)
    branches: Counter[str] = Counter()
    offer_ports, answer_ports = set(), set()
    for dialog in by_call.values():
        assert [(d, kind(m)) for d, m in dialog] == CALL_FLOW
        invite, trying, ringing, ok, ack, bye, bye_ok = (m for _, m in dialog)
        to_tags = [re.search(r";tag=(\S+)", header(m, "To")) for m in (ringing, ok, ack, bye, bye_ok)]
        assert ";tag=" not in header(invite, "To") and ";tag=" not in header(trying, "To")
        assert len({tag.group(1) for tag in to_tags if tag}) == 1 and all(to_tags)
        for request, responses in ((invite, (trying, ringing, ok)), (bye, (bye_ok,))):
            assert all(header(r, "Via") == header(request, "Via") for r in responses)
        branches.update(re.findall(r"branch=(\S+)", header(m, "Via"))[0] for m in (invite, ack, bye))
        assert all(header(m, "Max-Forwards") == "70" for m in (invite, ack, bye))
        offer, answer = sip_fields(invite)[2].decode(), sip_fields(ok)[2].decode()
        assert f"c=IN IP4 {A_IP}\r\n" in offer and f"c=IN IP4 {B_IP}\r\n" in answer
        offer_ports.add(re.findall(r"m=audio (\d+)", offer)[0])
        answer_ports.add(re.findall(r"m=audio (\d+)", answer)[0])
        names = [name for name, _ in sip_fields(invite)[1]]
        assert names.index("X-Pad") > names.index("Call-ID")
    assert len(branches) == 3 * calls and set(branches.values()) == {1}, "one branch per transaction"
    assert len(offer_ports) == len(answer_ports) == calls

    unpadded = trunk_messages(calls, seed=11, concurrent=40)
    assert [len(m) - len(u) for (_, m), (_, u) in zip(messages, unpadded, strict=True)] \
        == [pad if kind(m) == "INVITE" else 0 for _, m in messages]


def test_at_most_the_window_of_calls_is_live() -> None:
    for calls, concurrent in ((300, 50), (12, 1), (5, 100)):
        live: set[str] = set()
        peak = 0
        for _, message in trunk_messages(calls, seed=2, concurrent=concurrent):
            live.add(header(message, "Call-ID"))
            peak = max(peak, len(live))
            if kind(message) == "200 2 BYE":
                live.remove(header(message, "Call-ID"))
        assert not live
        assert peak == min(calls, concurrent)


def test_output_depends_only_on_the_arguments(tmp_path: Path) -> None:
    files = [tmp_path / name for name in ("one.pcap", "two.pcap", "other-seed.pcap")]
    for path, seed in zip(files, (5, 5, 6), strict=True):
        write_udp_pcap(path, 40, seed=seed, pad_invite=1500)
    assert files[0].read_bytes() == files[1].read_bytes()
    assert files[0].read_bytes() != files[2].read_bytes()
    call_ids = [{header(m, "Call-ID") for _, m in trunk_messages(40, seed=seed)} for seed in (5, 6)]
    assert call_ids[0].isdisjoint(call_ids[1])
