"""Issue 12, the control plane side: a task whose loop dies says it has failed,
every loop step has a failure boundary, outputs survive a full disk with every
record accounted for, the control socket answers everything and bounds its
connections, the live view draws hostile text as text, and a broken capture
file ends a replay with one line naming the offset."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from otus_ebpf.capture.replay import CaptureFileError, read_frames, run_replay
from otus_ebpf.capture.sampling import TaskSample
from otus_ebpf.cli import agent
from otus_ebpf.control.commands import Commands
from otus_ebpf.control.server import MAX_CONNECTIONS, ControlServer, request
from otus_ebpf.control.task import Task, TaskState
from otus_ebpf.errors import EXIT_RECORDS_LOST, EXIT_TASK_FAILED, SetupError
from otus_ebpf.outputs.fanout import Fallback, QueuedReporter
from otus_ebpf.outputs.wiring import FrameOutputs
from otus_ebpf.view.dashboard import Dashboard, printable
from tests.support.frames import ethernet, ipv4, raw, ring_record, udp
from tests.support.hostile import TRIGGERS
from tests.support.records import numbered_sip_records
from tests.support.sinks import ListSink
from tests.support.sip_samples import INVITE
from tests.unit.test_replay import written
from tests.unit.test_task import FakeCapture, FakeOpener, as_root, options, sip_frames  # noqa: F401
from userspace.records import Frame, Record
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.pcap import PcapFormat


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production behaviour: bugs are counted at the boundaries, not raised."""
    monkeypatch.delenv("OTUS_STRICT", raising=False)


class BrokenCapture(FakeCapture):
    """A capture whose ring cannot be read after its first batch."""

    def poll(self, timeout_ms: int) -> list[bytes]:
        if self.batches:
            return self.batches.pop(0)
        raise OSError(errno.EBADF, "ring gone")


class BrokenOpener(FakeOpener):
    def __call__(self, stack: contextlib.ExitStack, *args: Any) -> FakeCapture:
        capture = BrokenCapture(stack, args[3], self._batches, self._leftover)
        self.captures.append(capture)
        return capture


@pytest.mark.usefixtures("as_root", "lenient")
def test_a_task_whose_loop_dies_is_failed_not_running(tmp_path: Path,
                                                      logged: pytest.LogCaptureFixture) -> None:
    opener = BrokenOpener(batches=[sip_frames(3)])
    task = Task("t", options(tmp_path), opener)
    task.start()
    task.run()  # returns: the capture broke
    assert task.state is TaskState.FAILED
    assert task.failure == "OSError: [Errno 9] ring gone"
    (failed,) = [r for r in logged.records if "task t: FAILED: OSError" in r.getMessage()]
    assert failed.levelname == "ERROR" and failed.exc_info is not None, "said once, with its traceback"
    assert task.metrics_sample().state == "failed"
    (capture,) = opener.captures
    assert capture.closes == 1, "it released what it held (detach, drain, flush)"
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    task.stop()  # harmless afterwards
    assert task.state is TaskState.FAILED


@pytest.mark.usefixtures("as_root", "lenient")
def test_attach_exits_non_zero_when_its_task_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("otus_ebpf.control.task.open_capture", BrokenOpener(batches=[sip_frames(2)]))
    assert agent.run_attach(options(tmp_path)) == EXIT_TASK_FAILED


@pytest.mark.usefixtures("as_root")
def test_attach_stops_cleanly_on_sighup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an ssh hang-up ended attach without drain or flush."""
    monkeypatch.setattr("otus_ebpf.control.task.open_capture", FakeOpener(leftover=sip_frames(5)))
    before = signal.getsignal(signal.SIGHUP)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGHUP)).start()
    assert agent.run_attach(options(tmp_path)) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5, "drained and flushed"
    assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.usefixtures("as_root", "lenient")
@pytest.mark.parametrize("step", ["frames", "flow_learning", "output"])
def test_each_step_of_the_task_loop_has_a_boundary(step: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # INVITEs with SDP: each announces media, so every turn has flows to learn
    invites = [ring_record(ethernet(ipv4(udp(INVITE.replace(b"a84b4c76e66710", f"c{n}".encode())))))
               for n in range(2)]
    opener = FakeOpener(batches=[invites, invites])
    task = Task("t", options(tmp_path, pcap=str(tmp_path / "x.pcap")), opener)
    task.start()

    def broken(*_args: object) -> None:
        raise RuntimeError(f"injected into {step}")

    assert task.runner is not None
    if step == "frames":
        monkeypatch.setattr(FrameOutputs, "write", broken)
    elif step == "flow_learning":
        monkeypatch.setattr(opener.captures[0], "apply_flows", broken)
    else:
        monkeypatch.setattr(task.runner.reporters[0], "write", broken)
    for _ in range(3):
        task.poll_once()
    assert task.state is TaskState.RUNNING
    assert task.boundary.counts.get((step, "RuntimeError"), 0) >= 1
    internal = task.metrics_sample().counters["otus_internal_errors_total"]
    assert internal[(("stage", step), ("type", "RuntimeError"))] >= 1
    task.stop()


# -- outputs on a full disk --------------------------------------------------------------------


class FullDisk(ListSink):
    """A sink that takes ``room`` bytes, then says ENOSPC (after taking nothing of that write)."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes, /) -> int:
        if len(self.files[-1]) + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def lines_of(sink: ListSink) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sink.files for line in bytes(f).splitlines()]


