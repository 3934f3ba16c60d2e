"""pcap output: nanosecond records, rotation with a header per file, read back by dpkt."""

from __future__ import annotations

import io

import dpkt

from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sinks import ListSink
from tests.support.sip_samples import INVITE, OK_200
from userspace.event import Direction
from userspace.pipeline import Pipeline
from userspace.records import Frame
from userspace.reporters import Rotation
from userspace.reporters.pcap import PcapFormat, PcapReporter, global_header

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
