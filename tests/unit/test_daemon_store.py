"""Tasks created at run time outlive the daemon: stored, restored at its start,
kept by reload, removed by delete; the file wins a name both hold; a broken
entry is reported and skipped. (A fake capture: no root, no kernel.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf.control.config import load
from otus_ebpf.control.daemon import Daemon
from otus_ebpf.control.store import TaskStore
from tests.unit.test_task import FakeOpener

FILE = """
tasks:
  - {{name: file-task, interfaces: [lo], mode: afpacket, workers: 1,
     outputs: {{jsonl: {{path: {tmp}/file.jsonl}}}}}}
"""


def definition(tmp: Path, name: str = "t2") -> dict[str, Any]:
    return {"name": name, "interfaces": ["lo"], "mode": "afpacket", "workers": 1,
            "outputs": {"jsonl": {"path": str(tmp / f"{name}.jsonl")}}}


@pytest.fixture(autouse=True)
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)


class Node:
    """A daemon over a config file and a store, started and stopped like run_daemon does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path = tmp / "otus.yaml"
        if not self.path.exists():
            self.path.write_text(FILE.format(tmp=tmp))
        self.daemon = Daemon(self.path, FakeOpener(), load(self.path, {}))
        self.daemon.store = TaskStore(tmp / "state")
        self.daemon.apply(self.daemon.config)

    def ask(self, origin: str = "socket", **request: Any) -> dict[str, Any]:
        return self.daemon.commands.answer(request, origin)

    def tasks(self) -> dict[str, str]:
        return {t["name"]: t["state"] for t in self.ask(cmd="list")["tasks"]}

    def restart(self) -> Node:
        self.stop()
        return Node(self.tmp)

    def stop(self) -> None:
        self.daemon.manager.stop_all()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    nodes = [Node(tmp_path)]
    yield nodes[0]
    nodes[0].stop()


def test_a_task_created_at_run_time_comes_back_after_a_restart(node: Node) -> None:
    answer = node.ask("kafka r-1", cmd="create", task="t2", definition=definition(node.tmp))
    assert answer == {"ok": True, "created": "t2"}
    assert node.tasks() == {"file-task": "running", "t2": "running"}
    again = node.restart()
    try:
        assert again.tasks() == {"file-task": "running", "t2": "running"}
        stored = {t["name"]: t["stored"] for t in again.ask(cmd="list")["tasks"]}
        assert stored == {"file-task": False, "t2": True}
        assert again.daemon.store is not None
        entries, problems = again.daemon.store.load()
        assert [(e.name, e.origin) for e in entries] == [("t2", "kafka r-1")] and problems == []
    finally:
        again.stop()


def test_a_task_from_a_file_on_the_socket_is_stored_as_its_definition(node: Node) -> None:
    source = node.tmp / "t2.yaml"
    source.write_text(f"defaults: {{workers: 1}}\ntasks:\n  - name: t2\n    interfaces: [lo]\n"
                      f"    mode: afpacket\n    outputs: {{jsonl: {{path: {node.tmp}/t2.jsonl}}}}\n")
    assert node.ask(cmd="create", task="t2", config=str(source))["ok"]
    source.unlink()  # the stored task does not depend on the file it came from
    again = node.restart()
    try:
        assert again.tasks()["t2"] == "running"
    finally:
        again.stop()


def test_reload_keeps_stored_tasks_and_delete_forgets_them(node: Node) -> None:
    node.ask(cmd="create", task="t2", definition=definition(node.tmp))
    reloaded = node.ask(cmd="reload")
    assert reloaded["stopped"] == [] and "t2" in reloaded["unchanged"]
    assert node.ask(cmd="delete", task="t2") == {"ok": True, "deleted": "t2"}
    again = node.restart()
    try:
        assert again.tasks() == {"file-task": "running"}
    finally:
        again.stop()


def test_a_paused_stored_task_comes_back_paused(node: Node) -> None:
    node.ask(cmd="create", task="t2", definition=definition(node.tmp))
    assert node.ask(cmd="pause", task="t2")["ok"]
    again = node.restart()
    try:
        assert again.tasks()["t2"] == "paused"
    finally:
        again.stop()


