"""pcap output: nanosecond records, rotation with a header per file, read back by dpkt."""

from __future__ import annotations

import io

import dpkt

from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sinks import ListSink
from tests.support.sip_samples import INVITE, OK_200
from userspace.pipeline import Pipeline
from userspace.reporters import Rotation
from userspace.reporters.pcap import PcapReporter, global_header

FRAMES = [(1_795_810_653_123_456_789, ethernet(ipv4(udp(INVITE))), 600),
          (1_795_810_653_223_456_789, ethernet(ipv4(udp(OK_200))), 400)]


def read_back(data: bytes) -> list[tuple[float, bytes]]:
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    assert reader.datalink() == dpkt.pcap.DLT_EN10MB
    return [(float(ts), bytes(buf)) for ts, buf in reader]


def test_frames_read_back_with_nanosecond_times() -> None:
    sink = ListSink()
    PcapReporter(sink).write_frames(FRAMES)
    packets = read_back(bytes(sink.files[0]))
    assert [buf for _ts, buf in packets] == [frame for _t, frame, _l in FRAMES]
    assert abs(packets[0][0] - 1_795_810_653.123456789) < 1e-6


def test_each_rotated_file_opens_on_its_own() -> None:
    sink = ListSink()
    one = len(global_header()) + 16 + len(FRAMES[0][1])
    reporter = PcapReporter(sink, Rotation(max_bytes=one + 100))
    for frame in FRAMES * 2:
        reporter.write_frames([frame])
    assert reporter.stats.rotations == 3
    assert [len(read_back(bytes(f))) for f in sink.files] == [1, 1, 1, 1]


def test_the_pipeline_keeps_frames_only_when_asked() -> None:
    pipeline = Pipeline({}, 10)
    pipeline.process([ring_record(FRAMES[0][1], ts_ns=5)])
    assert pipeline.take_frames() == []
    pipeline.keep_frames = True
    pipeline.process([ring_record(FRAMES[0][1], ts_ns=5)])
    assert pipeline.take_frames() == [(15, FRAMES[0][1], len(FRAMES[0][1]))]
    assert pipeline.take_frames() == []
