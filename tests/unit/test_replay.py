"""Reading capture files back: pcap (µs and ns), pcapng with interfaces,
directions and several sections, and a clear error for anything else."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import dpkt
import pytest

from otus_ebpf.capture.replay import CapturedFrame, _Replayer, read_frames, run_replay
from otus_ebpf.errors import SetupError
from otus_ebpf.options import AttachOptions
from tests.support.frames import ethernet, ipv4, udp
from tests.support.sinks import ListSink
from tests.support.trunk import call_messages, new_call
from tests.unit.test_pcap import FRAMES
from userspace.calls import CallLimits
from userspace.event import Direction
from userspace.records import CallSummary
from userspace.reporters.pcap import PcapFormat, PcapReporter

SECOND = 1_000_000_000


def written(file_format: PcapFormat, sections: int = 1) -> bytes:
    data = b""
    for _ in range(sections):  # each file starts a section: concatenated, they are several
        sink = ListSink()
        PcapReporter(sink, file_format=file_format).write_frames(FRAMES)
        data += bytes(sink.files[0])
    return data


def test_pcapng_keeps_interfaces_directions_and_nanoseconds_across_sections() -> None:
    frames = list(read_frames(io.BytesIO(written(PcapFormat.PCAPNG, sections=2)), "x"))
    assert [(f.interface, f.direction) for f in frames] == [("eth0", Direction.INGRESS),
                                                           ("eth1", Direction.EGRESS)] * 2
    assert [f.ts_ns for f in frames[:2]] == [f.ts_ns for f in FRAMES]
    assert [(f.data, f.orig_len) for f in frames[:2]] == [(f.data, f.orig_len) for f in FRAMES]


def test_nanosecond_pcap_and_microsecond_pcap() -> None:
    ns = list(read_frames(io.BytesIO(written(PcapFormat.PCAP)), "file"))
    assert [f.ts_ns for f in ns] == [f.ts_ns for f in FRAMES]
    assert {(f.interface, f.direction) for f in ns} == {("file", Direction.INGRESS)}
    buffer = io.BytesIO()
    writer = dpkt.pcap.Writer(buffer)  # classic microsecond pcap, as tcpdump writes it
    writer.writepkt(FRAMES[0].data, ts=1_795_810_653.123456)
    (frame,) = read_frames(io.BytesIO(buffer.getvalue()), "file")
    assert frame.ts_ns == 1_795_810_653_123_456_000 and frame.data == FRAMES[0].data


def test_anything_else_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="not a pcap or pcapng file"):
        list(read_frames(io.BytesIO(b"GIF89a......"), "x"))
    with pytest.raises(SetupError, match="cannot read"):
        run_replay(tmp_path / "missing.pcap", AttachOptions(("x",)), None)


def test_a_replay_writes_the_records_of_the_sip_frames(tmp_path: Path,
                                                       logged: pytest.LogCaptureFixture) -> None:
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(written(PcapFormat.PCAPNG))
    out = tmp_path / "out.jsonl"
    assert run_replay(capture, AttachOptions(("c",), out=str(out)), None) == 0
    lines = out.read_text().splitlines()
    assert '"direction":"egress"' in lines[1] and '"interface":"eth1"' in lines[1]
    assert '"end_cause":"capture-stopped"' in lines[2], "the call still going at the end, summarised"
    said = logged.messages
    assert said[-2] == f"replayed {capture}: 2 frames, 2 captured, 3 records, errors=0, internal_errors=0"
    assert said[-1] == "records: 3 produced; jsonl written=3 to_fallback=0 lost=0"


def test_speed_paces_by_capture_time(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(written(PcapFormat.PCAPNG))  # two frames 100 ms apart
    options = AttachOptions(("c",), out=str(tmp_path / "out.jsonl"))
    started = time.monotonic()
    run_replay(capture, options, 1.0)
    paced = time.monotonic() - started
    started = time.monotonic()
    run_replay(capture, options, None)
    fast = time.monotonic() - started
    assert paced >= 0.1 > fast - 0.05, (paced, fast)
    started = time.monotonic()
    run_replay(capture, options, 10.0)
    assert time.monotonic() - started < 0.1 + fast, "ten times faster than captured"


def test_the_expiry_clock_neither_goes_back_nor_follows_one_outlier() -> None:
    from otus_ebpf.capture.replay import JUMP_NS, ExpiryClock  # noqa: PLC0415

    clock = ExpiryClock()
    for ts in (100, 200, 150, 300):
        clock.see(ts)
    assert (clock.now, clock.stamped_back) == (300, 1)
    clock.see(300 + 365 * 86_400 * 10**9)  # one frame stamped a year ahead
    clock.see(400)
    assert (clock.now, clock.stamped_ahead) == (400, 1), "not believed: the next frame disagreed"
    gap = 400 + 2 * JUMP_NS  # a real gap in the capture: the frames after it agree
    clock.see(gap)
    clock.see(gap + 10)
    assert clock.now == gap + 10 and clock.stamped_ahead == 1


def _call_frames() -> list[CapturedFrame]:
    """Call 1 goes quiet after its ACK at 4 s (calls time out after 10 s here); another
    call's INVITE comes at 60 s, call 1's BYE at 61 s."""
    a, b = ("10.1.0.1", 5060), ("10.2.0.1", 5060)
    first = call_messages(new_call(1, random.Random(1), a), a, b)
    second = call_messages(new_call(2, random.Random(2), a), a, b)

    def frame(ts_s: int, message: tuple[str, bytes]) -> CapturedFrame:
        src, dst = (a, b) if message[0] == "a->b" else (b, a)
        data = ethernet(ipv4(udp(message[1], src[1], dst[1]), src=src[0], dst=dst[0]))
        return CapturedFrame(ts_s * SECOND, data, len(data), "x", Direction.INGRESS)

    return [*(frame(t, m) for t, m in zip(range(5), first[:5], strict=True)), frame(60, second[0]),
            frame(61, first[5])]


def test_a_call_times_out_at_the_frame_it_would_live_however_frames_are_batched() -> None:
    """Regression: a run of SIP frames went through the pipeline together and calls were
    expired only after it, so call 1's BYE (in the same run) ended it as a 'bye'."""
    options = AttachOptions(("x",), calls=CallLimits(ttl_s=10))

    def replayed(batches: list[list[CapturedFrame]]) -> list[tuple[str, str]]:
        replayer = _Replayer(options, False)
        records = [r for batch in batches for r in replayer.process(batch)] + replayer.pipeline.finish()
        return [(r.kind, r.end_cause if isinstance(r, CallSummary) else "") for r in records]

    frames = _call_frames()
    one_batch, frame_by_frame = replayed([frames]), replayed([[f] for f in frames])
    assert one_batch == frame_by_frame
    assert one_batch[-3:] == [("call", "timeout"), ("sip", ""), ("call", "capture-stopped")], \
        "call 1 timed out when the other call's INVITE came, before its BYE"
