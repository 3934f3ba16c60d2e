"""Reporter plugins (outputs.plugins): checked whole with the config, each
behind its own queue named plugin:NAME; one that raises, or never returns,
is counted and the replay (the task) goes on and ends."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from otus_ebpf.capture.replay import run_replay
from otus_ebpf.control import kinds
from otus_ebpf.control.config import ConfigInvalid, parse
from otus_ebpf.errors import EXIT_RECORDS_LOST, SetupError
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs import wiring
from otus_ebpf.outputs.fanout import Fallback, QueuedReporter
from otus_ebpf.outputs.plugin_reporters import ReporterSpec, queue_names
from tests.support.records import numbered_sip_records
from tests.support.sinks import ListSink
from tests.support.trunk import write_udp_pcap
from userspace.records import Record
from userspace.reporters.jsonl import JsonLinesReporter

TASK = "tasks:\n  - name: t\n    interfaces: [lo]\n    outputs:\n      plugins:\n"
CALLS = 3
RECORDS = CALLS * 7 + CALLS  # every SIP message, and a summary per call


class Recorder:
    """A plugin's reporter that keeps what it is given, and says what it was asked."""

    made: ClassVar[list[Recorder]] = []

    def __init__(self, options: Mapping[str, Any]) -> None:
        if set(options) - {"tag"}:
            raise ValueError(f"unknown options: {', '.join(sorted(set(options) - {'tag'}))}")
        self.options = dict(options)
        self.records: list[Record] = []
        self.calls: list[str] = []
        Recorder.made.append(self)

    def write(self, records: Sequence[Record]) -> None:
        self.records += records
        self.calls.append("write")

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def close(self) -> None:
        self.calls.append("close")


class Raising(Recorder):
    def write(self, records: Sequence[Record]) -> None:
        if records:
            raise RuntimeError("the plugin's own bug")


class RaisingAtTheEnd(Recorder):
    def flush(self, timeout: float) -> int:
        raise RuntimeError("flush went wrong")

    def close(self) -> None:
        raise KeyError("close went wrong")


def buggy_factory(options: Mapping[str, Any]) -> Recorder:
    raise TypeError("a bug in the factory")


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, Any]], None]:
    """Reporter plugins as if installed: for the config check and for the outputs."""
    Recorder.made = []

    def install(factories: Mapping[str, Any]) -> None:
        monkeypatch.setattr(kinds, "reporter_factories", lambda: factories)
        monkeypatch.setattr(wiring, "reporter_factories", lambda: factories)

    return install


def test_the_files_list_becomes_the_tasks_reporter_plugins(installed: Callable[..., None]) -> None:
    installed({"rec": Recorder})
    (task,) = parse(TASK + "        - {name: rec, options: {tag: 5060}}\n        - name: rec\n", "f.yaml",
                    {}).tasks
    assert task.options.reporter_plugins == (ReporterSpec("rec", '{"tag": 5060}'), ReporterSpec("rec", "{}"))
    assert [r.calls for r in Recorder.made] == [["close"], ["close"]], "made to judge its options; closed"
    (other,) = parse(TASK + "        - {name: rec, options: {tag: 5080}}\n        - name: rec\n", "f.yaml",
                     {}).tasks
    assert other.options != task.options, "a reload sees a changed option"


@pytest.mark.parametrize(("items", "said"), [
    ("        - name: nope\n", "outputs.plugins[0].name: no reporter plugin 'nope' (buggy, rec)"),
    ("        - {name: rec, options: {colour: red}}\n",
     "outputs.plugins[0]: plugin 'rec': unknown options: colour"),
    ("        - name: buggy\n", "outputs.plugins[0]: plugin 'buggy' failed: TypeError: a bug in the factory"),
    ("        - rec\n", "outputs.plugins[0]: {name: PLUGIN, options: {...}}"),
    ("        - {name: rec, options: [1]}\n", "outputs.plugins[0].options: a mapping"),
    ("        - {name: rec, colour: red}\n", "outputs.plugins[0]: {name: PLUGIN, options: {...}}"),
    ("        - {name: rec, options: {tag: 2024-01-01}}\n", "outputs.plugins[0]: options must be text"),
])
def test_a_wrong_reporter_plugin_is_a_problem_at_its_line(installed: Callable[..., None], items: str,
                                                          said: str) -> None:
    installed({"rec": Recorder, "buggy": buggy_factory})
    with pytest.raises(ConfigInvalid) as caught:
        parse(TASK + items, "f.yaml", {})
    (problem,) = caught.value.problems
    assert str(problem).startswith("f.yaml:6: tasks[0].outputs.plugins: ") and said in str(problem), problem


def test_not_a_list_is_a_problem_too(installed: Callable[..., None]) -> None:
    installed({})
    text = "tasks:\n  - name: t\n    interfaces: [lo]\n    outputs:\n      plugins: {name: x}\n"
    with pytest.raises(ConfigInvalid, match=r"f.yaml:5: tasks\[0\].outputs.plugins: outputs.plugins: a list"):
        parse(text, "f.yaml", {})