def test_a_full_disk_under_output_and_fallback_loses_no_thread_and_no_count(
        logged: pytest.LogCaptureFixture) -> None:
    """Regression: the reporter thread died inside its except block (the fallback raised too),
    then the capture thread raised from the overflow path."""
    out, spare = FullDisk(room=40_000), FullDisk(room=30_000)  # ~100 and ~75 records of ~390 bytes
    fallback = Fallback(JsonLinesReporter(spare))
    reporter = QueuedReporter("jsonl", JsonLinesReporter(out), fallback, max_records=50)
    records = numbered_sip_records(400, calls=40)
    for n in range(0, 400, 10):
        reporter.write(records[n:n + 10])  # the capture thread: never raises, never blocks
    reporter.flush(5.0, time.monotonic)
    reporter.close()
    s = reporter.stats
    assert s.written + s.to_fallback + s.lost == 400
    in_output, in_fallback = lines_of(out), lines_of(spare)
    assert (len(in_output), len(in_fallback)) == (s.written, s.to_fallback)
    assert s.written > 0 and s.to_fallback > 0 and s.lost > 0
    cseqs = [r["cseq"] for r in in_output + in_fallback]
    assert len(cseqs) == len(set(cseqs)), "no record is in two places"
    assert any("No space" in line for line in logged.messages)
    assert s.failed + s.overflow == s.to_fallback + s.lost
    assert fallback.lost == s.lost and fallback.records == s.to_fallback


def test_a_file_write_the_disk_cannot_take_whole_is_undone(tmp_path: Path) -> None:
    from otus_ebpf.outputs.sinks import AppendFile  # noqa: PLC0415 - the class under test

    path = tmp_path / "f"
    file = AppendFile(path)
    file.write(b"first line\n")

    class Partial:
        calls = 0

    real_write = os.write

    def short_then_full(fd: int, data: Any) -> int:
        Partial.calls += 1
        if Partial.calls == 1:
            return real_write(fd, bytes(data[:5]))  # the disk took 5 bytes...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...and then nothing

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", short_then_full)
        with pytest.raises(OSError):
            file.write(b"second line\n")
    file.close()
    assert path.read_bytes() == b"first line\n", "no half line is left behind"


# -- the control socket ---------------------------------------------------------------------


@pytest.fixture
def control(tmp_path: Path) -> Any:
    def boom(_request: dict[str, Any], _origin: str) -> dict[str, Any]:
        raise KeyError("a bug in a handler")

    def slow(_request: dict[str, Any], _origin: str) -> dict[str, Any]:
        time.sleep(0.5)
        return {"slept": True}

    def crash(_request: dict[str, Any], _origin: str) -> dict[str, Any]:
        raise RuntimeError("not a request's fault")

    commands = Commands({"boom": boom, "slow": slow, "crash": crash, "ok": lambda _r, _o: {}})
    server = ControlServer(str(tmp_path / "c.sock"), commands.answer)
    yield server
    server.close()


def test_every_request_gets_an_answer_even_when_its_handler_has_a_bug(control: ControlServer) -> None:
    with pytest.raises(SetupError, match="a bug in a handler"):
        request(str(control.path), {"cmd": "boom"})
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(control.path))
        raw.sendall(b"\xff not json\n")
        answer = json.loads(raw.makefile().readline())
        assert answer == {"ok": False, "error": "a request is one line of JSON"}
    assert request(str(control.path), {"cmd": "ok"}) == {"ok": True}