def test_the_file_wins_a_name_both_hold_and_the_stored_one_is_set_aside(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    node.ask(cmd="create", task="t2", definition=definition(node.tmp))
    node.stop()
    node.path.write_text(FILE.format(tmp=node.tmp) + "  - {name: t2, interfaces: [lo], mode: afpacket, "
                         "workers: 1, outputs: {jsonl: {path: /dev/null}}}\n")
    with caplog.at_level(logging.WARNING):
        again = Node(node.tmp)
    try:
        assert again.tasks() == {"file-task": "running", "t2": "running"}
        assert not {t["name"]: t["stored"] for t in again.ask(cmd="list")["tasks"]}["t2"]
        assert len(list((node.tmp / "state" / "conflicts").iterdir())) == 1
        assert any("also defined in" in r.getMessage() for r in caplog.records)
    finally:
        again.stop()


def test_a_broken_entry_is_reported_and_skipped(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    node.ask(cmd="create", task="t2", definition=definition(node.tmp))
    node.ask(cmd="create", task="t3", definition=definition(node.tmp, "t3"))
    node.stop()
    entries = sorted((node.tmp / "state" / "tasks").iterdir())
    entries[0].write_text("{not json")
    with caplog.at_level(logging.ERROR):
        again = Node(node.tmp)
    try:
        assert len(again.tasks()) == 2, "the file's task and the intact stored one"
        assert any("task store:" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    finally:
        again.stop()


def test_a_stored_definition_no_longer_valid_is_reported_and_skipped(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    assert node.daemon.store is not None
    node.daemon.store.save("old", {"name": "old", "interfaces": ["lo"], "workers": 99}, "socket")
    with caplog.at_level(logging.ERROR):
        again = node.restart()
    try:
        assert "old" not in again.tasks()
        said = "stored task 'old': workers: must be between 1 and 8"
        assert any(said in r.getMessage() for r in caplog.records)
    finally:
        again.stop()


@pytest.mark.parametrize(("origin", "request_", "error"), [
    ("kafka r-2", {"task": "t2", "config": "/etc/passwd"}, "over Kafka, a task is sent whole"),
    ("kafka r-3", {"task": "t2", "definition": {"interfaces": ["lo"], "processors": [
        {"redact": {"mode": "hash", "key_file": "/etc/shadow"}}]}}, "a redact key_file or a plugin"),
    ("kafka r-4", {"task": "t2", "definition": {"interfaces": ["lo"], "processors": [
        {"plugin": {"name": "x"}}]}}, "a redact key_file or a plugin"),
    ("socket", {"task": "t2", "definition": {"name": "other"}}, "the definition names 'other', not 't2'"),
    ("socket", {"task": "t2", "definition": ["x"]}, '"definition" is an object'),
    ("socket", {"definition": {}}, '"task" names the task'),
    ("socket", {"task": "t2", "definition": {"interfaces": ["lo"], "workers": 0}},
     "task 't2': workers: must be between 1 and 8, not 0"),
    ("socket", {"task": "file-task", "definition": {"interfaces": ["lo"]}}, "task 'file-task' exists"),
])
def test_a_create_refused_says_why_and_stores_nothing(node: Node, origin: str, request_: dict[str, Any],
                                                       error: str) -> None:
    answer = node.ask(origin, cmd="create", **request_)
    assert not answer["ok"] and error in answer["error"], answer
    assert node.daemon.store is not None and node.daemon.store.load() == ([], [])


def test_a_task_that_cannot_start_is_not_stored(node: Node) -> None:
    broken = {**definition(node.tmp), "interfaces": ["nonexistent0"]}
    answer = node.ask(cmd="create", task="t2", definition=broken)
    assert not answer["ok"] and "nonexistent0" in answer["error"], answer
    assert node.daemon.store is not None and node.daemon.store.load() == ([], [])


def test_a_heartbeat_says_how_each_task_captures_and_which_are_stored(node: Node) -> None:
    node.ask(cmd="create", task="t2", definition={**definition(node.tmp), "mode": "auto"})
    tasks = {t["name"]: t for t in node.daemon.fleet_state()["tasks"]}
    assert {name: (t["state"], t["mode"], t["stored"]) for name, t in tasks.items()} == {
        "file-task": ("running", "afpacket", False), "t2": ("running", "afpacket", True)}
    assert set(tasks["t2"]) >= {"records", "sip_messages", "calls", "records_lost", "interfaces"}


def test_a_paused_stored_task_stays_paused_when_a_reload_restarts_it(node: Node) -> None:
    node.ask(cmd="create", task="t2", definition=definition(node.tmp))
    node.ask(cmd="pause", task="t2")
    node.path.write_text(node.path.read_text().replace("tasks:", "defaults: {xdp_mode: native}\ntasks:"))
    reloaded = node.ask(cmd="reload")
    assert "t2" in reloaded["restarted"], reloaded
    assert node.tasks()["t2"] == "paused"


def test_a_remote_command_does_not_choose_the_nodes_secret_files(node: Node) -> None:
    sneaky = {**definition(node.tmp), "outputs": {"kafka": {"brokers": "evil:9092", "security": {
        "protocol": "sasl_plaintext", "sasl_password_file": "/etc/shadow"}}}}
    answer = node.ask("kafka r-9", cmd="create", task="t2", definition=sneaky)
    assert not answer["ok"] and "outputs.kafka.security.sasl_password_file is not taken over Kafka" in \
        answer["error"]
    assert node.ask(cmd="create", task="t2", definition=definition(node.tmp))["ok"], "the socket may"


def test_a_store_that_cannot_set_aside_does_not_stop_the_daemon(node: Node) -> None:
    node.ask(cmd="create", task="t2", definition=definition(node.tmp))
    node.stop()
    node.path.write_text(FILE.format(tmp=node.tmp) + "  - {name: t2, interfaces: [lo], mode: afpacket, "
                         "workers: 1, outputs: {jsonl: {path: /dev/null}}}\n")
    (node.tmp / "state" / "conflicts").write_text("a file where a directory should be")
    again = Node(node.tmp)
    try:
        assert again.tasks() == {"file-task": "running", "t2": "running"}
    finally:
        again.stop()
