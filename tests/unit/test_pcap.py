"""pcap output: nanosecond records, rotation with a header per file, read back by dpkt."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import dpkt
import pytest

from tests.conftest import require_tool
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sinks import ListSink
from tests.support.sip_samples import INVITE, OK_200
from tests.support.tshark import frame_fields
from userspace.event import Direction
from userspace.pipeline import Pipeline
from userspace.records import Frame
from userspace.reporters import Rotation
from userspace.reporters.pcap import NS, PcapFormat, PcapReporter, global_header

FRAMES = [Frame(1_795_810_653_123_456_789, ethernet(ipv4(udp(INVITE))), 600, "eth0", Direction.INGRESS),
          Frame(1_795_810_653_223_456_789, ethernet(ipv4(udp(OK_200))), 400, "eth1", Direction.EGRESS)]


def read_back(data: bytes) -> list[tuple[float, bytes]]:
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    assert reader.datalink() == dpkt.pcap.DLT_EN10MB
    return [(float(ts), bytes(buf)) for ts, buf in reader]


def test_frames_read_back_with_nanosecond_times() -> None:
    sink = ListSink()
    PcapReporter(sink).write_frames(FRAMES)
    packets = read_back(bytes(sink.files[0]))
    assert [buf for _ts, buf in packets] == [frame.data for frame in FRAMES]
    assert abs(packets[0][0] - 1_795_810_653.123456789) < 1e-6


def test_each_rotated_file_opens_on_its_own() -> None:
    sink = ListSink()
    one = len(global_header()) + 16 + len(FRAMES[0].data)
    reporter = PcapReporter(sink, Rotation(max_bytes=one + 100))
    for frame in FRAMES * 2:
        reporter.write_frames([frame])
    assert reporter.stats.rotations == 3
    assert [len(read_back(bytes(f))) for f in sink.files] == [1, 1, 1, 1]


def test_the_pipeline_keeps_frames_only_when_asked() -> None:
    pipeline = Pipeline({}, 10)
    pipeline.process([ring_record(FRAMES[0].data, ts_ns=5)])
    assert pipeline.take_frames() == []
    pipeline.keep_frames = True
    pipeline.process([ring_record(FRAMES[0].data, ts_ns=5)])
    (frame,) = pipeline.take_frames()
    assert (frame.ts_ns, frame.data, frame.orig_len, frame.direction) == \
        (15, FRAMES[0].data, len(FRAMES[0].data), Direction.INGRESS)
    assert frame.call_id == "a84b4c76e66710@pc33.atlanta.example.com", "tied to its call"


def test_pcapng_names_each_interface_once_per_file_and_flags_directions() -> None:
    sink = ListSink()
    reporter = PcapReporter(sink, file_format=PcapFormat.PCAPNG)
    reporter.write_frames(FRAMES)
    reporter.write_frames(FRAMES)
    data = bytes(sink.files[0])
    reader = dpkt.pcapng.Reader(io.BytesIO(data))
    packets = [(ts, bytes(buf)) for ts, buf in reader]
    assert [buf for _ts, buf in packets] == [f.data for f in FRAMES] * 2
    assert abs(packets[0][0] - 1_795_810_653.123456789) < 1e-6
    assert data.count(b"eth0") == 1 and data.count(b"eth1") == 1
    assert data.count(b"ingress") == 2 and data.count(b"egress") == 2


def test_a_rotated_pcapng_file_names_its_interfaces_again() -> None:
    sink = ListSink()
    reporter = PcapReporter(sink, Rotation(max_bytes=1200), file_format=PcapFormat.PCAPNG)
    for frame in FRAMES * 2:
        reporter.write_frames([frame])
    assert reporter.stats.rotations >= 1
    for f in sink.files:
        data = bytes(f)
        assert len(list(dpkt.pcapng.Reader(io.BytesIO(data)))) >= 1
        named = {name for name in (b"eth0", b"eth1") if name in data}
        assert named, "every file names the interfaces of its frames"


def test_a_frame_stamped_after_2106_is_counted_not_written_to_a_pcap() -> None:
    """Regression: a pcap record holds 32-bit seconds; such a frame raised struct.error."""
    late = Frame(5_000_000_000 * NS + 7, FRAMES[0].data, 600, "eth0", Direction.INGRESS)
    sink = ListSink()
    reporter = PcapReporter(sink)
    reporter.write_frames([late, FRAMES[1]])
    assert (reporter.stats.frames, reporter.stats.unwritable) == (1, 1)
    assert [buf for _ts, buf in read_back(bytes(sink.files[0]))] == [FRAMES[1].data]
    sink = ListSink()
    reporter = PcapReporter(sink, file_format=PcapFormat.PCAPNG)
    reporter.write_frames([late])
    (block,) = [b for b in blocks(bytes(sink.files[0])) if isinstance(b, dpkt.pcapng.EnhancedPacketBlockLE)]
    assert block.ts_high << 32 | block.ts_low == late.ts_ns, "pcapng times are 64-bit"
    assert reporter.stats.unwritable == 0


def blocks(data: bytes) -> list[Any]:
    """Every pcapng block, parsed by dpkt (its Reader keeps neither lengths nor options)."""
    kinds = {6: dpkt.pcapng.EnhancedPacketBlockLE, 1: dpkt.pcapng.InterfaceDescriptionBlockLE,
             0x0A0D0D0A: dpkt.pcapng.SectionHeaderBlockLE}
    found, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        found.append(kinds[kind](data[at:at + length]))
        at += length
    return found


CUT = Frame(1_795_810_653_323_456_789, FRAMES[0].data[:100], 1500, "eth0", Direction.EGRESS)  # at the snaplen


def test_a_frame_cut_at_the_snaplen_keeps_its_original_length_in_both_formats() -> None:
    """dpkt's writers and its EPB write the captured length as the original one."""
    sink = ListSink()
    PcapReporter(sink).write_frames([CUT])
    header = dpkt.pcap.LEPktHdr(bytes(sink.files[0])[24:40])
    assert (header.caplen, header.len, header.tv_usec) == (100, 1500, 323_456_789)
    sink = ListSink()
    PcapReporter(sink, file_format=PcapFormat.PCAPNG).write_frames([CUT])
    _section, idb, epb = blocks(bytes(sink.files[0]))
    assert (epb.caplen, epb.pkt_len, epb.pkt_data) == (100, 1500, CUT.data)
    assert [(o.code, o.data) for o in idb.opts] == [(2, b"eth0"), (9, b"\x09"), (0, b"")]
    assert [(o.code, o.data) for o in epb.opts] == [(2, b"\x02\0\0\0"), (1, b"egress"), (0, b"")]


@pytest.mark.parametrize("file_format", list(PcapFormat))
def test_tshark_reads_times_lengths_interfaces_and_directions(tmp_path: Path,
                                                              file_format: PcapFormat) -> None:
    require_tool("tshark")
    sink = ListSink()
    PcapReporter(sink, file_format=file_format).write_frames([*FRAMES, CUT])
    capture = tmp_path / f"frames.{file_format.value}"
    capture.write_bytes(bytes(sink.files[0]))
    fields = ["frame.time_epoch", "frame.len", "frame.cap_len", "frame.interface_name",
              "frame.packet_flags_direction", "frame.comment"]
    shown = frame_fields(capture, fields)
    assert [row[:3] for row in shown] == [["1795810653.123456789", "600", str(len(FRAMES[0].data))],
                                          ["1795810653.223456789", "400", str(len(FRAMES[1].data))],
                                          ["1795810653.323456789", "1500", "100"]]
    if file_format is PcapFormat.PCAPNG:
        assert [row[3:] for row in shown] == [["eth0", "0x00000001", "ingress"],
                                              ["eth1", "0x00000002", "egress"],
                                              ["eth0", "0x00000002", "egress"]]