def test_a_handler_that_crashes_is_answered_and_logged_as_an_error(control: ControlServer,
                                                                  logged: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SetupError, match="internal error: RuntimeError"):
        request(str(control.path), {"cmd": "crash"})
    assert logged.record_tuples == [("otus_ebpf.control.commands", logging.ERROR,
                                     "socket: 'crash' failed: RuntimeError: not a request's fault")]
    assert request(str(control.path), {"cmd": "ok"}) == {"ok": True}, "and the daemon goes on"


def test_an_idle_connection_is_closed_and_connections_are_bounded(control: ControlServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: idle connections held a thread each, for ever."""
    idle = [socket.socket(socket.AF_UNIX) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in idle:
            sock.connect(str(control.path))
        time.sleep(0.2)
        with pytest.raises(SetupError, match="busy"):
            request(str(control.path), {"cmd": "ok"})
        assert control.refused == 1
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # their threads end: the server serves again
        with contextlib.suppress(SetupError):
            assert request(str(control.path), {"cmd": "ok"}) == {"ok": True}
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_an_idle_connection_times_out(control: ControlServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("otus_ebpf.control.server._Connection.timeout", 0.2)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(control.path))
        sock.settimeout(5)
        assert sock.recv(100) == b"", "closed by the server after its timeout"


@pytest.mark.usefixtures("as_root")
def test_creating_a_task_from_an_invalid_file_is_answered(tmp_path: Path) -> None:
    """Regression: ConfigInvalid was not caught; the CLI died with JSONDecodeError."""
    from otus_ebpf.control.daemon import Daemon  # noqa: PLC0415

    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - name: a\n    interfaces: [lo]\n    workers: 0\n")
    daemon = Daemon(bad, FakeOpener())
    server = ControlServer(str(tmp_path / "c.sock"), daemon.commands.answer)
    try:
        with pytest.raises(SetupError, match=r"bad.yaml:4: tasks\[0\].workers: must be between 1 and 8"):
            request(str(server.path), {"cmd": "create", "config": str(bad), "task": "a"})
    finally:
        server.close()


# -- the live view ---------------------------------------------------------------------------


class HostileTask:
    name = "edge\x1b[31m"

    def metrics_sample(self) -> TaskSample:
        return TaskSample("running")

    def recent_rows(self) -> list[list[str]]:
        return [["12:00:00", "in", "10.0.0.1:5060", "10.0.0.2:5060", "INVITE", "[/]"],
                ["12:00:01", "in", "[bold]x", "10.0.0.2:5060", "BYE\x1b]0;owned\x07",
                 "esc\x1b]0;owned\x07\x1b[2J-call\u202e"]]


def test_hostile_text_is_drawn_as_text_with_controls_escaped() -> None:
    """Regression: a Call-ID of [/] raised MarkupError and froze the view; ESC reached the terminal."""
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    console.print(Dashboard(lambda: [HostileTask()]).render())
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[/]" in shown and "[bold]x" in shown
    assert "\x1b]0" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "esc\\x1b]0;owned\\x07\\x1b[2J-call\\u202e" in shown
    assert printable("a\tb\x7f") == "a\\tb\\x7f"


# -- replay of broken files ------------------------------------------------------------------


def test_a_short_enhanced_packet_block_is_a_one_line_error_naming_its_offset() -> None:
    """Regression: a short pcapng EPB raised struct.error."""
    good = written(PcapFormat.PCAPNG)
    short_epb = struct.pack("<II", 6, 16) + b"\0" * 4 + struct.pack("<I", 16)
    frames: list[object] = []
    with pytest.raises(CaptureFileError, match=f"at offset {len(good)}: enhanced packet block of 4 bytes"):
        for frame in read_frames(io.BytesIO(good + short_epb), "x"):
            frames.append(frame)
    assert len(frames) == 2, "what came before the broken block was read"


def test_a_timestamp_past_64_bits_of_nanoseconds_is_refused() -> None:
    """Regression: a 64-bit microsecond timestamp overflowed the event record (struct.error)."""
    data = bytearray(written(PcapFormat.PCAPNG))
    epb = data.index(struct.pack("<I", 6))  # the first enhanced packet block
    struct.pack_into("<II", data, epb + 12, 0xFFFFFFFF, 0xFFFFFFFF)  # timestamp high, low
    with pytest.raises(CaptureFileError, match="past the year 2262"):
        list(read_frames(io.BytesIO(bytes(data)), "x"))


@pytest.mark.parametrize("cut", [10, 20, 30])
def test_a_pcap_cut_short_says_where(cut: int) -> None:
    data = written(PcapFormat.PCAP)
    with pytest.raises(CaptureFileError, match="the file ends inside"):
        list(read_frames(io.BytesIO(data[:-cut]), "x"))


def test_a_broken_file_still_writes_what_came_before_it(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(written(PcapFormat.PCAPNG) + b"\x06\x00\x00\x00\xff\xff\xff\x7f")
    out = tmp_path / "out.jsonl"
    with pytest.raises(CaptureFileError):
        run_replay(capture, options(tmp_path, out=str(out)), None)
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["sip", "sip", "call"], "and the call in progress is summarised at the end"


def test_replay_exits_non_zero_when_an_output_lost_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             logged: pytest.LogCaptureFixture) -> None:
    capture = tmp_path / "c.pcapng"
    capture.write_bytes(written(PcapFormat.PCAPNG))

    def no_space(self: JsonLinesReporter, records: Sequence[Record]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JsonLinesReporter, "write", no_space)
    assert run_replay(capture, options(tmp_path), None) == EXIT_RECORDS_LOST
    assert logged.record_tuples[-1] == ("otus_ebpf.capture.replay", logging.WARNING,
                                        "records: 3 produced; jsonl written=0 to_fallback=0 lost=3")


def test_every_trigger_replays_without_an_internal_error(tmp_path: Path,
                                                         logged: pytest.LogCaptureFixture) -> None:
    from tests.support.frames import ethernet, ipv4, udp  # noqa: PLC0415
    from userspace.event import Direction  # noqa: PLC0415
    from userspace.reporters.pcap import PcapReporter  # noqa: PLC0415

    sink = ListSink()
    frames = [Frame(1_800_000_000_000_000_000 + n, ethernet(ipv4(udp(payload))), 0, "eth0", Direction.INGRESS)
              for n, payload in enumerate(TRIGGERS.values())]
    for frame in frames:
        frame.orig_len = len(frame.data)
    PcapReporter(sink).write_frames(frames)
    capture = tmp_path / "t.pcap"
    capture.write_bytes(bytes(sink.files[0]))
    assert run_replay(capture, options(tmp_path, out=str(tmp_path / "o.jsonl")), None) == 0
    assert "internal_errors=0" in logged.messages[-2]
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert kinds.count("sip") == len(TRIGGERS) - 1


# -- found by the adversarial review -----------------------------------------------------------


def test_rotating_a_file_deleted_by_hand_starts_a_fresh_one(tmp_path: Path) -> None:
    """A rotation whose rename failed left a closed descriptor number in use: the next file the
    process opened received the records."""
    from otus_ebpf.outputs.sinks import RotatingFile  # noqa: PLC0415

    sink = RotatingFile(tmp_path / "out.jsonl")
    (tmp_path / "out.jsonl").unlink()
    sink.rotate()
    with (tmp_path / "victim.bin").open("wb") as victim:
        sink.write(b'{"n": 1}\n')
        victim.write(b"")
    sink.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"n": 1}\n'
    assert (tmp_path / "victim.bin").read_bytes() == b""


def test_a_rotation_that_cannot_reopen_fails_writes_until_it_can(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from otus_ebpf.outputs import sinks as outputs  # noqa: PLC0415

    sink = outputs.RotatingFile(tmp_path / "out.jsonl")
    real = outputs.AppendFile

    def full(*_args: object) -> None:
        raise SetupError("cannot open output: No space left on device")

    monkeypatch.setattr(outputs, "AppendFile", full)
    with pytest.raises(OSError, match="No space left"):
        sink.rotate()
    with pytest.raises(OSError, match="No space left"):
        sink.write(b"x\n")
    monkeypatch.setattr(outputs, "AppendFile", real)
    sink.write(b"y\n")
    sink.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b"y\n"


def test_a_failed_fsync_leaves_the_records_written_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync per batch, a write that landed and an fsync that failed put the same records
    in the output and in the fallback."""
    from userspace.reporters.jsonl import FsyncPolicy  # noqa: PLC0415

    class FailingSync(ListSink):
        def sync(self) -> None:
            raise OSError(errno.EIO, "Input/output error")

    out, spare = FailingSync(), ListSink()
    reporter = JsonLinesReporter(out, fsync=FsyncPolicy.BATCH)
    queued = QueuedReporter("jsonl", reporter, Fallback(JsonLinesReporter(spare)))
    queued.write(numbered_sip_records(3, calls=1))
    queued.flush(5.0, time.monotonic)
    queued.close()
    assert (queued.stats.written, queued.stats.to_fallback) == (3, 0)
    assert len(lines_of(out)) == 3 and lines_of(spare) == []
    assert reporter.stats.sync_errors >= 1


def test_deeply_nested_json_is_answered(control: ControlServer) -> None:
    answer = control.answer(b"[" * 100_000 + b"\n")
    assert answer == {"ok": False, "error": "a request is one line of JSON"}


def test_a_request_trickling_in_is_cut_off_at_its_deadline(control: ControlServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("otus_ebpf.control.server._Connection.timeout", 0.5)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(control.path))
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(20):
                sock.sendall(b" ")  # a byte at a time, each within any per-read timeout
                time.sleep(0.1)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 3


def test_validate_refuses_a_fifo_instead_of_waiting_on_it(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from otus_ebpf.cli import main as cli  # noqa: PLC0415

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    assert cli.main(["validate", str(fifo)]) == 2
    assert capsys.readouterr().err.strip() == f"{fifo}: (file): not a regular file"


def test_at_the_global_stream_cap_new_streams_are_refused_and_live_ones_kept() -> None:
    """Evicting the oldest stream to make room thrashed under load (its next packet
    re-created it and evicted another: 2.9M evictions for 60,000 calls, and summaries
    without streams); first it had also emptied the new stream's call table."""
    from tests.support.hostile import rtp_packet  # noqa: PLC0415
    from userspace.media import MediaTracker  # noqa: PLC0415
    from userspace.records import NO_ORIGIN  # noqa: PLC0415

    tracker = MediaTracker(max_streams=2)
    for seq in range(3):
        for ssrc, call in ((1, "A"), (2, "B"), (3, "A")):
            flow = (raw("10.0.0.1"), 1, raw("10.0.0.2"), 2)
            tracker.rtp(flow, rtp_packet(seq, ssrc), seq, 172, call, {}, NO_ORIGIN)
    assert tracker.stats.streams_table_full == 3, "the third stream, each time it sent"
    assert [(s.ssrc, s.packets) for s in tracker.take_call("A")] == [(1, 3)]
    assert [(s.ssrc, s.call_id, s.packets) for s in tracker.streams.values()] == [(2, "B", 3)]


def test_the_stream_table_holds_two_streams_per_call_of_the_limit() -> None:
    from userspace.calls import CallLimits, CallTracker  # noqa: PLC0415

    assert CallTracker(CallLimits(max_calls=60_000)).media.max_streams == 120_000


def test_dispatch_keeps_conversations_on_their_workers_and_counts_what_a_dead_one_misses() -> None:
    from otus_ebpf.capture import supervisor  # noqa: PLC0415

    class Pipe:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, share: list[bytes]) -> None:
            self.sent += share

    capture = object.__new__(supervisor.Supervisor)
    pipes = [Pipe() for _ in range(3)]
    capture._workers = [supervisor._Worker(i, None, None, None, pipes[i]) for i in range(3)]  # type: ignore[arg-type]
    capture._round_robin, capture._next, capture.dispatch_dropped = False, 0, 0
    offset = supervisor._FLOW_HASH

    def event(flow_hash: int) -> bytes:
        return bytes(offset) + flow_hash.to_bytes(4, "little")

    capture._dispatch([event(h) for h in range(9)])
    before = [list(p.sent) for p in pipes]
    capture._workers[1].failed = "killed"
    capture._dispatch([event(h) for h in range(9)])
    assert [p.sent[len(b):] for p, b in zip(pipes, before, strict=True)] == [before[0], [], before[2]]
    assert capture.dispatch_dropped == 3


def test_a_dead_workers_counters_stay_in_the_totals_and_its_gauges_go() -> None:
    from otus_ebpf.capture.sampling import sample_to_json  # noqa: PLC0415
    from otus_ebpf.capture.supervisor import merge_samples  # noqa: PLC0415

    def payload(worker: int, records: int, dialogs: float, retired: bool = False) -> dict[str, Any]:
        sample = TaskSample("running")
        sample.count("otus_records_total", records)
        sample.gauge("otus_dialogs_active", dialogs)
        return {"sample": sample_to_json(sample), "worker": worker, "retired": retired,
                "figures": {"pipeline": {"events": records, "records": records}}}

    merged = merge_samples(TaskSample("running"), [payload(0, 100, 5, retired=True), payload(0, 7, 2),
                                                   payload(1, 50, 3)])
    assert merged.counters["otus_records_total"][()] == 157
    assert merged.gauges["otus_dialogs_active"][()] == 5
    assert merged.counters["otus_worker_records_total"][(("worker", "w0"),)] == 107
