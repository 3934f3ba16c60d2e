"""Reading capture files back: pcap (µs and ns), pcapng with interfaces,
directions and several sections, and a clear error for anything else."""

from __future__ import annotations

import io
import random
import struct
import threading
import time
from pathlib import Path

import dpkt
import pytest

from otus_ebpf.capture.replay import CapturedFrame, CaptureFileError, _Replayer, read_frames, run_replay
from otus_ebpf.cli.main import main
from otus_ebpf.errors import EXIT_SETUP_ERROR, SetupError
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


def test_speed_paces_by_capture_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pauses replay asks for, not the wall time it took (a loaded machine stretches
    that): two frames 100 ms apart are 100 ms apart at speed 1, 10 ms at 10, none as fast
    as possible."""
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(written(PcapFormat.PCAPNG))  # two frames 100 ms apart
    options = AttachOptions(("c",), out=str(tmp_path / "out.jsonl"))
    paused: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():  # replay's loop, not an output's thread
            paused.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    asked = {}
    for speed in (1.0, 10.0, None):
        paused.clear()
        run_replay(capture, options, speed)
        asked[speed] = sum(paused)
    # each pause is the time still to wait: less than the gap, by what the replay took
    assert 0.05 <= asked[1.0] <= 0.1 and asked[10.0] <= 0.01 and asked[None] == 0, asked


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


# -- hostile and unusual capture files --------------------------------------------------------
# Built here byte by byte (pcapng §4), not with the writer under test.

def _block(order: str, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = struct.pack(f"{order}I", len(body) + 12)
    return struct.pack(f"{order}I", block_type) + length + body + length


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(f"{order}HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _section(order: str = "<") -> bytes:
    return _block(order, 0x0A0D0D0A, struct.pack(f"{order}IHHq", 0x1A2B3C4D, 1, 0, -1))


def _interface(order: str = "<", name: bytes = b"eth7", *options: tuple[int, bytes]) -> bytes:
    body = struct.pack(f"{order}HHI", 1, 0, 65_535) + _option(order, 2, name)
    body += b"".join(_option(order, code, value) for code, value in options) + _option(order, 0, b"")
    return _block(order, 1, body)


def _packet(units: int, data: bytes = FRAMES[0].data, order: str = "<", interface: int = 0,
            options: bytes = b"") -> bytes:
    head = struct.pack(f"{order}IIIII", interface, units >> 32, units & 0xFFFFFFFF, len(data), len(data) + 4)
    return _block(order, 6, head + data + b"\0" * (-len(data) % 4) + options)


def test_a_short_enhanced_packet_block_is_one_line_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reviewer's first crash: the error must name the file, on one line, no traceback."""
    good = written(PcapFormat.PCAPNG)
    capture = tmp_path / "short.pcapng"
    capture.write_bytes(good + struct.pack("<II", 6, 16) + b"\0" * 4 + struct.pack("<I", 16))
    assert main(["replay", str(capture), "--out", str(tmp_path / "o.jsonl")]) == EXIT_SETUP_ERROR
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"otus-ebpf: error: {capture}: malformed capture file at offset "
                                    f"{len(good)}: enhanced packet block of 4 bytes")
    assert "Traceback" not in err


def test_if_tsresol_in_picoseconds_and_in_powers_of_two() -> None:
    """The reviewer's second: 64-bit times at a resolution other than µs or ns. Picoseconds
    (if_tsresol 12, a 64-bit count that needs if_tsoffset to reach this century) were read
    as nanoseconds; binary resolutions (2^-30 s) likewise."""
    offset_s = 1_795_810_000
    pico = (_section() + _interface("<", b"ps", (9, bytes([12])), (14, struct.pack("<q", offset_s)))
            + _packet(653_123_456_789_999))
    (frame,) = read_frames(io.BytesIO(pico), "x")
    assert (frame.ts_ns, frame.interface) == ((offset_s + 653) * SECOND + 123_456_789, "ps")
    binary = _section() + _interface("<", b"b30", (9, bytes([0x80 | 30])))
    (frame,) = read_frames(io.BytesIO(binary + _packet((1_795_810_653 << 30) + (1 << 29))), "x")
    assert frame.ts_ns == 1_795_810_653_500_000_000


def test_if_tsoffset_and_each_interface_its_own_resolution() -> None:
    nanoseconds_from_100_s = _interface("<", b"ns", (9, bytes([9])), (14, struct.pack("<q", 100)))
    data = (_section() + _interface("<", b"us") + nanoseconds_from_100_s
            + _packet(1_000_000, interface=0) + _packet(1_000_000, interface=1))
    assert [(f.interface, f.ts_ns) for f in read_frames(io.BytesIO(data), "x")] == \
        [("us", SECOND), ("ns", 100 * SECOND + 1_000_000)]


def test_a_big_endian_pcapng_with_an_outbound_frame() -> None:
    flags = _option(">", 2, struct.pack(">I", 0b10)) + _option(">", 0, b"")
    data = _section(">") + _interface(">") + _packet(5_000_000, order=">", options=flags)
    (frame,) = read_frames(io.BytesIO(data), "x")
    assert (frame.ts_ns, frame.direction, frame.data, frame.orig_len) == \
        (5 * SECOND, Direction.EGRESS, FRAMES[0].data, len(FRAMES[0].data) + 4)


