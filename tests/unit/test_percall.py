"""One capture file per call: media and SIP of a call together, files
closed when the call ends, a bound on open files, safe names."""

from __future__ import annotations

from pathlib import Path

import dpkt

from otus_ebpf.outputs.percall import PerCallPcap, file_name
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.unit.test_sdp_calls import ANSWER, OFFER, message
from userspace.event import Direction, Kind
from userspace.pipeline import Pipeline
from userspace.records import Frame
from userspace.reporters.pcap import PcapFormat

RTP = bytes([0x80, 0]) + bytes(10) + b"x" * 20


def frame(call_id: str | None, n: int = 0) -> Frame:
    return Frame(1_000 + n, ethernet(ipv4(udp(b"x" * n))), 60 + n, "eth0", Direction.INGRESS, call_id)


def count(path: Path, file_format: PcapFormat) -> int:
    with path.open("rb") as f:
        if file_format is PcapFormat.PCAP:
            return len(list(dpkt.pcap.Reader(f)))
        return len(list(dpkt.pcapng.Reader(f)))


def test_media_frames_of_a_learned_flow_carry_their_call() -> None:
    pipeline = Pipeline({2: "eth0"}, 0)
    pipeline.keep_frames = True
    invite = message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER)
    ok = message("SIP/2.0 200 OK", "1 INVITE", ANSWER, to_tag=";tag=t")
    for data, src, dst in [(invite, "10.0.0.1", "10.0.0.2"), (ok, "10.0.0.2", "10.0.0.1")]:
        pipeline.process([ring_record(ethernet(ipv4(udp(data), src=src, dst=dst)))])
    pipeline.process([ring_record(ethernet(ipv4(udp(RTP, 1, 40000), dst="10.0.0.1")), kind=Kind.RTP),
                      ring_record(ethernet(ipv4(udp(RTP, 1, 41000), dst="10.0.0.1")), kind=Kind.RTP)])
    frames = pipeline.take_frames()
    assert [f.call_id for f in frames] == ["call-1", "call-1", "call-1", None]
    assert frames[0].interface == "eth0"


def test_each_call_gets_its_own_file_closed_when_the_call_ends(tmp_path: Path) -> None:
    writer = PerCallPcap(tmp_path, PcapFormat.PCAP)
    writer.write_frames([frame("a@x"), frame("b@x", 1), frame(None), frame("a@x", 2)])
    writer.calls_ended(["a@x"])
    writer.write_frames([frame("b@x", 3)])
    writer.close()
    assert count(tmp_path / file_name("a@x", PcapFormat.PCAP), PcapFormat.PCAP) == 2
    assert count(tmp_path / file_name("b@x", PcapFormat.PCAP), PcapFormat.PCAP) == 2
    assert (writer.stats.frames, writer.stats.without_call, writer.stats.files) == (4, 1, 2)


def test_a_file_closed_for_room_reopens_and_still_reads(tmp_path: Path) -> None:
    for file_format in PcapFormat:
        directory = tmp_path / file_format.value
        writer = PerCallPcap(directory, file_format, max_open=2)
        for n in range(3):
            writer.write_frames([frame(f"call-{c}", n) for c in range(3)])  # 3 calls, 2 open files
        writer.close()
        for c in range(3):
            assert count(directory / file_name(f"call-{c}", file_format), file_format) == 3, file_format


def test_file_names_are_safe_and_distinct() -> None:
    odd = ["../../etc/passwd", "a/b", "a_b", "x" * 500]
    names = [file_name(c, PcapFormat.PCAPNG) for c in odd]
    assert len(set(names)) == len(odd)
    assert all("/" not in n and len(n) < 120 and n.endswith(".pcapng") for n in names)
