"""control.kafka and state.dir in the config file, and the tasks created at run
time: checked as a file's task, over the daemon file's defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otus_ebpf.control.config import Config, ConfigInvalid, parse, runtime_task, task_definition
from otus_ebpf.control.settings import DEFAULT_STATE_DIR


def key_file(tmp_path: Path, text: str = "s" * 32, mode: int = 0o600) -> Path:
    path = tmp_path / "fleet.key"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def fleet_yaml(key: Path, extra: str = "") -> str:
    return f"node: {{name: b}}\ncontrol:\n  kafka:\n    brokers: 127.0.0.1:9092\n    key_file: {key}\n{extra}"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        parse(text, "f.yaml", {})
    return [str(p) for p in caught.value.problems]


def test_a_fleet_section_gives_the_daemon_its_settings(tmp_path: Path) -> None:
    config = parse(fleet_yaml(key_file(tmp_path), "    groups: [eu, edge]\n    read_only: true\n"
                              "    heartbeat_s: 2\n"), "f.yaml", {})
    fleet = config.fleet
    assert fleet is not None
    assert (fleet.node, fleet.groups, fleet.read_only, fleet.heartbeat_s, fleet.key) == \
        ("b", ("eu", "edge"), True, 2.0, b"s" * 32)
    assert (fleet.command_topic, fleet.response_topic, fleet.status_topic) == \
        ("otus-commands", "otus-responses", "otus-status")
    assert "s" * 32 not in repr(config), "the key stays out of repr"


def test_without_a_fleet_section_there_is_no_fleet_and_the_state_dir_has_its_default() -> None:
    config = parse("tasks: []\n", "f.yaml", {})
    assert config.fleet is None and config.state_dir == DEFAULT_STATE_DIR
    assert parse("state: {dir: /x}\n", "f.yaml", {}).state_dir == "/x"
    assert parse("", "f.yaml", {"OTUS_STATE_DIR": "/y"}).state_dir == "/y"


def test_a_fleet_needs_brokers_and_a_key() -> None:
    assert problems("control:\n  kafka:\n    brokers: x:1\n") == \
        ["f.yaml:3: control.kafka: missing key: key_file"]


@pytest.mark.parametrize(("mode", "text", "expected"), [
    (0o644, "s" * 32, "readable by others (mode 0644): chmod 600"),
    (0o640, "s" * 32, "readable by others (mode 0640)"),
    (0o600, "short", "holds 5 bytes: a fleet key needs at least 16"),
    (0o600, "", "is empty"),
])
def test_a_key_file_others_can_read_or_too_short_is_refused(tmp_path: Path, mode: int, text: str,
                                                             expected: str) -> None:
    found = problems(fleet_yaml(key_file(tmp_path, text, mode)))
    assert len(found) == 1 and "control.kafka.key_file" in found[0] and expected in found[0], found


def test_a_missing_key_file_is_one_line(tmp_path: Path) -> None:
    found = problems(fleet_yaml(tmp_path / "nope.key"))
    assert len(found) == 1 and "cannot read" in found[0] and "nope.key" in found[0]


DAEMON = """
node: {name: edge-7}
defaults:
  workers: 1
  filter: {sip_ports: [5080], snaplen: 1500}
tasks: []
"""


def daemon_config() -> Config:
    return parse(DAEMON, "daemon.yaml", {})


def test_a_run_time_task_is_laid_over_the_daemon_files_defaults() -> None:
    task = runtime_task({"name": "t2", "interfaces": ["lo"], "filter": {"snaplen": 900}}, daemon_config(),
                        "task 't2'")
    kernel = task.options.kernel
    assert (task.name, task.options.interfaces, kernel.sip_ports, kernel.snaplen, kernel.shards) == \
        ("t2", ("lo",), (5080,), 900, 1)
    assert task.options.kafka_routing.node == "edge-7"


def test_a_bad_run_time_task_names_the_key_without_a_line() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        runtime_task({"name": "t2", "interfaces": ["lo"], "workers": 99}, daemon_config(), "task 't2'")
    assert [str(p) for p in caught.value.problems] == ["task 't2': workers: must be between 1 and 8, not 99"]


@pytest.mark.parametrize("definition", [
    {"name": "t2", "interfaces": ["lo"], "bogus": 1}, {"name": "t2"}, {"name": "t2", "interfaces": [[1]]},
    {"name": "t2", "interfaces": ["lo"], "filter": "x"}, {"name": "t2", "interfaces": ["lo\x00"]}])
def test_hostile_definitions_are_problems_not_exceptions(definition: dict[str, object]) -> None:
    with pytest.raises(ConfigInvalid):
        runtime_task(definition, daemon_config(), "task 't2'")


def test_a_definition_that_is_not_json_data_is_one_problem() -> None:
    with pytest.raises(ConfigInvalid, match="not plain JSON data"):
        runtime_task({"name": "t2", "interfaces": ["lo"], "x": object()}, daemon_config(), "t")


def test_a_task_taken_from_a_file_carries_that_files_defaults(tmp_path: Path) -> None:
    path = tmp_path / "t2.yaml"
    path.write_text("defaults:\n  filter: {signature: on}\ntasks:\n  - name: t1\n    interfaces: [lo]\n"
                    "  - name: t2\n    interfaces: [eth9]\n    outputs: {jsonl: {path: /tmp/x.jsonl}}\n")
    definition = task_definition(path, "t2")
    assert definition == {"filter": {"signature": "on"}, "name": "t2", "interfaces": ["eth9"],
                          "outputs": {"jsonl": {"path": "/tmp/x.jsonl"}}}
    task = runtime_task(definition, daemon_config(), "t")
    assert task.options.kernel.signature and task.options.kernel.sip_ports == (5080,)
    with pytest.raises(KeyError, match="no task named 't3'"):
        task_definition(path, "t3")