def test_a_comment_that_is_not_utf8_is_read_past() -> None:
    """pcapng §3.5 wants UTF-8; dpkt's option class raises on anything else. A frame is not
    lost to its comment."""
    comment = _option("<", 1, b"\xff\xfe") + _option("<", 0, b"")
    data = _section() + _interface() + _packet(1_000_000, options=comment) + _packet(2_000_000)  # µs
    assert [f.ts_ns for f in read_frames(io.BytesIO(data), "x")] == [SECOND, 2 * SECOND]


def test_packets_of_an_interface_never_described_are_counted(tmp_path: Path,
                                                            logged: pytest.LogCaptureFixture) -> None:
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(_section() + _interface() + _packet(SECOND, interface=3) + _packet(SECOND))
    assert run_replay(capture, AttachOptions(("c",), out=str(tmp_path / "o.jsonl")), None) == 0
    said = logged.messages
    assert said[-2].startswith(f"replayed {capture}: 1 frames, 1 captured, ")
    assert said[-2].endswith(", skipped_packets=1")


def test_a_capture_stamped_after_2106_replays_into_both_pcap_formats(
        tmp_path: Path, logged: pytest.LogCaptureFixture) -> None:
    """Regression: a pcapng frame stamped past 32-bit seconds raised struct.error in the pcap output."""
    late = 5_000_000_000 * SECOND + 7  # the year 2128
    capture = tmp_path / "late.pcapng"
    capture.write_bytes(_section() + _interface("<", b"eth7", (9, bytes([9]))) + _packet(late))
    for file_format in PcapFormat:
        out, per_call = tmp_path / f"o.{file_format.value}", tmp_path / f"calls-{file_format.value}"
        options = AttachOptions(("late",), out=str(tmp_path / "o.jsonl"), pcap=str(out),
                                pcap_format=file_format, pcap_per_call=str(per_call))
        logged.clear()
        assert run_replay(capture, options, None) == 0
        said = logged.messages
        assert f'"ts_ns":{late}' in (tmp_path / "o.jsonl").read_text()
        written_frames = list(read_frames(io.BytesIO(out.read_bytes()), "o"))
        if file_format is PcapFormat.PCAP:
            assert written_frames == [] and said[-2].endswith(", frames_the_pcap_cannot_hold=2"), \
                "counted in the pcap and in the call's file"
        else:
            assert [f.ts_ns for f in written_frames] == [late] and "cannot_hold" not in said[-2]


def _mutated(data: bytes, rng: random.Random) -> bytes:
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(mutated))
        choice = rng.random()
        if choice < 0.5:
            mutated[at] = rng.randrange(256)
        elif choice < 0.8:
            word = rng.choice([0, 1, 7, 0xFFFFFFFF, 1 << 31, rng.getrandbits(32)])
            mutated[at:at + 4] = struct.pack("<I", word)
        else:
            del mutated[at:]
        if not mutated:
            break
    return bytes(mutated)


@pytest.mark.parametrize("file_format", list(PcapFormat))
def test_a_damaged_file_gives_frames_or_one_capture_file_error(file_format: PcapFormat) -> None:
    """A fuzzer over every byte of a real file: frames, then at most a SetupError, nothing else."""
    rng = random.Random(12)
    base = written(file_format, sections=2)
    outcomes = set()
    for _ in range(3000):
        try:
            frames = list(read_frames(io.BytesIO(_mutated(base, rng)), "x"))
            outcomes.add(f"{len(frames)} frames")
        except CaptureFileError:
            outcomes.add("broken")
        except SetupError:
            outcomes.add("refused")
    assert {"broken", "refused"} <= outcomes and len(outcomes) > 3, outcomes


def test_a_pcap_output_already_there_is_kept_aside_not_appended_to(tmp_path: Path) -> None:
    """Regression: a second run appended a second pcap file header mid-file, and the file
    no longer read back."""
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(written(PcapFormat.PCAPNG))
    out = tmp_path / "frames.pcap"
    for _run in range(2):
        options = AttachOptions(("c",), out=str(tmp_path / "o.jsonl"), pcap=str(out))
        assert run_replay(capture, options, None) == 0
    earlier = list(tmp_path.glob("frames-*.pcap"))
    assert len(earlier) == 1
    for path in (out, earlier[0]):
        frames = list(read_frames(io.BytesIO(path.read_bytes()), path.name))
        assert len(frames) == len(FRAMES), path


def test_replay_applies_the_address_filters_inside_and_outside_tunnels() -> None:
    """No socket filter judges a capture file's frames: the address filters do, on a
    tunnelled frame's inner addresses, counted as the kernel's FILTERED."""
    import ipaddress  # noqa: PLC0415

    from otus_ebpf.kernel.settings import KernelSettings  # noqa: PLC0415
    from tests.support.sip_samples import INVITE  # noqa: PLC0415
    from tests.support.tunnels import inner_sip, vxlan  # noqa: PLC0415

    kernel = KernelSettings(exclude=(ipaddress.ip_network("10.1.0.0/24"),))
    replayer = _Replayer(AttachOptions(("x",), kernel=kernel), False)
    frames = [ethernet(ipv4(udp(INVITE, 5070, 5060), src="10.1.0.1", dst="10.2.0.2")),
              vxlan(inner_sip(src="10.1.0.1", dst="10.2.0.2")),
              vxlan(inner_sip(src="10.3.0.1", dst="10.2.0.2"))]
    replayer.process([CapturedFrame(n * SECOND, f, len(f), "x", Direction.INGRESS)
                      for n, f in enumerate(frames, 1)])
    assert replayer.events == 1 and replayer.filtered == 2
