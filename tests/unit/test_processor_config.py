"""Processors in the config file (an ordered list, checked whole with its
key files) and the flags' shortcuts, into a task's options; a file's task
replayed over a capture file (`replay -c`), with what its processors did
said at the end."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf.capture import processing
from otus_ebpf.cli import main as cli
from otus_ebpf.control import kinds
from otus_ebpf.control.config import ConfigInvalid, parse
from otus_ebpf.errors import EXIT_SETUP_ERROR
from tests.support.trunk import write_udp_pcap
from userspace.processors.build import ProcessorSpec
from userspace.records import Record

TASK = "tasks:\n  - name: t\n    interfaces: [lo]\n    processors:\n"


def test_the_files_list_becomes_the_tasks_processors_in_order(tmp_path: Path) -> None:
    key = tmp_path / "redact.key"
    key.write_text("k" * 32)
    (task,) = parse(TASK + f"""      - filter: {{drop: {{method: [OPTIONS, NOTIFY]}}}}
      - label: {{static: {{site: fra1}}, from_header: {{customer: X-Customer}}}}
      - redact: {{mode: hash, key_file: {key}}}
      - sample: {{one_in: 10}}
""", "f.yaml", {}).tasks
    assert [s.kind for s in task.options.processors] == ["filter", "label", "redact", "sample"]
    drop = {"drop": {"method": ["OPTIONS", "NOTIFY"]}}
    assert task.options.processors[0] == ProcessorSpec.of("filter", drop)


@pytest.mark.parametrize(("item", "said"), [
    ("- filter: {keep: {colour: red}}", "processors[0].filter.keep.colour: unknown condition"),
    ("- redact: {mode: hash}", "a hash needs a key"),
    ("- redact: {mode: hash, key_file: /nonexistent/key}", "cannot read /nonexistent/key"),
    ("- shout: {}", "unknown processor"),
    ("- plugin: {name: not-installed}", "no processor plugin 'not-installed'"),
    ("- filter: {keep: {header: {name: X, regex: '(('}}}", "not a regular expression"),
    # YAML says more than JSON, in which options travel: once a traceback, now a problem
    ("- label: {static: {day: 2024-01-01}}", "processors[0].label: options must be text, numbers"),
    ("- sample: {one_in: .nan}", "processors[0].sample: options must be text, numbers"),
    ("- label: {static: {? [a, b] : c}}", "not plain YAML data: found unhashable key"),
])
def test_a_wrong_processor_is_a_problem_at_its_line(item: str, said: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        parse(TASK + f"      {item}\n", "f.yaml", {})
    (problem,) = caught.value.problems
    assert str(problem).startswith("f.yaml:5: tasks[0].processors: ") and said in str(problem), problem


def test_a_number_as_a_key_arrives_as_its_text_beside_text_keys() -> None:
    """A port as a key beside a word (JSON keys are text; sorting the two kinds together raised)."""
    spec = ProcessorSpec.of("plugin", {"name": "p", "options": {5060: "public", "label": "trunk", True: 1}})
    assert spec.options["options"] == {"5060": "public", "label": "trunk", "true": 1}


def test_the_flags_add_their_processors_after_the_files() -> None:
    args = cli.build_parser().parse_args(["attach", "eth0", "--keep-number", "+4930", "--label", "site=fra1",
                                          "--label-header", "customer=X-Customer", "--redact", "mask",
                                          "--sample", "4"])
    options = cli._attach_options(args)
    assert [s.kind for s in options.processors] == ["filter", "label", "redact", "sample"]
    labels = {"static": {"site": "fra1"}, "from_header": {"customer": "X-Customer"}}
    assert options.processors[1].options == labels


def test_a_label_flag_without_a_value_is_refused() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["attach", "eth0", "--label", "site"])


@pytest.mark.parametrize(("task", "said"), [
    ("    processors:\n      - label: {static: {day: !!timestamp 2026-12-01}}\n", "options must be text"),
    ("    processors:\n      - label: !foo {static: {a: b}}\n", "not plain YAML data"),
    ("    select: {redact: hash}\n", "a hash needs a key"),
    ("    select: {redact: hash, redact_key_file: /nonexistent/k}\n", "cannot read /nonexistent/k"),
])
def test_odd_yaml_and_unbuildable_shortcuts_are_problems(task: str, said: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        parse("tasks:\n  - name: t\n    interfaces: [lo]\n" + task, "f.yaml", {})
    assert any(said in str(p) for p in caught.value.problems), caught.value.problems


class Boom:
    """A plugin's processor that raises on every other batch it sees."""

    fail_closed = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.name = "boom"
        self.batches = 0

    def process(self, records: list[Record]) -> list[Record]:
        self.batches += 1
        if self.batches % 2 == 0:
            raise RuntimeError("every other batch")
        return records

    def counts(self) -> Mapping[str, int]:
        return {"seen": self.batches}


