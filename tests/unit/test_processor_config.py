"""Processors in the config file (an ordered list, checked whole with its
key files) and the flags' shortcuts, into a task's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from otus_ebpf.cli import main as cli
from otus_ebpf.control.config import ConfigInvalid, parse
from userspace.processors.build import ProcessorSpec

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
    ("- label: {static: {? [a, b] : c}}", "not plain data: found unhashable key"),
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