def test_each_is_named_for_its_plugin_and_counted_apart() -> None:
    specs = [ReporterSpec.of("csv", {}), ReporterSpec.of("kafka2", {}), ReporterSpec.of("csv", {"path": "b"})]
    assert queue_names(specs) == ["plugin:csv", "plugin:kafka2", "plugin:csv#2"]


def replayed(tmp_path: Path, plugin: str, fallback: bool = False) -> tuple[int, list[dict[str, Any]]]:
    capture = tmp_path / "trunk.pcap"
    write_udp_pcap(capture, CALLS)
    out = tmp_path / "out.jsonl"
    options = AttachOptions(("trunk",), out=str(out), reporter_plugins=(ReporterSpec.of(plugin, {}),),
                            fallback=str(tmp_path / "fallback.jsonl") if fallback else None)
    code = run_replay(capture, options, None)
    return code, [json.loads(line) for line in out.read_text().splitlines()]


def test_a_replay_hands_every_record_to_the_plugin_too(tmp_path: Path, installed: Callable[..., None],
                                                       logged: pytest.LogCaptureFixture) -> None:
    installed({"rec": Recorder})
    code, lines = replayed(tmp_path, "rec")
    (recorder,) = Recorder.made
    assert code == 0 and len(recorder.records) == len(lines) == RECORDS
    assert recorder.calls[-2:] == ["flush", "close"]
    assert logged.messages[-1] == (f"records: {RECORDS} produced; jsonl written={RECORDS} to_fallback=0 "
                                   f"lost=0; plugin:rec written={RECORDS} to_fallback=0 lost=0")


def test_a_plugin_that_raises_on_every_write_is_counted_and_the_replay_goes_on(
        tmp_path: Path, installed: Callable[..., None], logged: pytest.LogCaptureFixture) -> None:
    installed({"boom": Raising})
    code, lines = replayed(tmp_path, "boom")
    assert code == EXIT_RECORDS_LOST and len(lines) == RECORDS, "the other output has every record"
    assert logged.messages[-1].endswith(f"plugin:boom written=0 to_fallback=0 lost={RECORDS}")
    assert "plugin:boom: RuntimeError: the plugin's own bug" in logged.messages
    code, _ = replayed(tmp_path, "boom", fallback=True)
    assert code == 0 and logged.messages[-1].endswith(f"plugin:boom written=0 to_fallback={RECORDS} lost=0")
    assert len((tmp_path / "fallback.jsonl").read_text().splitlines()) == RECORDS


def test_a_plugin_whose_flush_and_close_raise_ends_the_replay_all_the_same(
        tmp_path: Path, installed: Callable[..., None], logged: pytest.LogCaptureFixture) -> None:
    installed({"odd": RaisingAtTheEnd})
    code, lines = replayed(tmp_path, "odd")
    assert code == 0 and len(lines) == RECORDS
    assert "plugin:odd: flush: RuntimeError: flush went wrong" in logged.messages
    assert "plugin:odd: close: KeyError: 'close went wrong'" in logged.messages


def test_a_plugin_gone_since_the_config_was_read_fails_the_start(tmp_path: Path,
                                                                 installed: Callable[..., None]) -> None:
    installed({})
    with pytest.raises(SetupError, match=r"outputs.plugins\[0\].name: no reporter plugin 'rec'"):
        replayed(tmp_path, "rec")
    assert not (tmp_path / "out.jsonl").exists(), "said before any output file is made"


class Stuck:
    """Never returns from write until released."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.closed = False

    def write(self, records: Sequence[Record]) -> None:
        if records:
            self.entered.set()
            self.release.wait(30)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def test_a_reporter_that_never_returns_is_left_behind_and_its_records_counted(
        logged: pytest.LogCaptureFixture) -> None:
    stuck, sink = Stuck(), ListSink()
    queue = QueuedReporter("plugin:stuck", stuck, Fallback(JsonLinesReporter(sink)), stuck_after=0.2)
    records = numbered_sip_records(10, 10)
    queue.write(records[:4])
    assert stuck.entered.wait(5)
    queue.write(records[4:])
    started = time.monotonic()
    assert queue.flush(0.2, time.monotonic) == 10, "nothing is out: 4 in its hands, 6 queued"
    queue.close()
    assert time.monotonic() - started < 2, "neither the flush nor the close waits for it"
    s = queue.stats
    assert (s.written, s.failed, s.lost, s.to_fallback, s.queued) == (0, 10, 4, 6, 0)
    assert len(sink.files[0].splitlines()) == 6
    assert not stuck.closed, "not closed under a call it is still inside"
    assert "plugin:stuck: its reporter has not returned in 0.2 s: left behind, 10 records not written by it" \
        in logged.messages
    stuck.release.set()
    time.sleep(0.3)
    assert (s.written, s.failed, s.lost) == (0, 10, 4), "what it returns later counts no more"


def test_a_built_in_reporter_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    """Without stuck_after the close waits (a Kafka flush may take its time): as before."""
    stuck = Stuck()
    queue = QueuedReporter("slow", stuck)
    queue.write(numbered_sip_records(1, 1))
    assert stuck.entered.wait(5)
    closing = threading.Thread(target=queue.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()
    stuck.release.set()
    closing.join(5)
    assert stuck.closed and queue.stats.written == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