def replay_config(tmp_path: Path, processors: str) -> tuple[Path, Path]:
    """Three calls' 21 messages 5 ms apart (at --speed 1, a batch each) and a file of two tasks."""
    capture = tmp_path / "trunk.pcap"
    write_udp_pcap(capture, 3, gap_us=5000)
    config = tmp_path / "replay.yaml"
    config.write_text(f"""tasks:
  - name: lab
    interfaces: [eth9]
    outputs: {{jsonl: {{path: {tmp_path / "task.jsonl"}}}}}
    processors:
{processors}
  - name: other
    interfaces: [eth8]
""")
    return capture, config


def test_replay_takes_a_files_task_and_its_processors(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    capture, config = replay_config(tmp_path, "      - label: {static: {site: lab}}\n")
    assert cli.main(["replay", str(capture), "-c", str(config)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "task.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and all(line["labels"] == {"site": "lab"} for line in lines)
    assert {line["interface"] for line in lines} == {"trunk"}, "the capture file's interface, not the task's"
    assert "processors: label labelled=24" in capsys.readouterr().err.splitlines()
    assert cli.main(["replay", str(capture), "-c", str(config), "--task", "other", "--out",
                     str(tmp_path / "flag.jsonl")]) == 0
    assert "labels" not in (tmp_path / "flag.jsonl").read_text(), "the other task has no processors"


def test_replay_refuses_a_bad_file_or_task_in_one_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    capture, config = replay_config(tmp_path, "      - shout: {}\n")
    assert cli.main(["replay", str(capture), "-c", str(config)]) == EXIT_SETUP_ERROR
    assert capsys.readouterr().err == (f"otus-ebpf: error: {config}:6: tasks[0].processors: "
                                       "processors[0].shout: unknown processor (expected one of: filter, "
                                       "label, redact, sample, plugin)\n")
    capture, config = replay_config(tmp_path, "      - sample: {one_in: 1}\n")
    assert cli.main(["replay", str(capture), "-c", str(config), "--task", "nope"]) == EXIT_SETUP_ERROR
    assert "no task named 'nope' (tasks: lab, other)" in capsys.readouterr().err
    assert not (tmp_path / "task.jsonl").exists()


def test_a_plugin_processor_that_raises_is_counted_in_the_replays_last_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kinds, "processor_factories", lambda: {"boom": Boom})
    monkeypatch.setattr(processing, "processor_factories", lambda: {"boom": Boom})
    capture, config = replay_config(tmp_path, "      - plugin: {name: boom}\n")
    assert cli.main(["replay", str(capture), "-c", str(config), "--speed", "1"]) == 0
    assert len((tmp_path / "task.jsonl").read_text().splitlines()) == 24, "its batches went on unchanged"
    (said,) = [m for m in capsys.readouterr().err.splitlines() if m.startswith("processors: ")]
    found = re.fullmatch(r"processors: plugin:boom failed=(\d+) seen=(\d+)", said)
    assert found is not None, said
    failed, seen = int(found.group(1)), int(found.group(2))
    assert failed == seen // 2 > 5, said
