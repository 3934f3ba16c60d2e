"""The task lifecycle, named after what broke in the Go agent's control plane:
a failed start must release what it started, stop must happen once however
many ask, stopping must not lose what the reporters still hold, and the
signal handlers must come back. The kernel side is a stand-in here
(capture_opener); the real one is exercised by tests/integration."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otus_ebpf.capture.sources import CaptureMode, CaptureOptions, OnStop
from otus_ebpf.cli import agent
from otus_ebpf.control.task import Task, TaskStartError, TaskState
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.hep_transport import HepCollector, HepTransport
from otus_ebpf.outputs.kafka_producer import KafkaSettings
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.support.sip_samples import sip_message


def sip_frames(count: int) -> list[bytes]:
    def options_message(n: int) -> bytes:
        return sip_message("OPTIONS sip:x SIP/2.0", [
            f"Call-ID: c{n}", "From: <sip:a@x>;tag=1", "To: <sip:b@y>", f"CSeq: {n} OPTIONS"])

    return [ring_record(ethernet(ipv4(udp(options_message(n))))) for n in range(count)]


class FakeCapture:
    """Stands in for the eBPF/AF_PACKET capture: hands out scripted batches,
    and at close (registered on the task's stack, as the real ones are)
    hands what is left to on_stop, once."""

    def __init__(self, stack: contextlib.ExitStack, on_stop: OnStop, batches: list[list[bytes]],
                 leftover: list[bytes]) -> None:
        self.description = "fake"
        self.mode = CaptureMode.AFPACKET
        self.batches = batches
        self.closes = 0
        self._leftover = leftover
        self._on_stop = on_stop
        stack.callback(self._close)

    def _close(self) -> None:
        self.closes += 1
        self._on_stop(self._leftover)

    def poll(self, timeout_ms: int) -> list[bytes]:
        if self.batches:
            return self.batches.pop(0)
        time.sleep(timeout_ms / 1000 / 10)
        return []

    def apply_flows(self, events: object, stats: object, boundary: object) -> None:
        return None

    def stream_source(self) -> None:
        return None  # user space measures media, as with AF_PACKET

    def stats_sections(self) -> list[str]:
        return ["fake capture"]

    def counters(self) -> dict[str, dict[str, int]]:
        return {"fake": {"packets": 0}}

    def set_filters(self, before: object, after: object) -> None:
        self.filters_changed = (before, after)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused


class FakeOpener:
    def __init__(self, batches: list[list[bytes]] | None = None, leftover: list[bytes] | None = None) -> None:
        self.captures: list[FakeCapture] = []
        self._batches = batches or []
        self._leftover = leftover or []

    def __call__(self, stack: contextlib.ExitStack, options: CaptureOptions, interfaces: dict[int, str],
                 clock_offset_ns: int, on_stop: OnStop) -> FakeCapture:
        capture = FakeCapture(stack, on_stop, self._batches, self._leftover)
        self.captures.append(capture)
        return capture


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def options(tmp_path: Path, **changes: object) -> AttachOptions:
    base = AttachOptions(("lo",), mode=CaptureMode.AFPACKET, out=str(tmp_path / "out.jsonl"))
    return AttachOptions(**({f: getattr(base, f) for f in base.__dataclass_fields__} | changes))


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def reporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("reporter-")]


def open_sockets() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def os_threads(expected: int | None = None) -> int:
    """Threads of this process, native ones included; with ``expected``, give
    exiting threads a moment to go."""
    deadline = time.monotonic() + 2.0
    while True:
        count = len(list(Path("/proc/self/task").iterdir()))
        if expected is None or count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


@pytest.fixture
def quiet_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("otus_ebpf.outputs.kafka_producer.BROKER_CHECK_TIMEOUT_S", 0.2)
    yield


@pytest.mark.usefixtures("as_root", "quiet_kafka")
def test_start_failure_in_the_third_reporter_releases_the_first_two(tmp_path: Path) -> None:
    sockets, threads = open_sockets(), os_threads()
    opener = FakeOpener()
    task = Task("t", options(
        tmp_path,
        kafka=KafkaSettings("127.0.0.1:1", start_anyway=True),  # a real client: threads and sockets
        hep=(HepCollector(HepTransport.UDP, "127.0.0.1", 9),
             HepCollector(HepTransport.TCP, "no-such-host.invalid", 9)),
    ), opener)
    with pytest.raises(TaskStartError) as failed:
        task.start()
    assert failed.value.phase == "init" and "no-such-host.invalid" in str(failed.value)
    assert task.state is TaskState.FAILED
    assert reporter_threads() == [], "the JSON-lines and Kafka workers were stopped"
    assert os_threads(expected=threads) == threads, "librdkafka's threads are gone"
    assert open_sockets() == sockets, "the Kafka and HEP sockets are closed"
    assert opener.captures == [], "nothing was attached"
    task.stop()  # and stop after a failed start is harmless
    assert task.state is TaskState.FAILED


@pytest.mark.usefixtures("as_root")
def test_concurrent_stop_from_several_threads_stops_once(tmp_path: Path) -> None:
    opener = FakeOpener(batches=[sip_frames(10)], leftover=sip_frames(5))
    task = Task("t", options(tmp_path), opener)
    task.start()
    runner = threading.Thread(target=task.run)
    runner.start()
    time.sleep(0.2)
    stoppers = [threading.Thread(target=task.stop) for _ in range(8)]
    for stopper in stoppers:
        stopper.start()
    for stopper in [*stoppers, runner]:
        stopper.join(timeout=10)
        assert not stopper.is_alive()
    (capture,) = opener.captures
    assert capture.closes == 1 and task.state is TaskState.STOPPED
    assert lines(tmp_path / "out.jsonl") == 15
    assert reporter_threads() == []


@pytest.mark.usefixtures("as_root")
def test_stop_while_the_reporter_is_draining_loses_nothing(tmp_path: Path) -> None:
    count = 20_000
    opener = FakeOpener(leftover=sip_frames(count))
    task = Task("t", options(tmp_path, queue_records=10 * count), opener)
    task.start()
    task.stop()  # the rings' leftovers are parsed, queued and written before the files close
    assert lines(tmp_path / "out.jsonl") == count
    assert task.runner is not None
    (jsonl,) = task.runner.reporters
    assert (jsonl.stats.written, jsonl.stats.overflow, jsonl.stats.failed) == (count, 0, 0)


@pytest.mark.usefixtures("as_root")
def test_attach_gives_back_the_signal_handlers_it_took(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr("otus_ebpf.control.task.open_capture", FakeOpener(batches=[sip_frames(3)]))
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert agent.run_attach(options(tmp_path)) == 0
    assert {s: signal.getsignal(s) for s in before} == before
    assert lines(tmp_path / "out.jsonl") == 3


@pytest.mark.usefixtures("as_root")
def test_per_worker_files_with_records_on_stdout_are_refused_before_anything_starts(tmp_path: Path) -> None:
    from otus_ebpf.kernel.settings import KernelSettings  # noqa: PLC0415

    task = Task("t", options(tmp_path, out="-", per_worker_files=True, mode=CaptureMode.AUTO,
                             kernel=KernelSettings(shards=2)))
    with pytest.raises(TaskStartError, match=r"init: per-worker files need a file for the records"):
        task.start()
    assert task.state is TaskState.FAILED
