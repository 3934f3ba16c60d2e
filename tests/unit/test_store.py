"""The daemon's task store: what is saved loads back equal, whatever the name;
entries are root's alone; a damaged, foreign or excess entry is named in one
line and skipped while the others load; and a writer killed at any instant
leaves a store that loads with no problem."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf.control import store
from otus_ebpf.control.store import StoredTask, TaskStore
from otus_ebpf.errors import SetupError
from tests.support.paths import REPO

DEFINITION = {"interfaces": ["eth0"], "mode": "afpacket", "filter": {"sip_ports": [5060, 5080]},
              "outputs": {"kafka": {"brokers": ["k1:9092"], "sasl_password_file": "/etc/otus/kafka.pw"}},
              "sampling": 0.25, "note": None}


def entry_file(name: str) -> str:
    """The layout the brief fixes, computed here independently of the store."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:32] + ".json"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def good_entry(name: object = "bad", **changes: Any) -> dict[str, Any]:
    entry = {"format": 1, "name": name, "definition": {"mode": "afpacket"}, "origin": "socket",
             "paused": False, "saved_ms": 1_700_000_000_000}
    entry.update(changes)
    return entry


# --- saving and loading ----------------------------------------------------------------------------

def test_a_saved_task_loads_back_as_it_was_in_the_layout_an_operator_reads(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path / "state")
    before = time.time_ns() // 1_000_000
    tasks.save("trunk", DEFINITION, "kafka 5f1c", paused=True)
    after = time.time_ns() // 1_000_000
    loaded, problems = TaskStore(tmp_path / "state").load()  # a restarted daemon
    assert problems == []
    assert len(loaded) == 1
    task = loaded[0]
    assert (task.name, task.definition, task.origin, task.paused) == ("trunk", DEFINITION, "kafka 5f1c", True)
    assert before <= task.saved_ms <= after
    path = tmp_path / "state" / "tasks" / entry_file("trunk")
    assert os.listdir(tmp_path / "state" / "tasks") == [path.name]
    text = path.read_text()
    assert json.loads(text) == {"format": 1, "name": "trunk", "definition": DEFINITION,
                                "origin": "kafka 5f1c", "paused": True, "saved_ms": task.saved_ms}
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1)


def test_a_save_replaces_the_task_and_remove_forgets_it(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("a", {"v": 1}, "socket")
    tasks.save("a", {"v": 2}, "kafka r2", paused=True)
    loaded, problems = tasks.load()
    assert problems == []
    assert [(t.name, t.definition, t.origin, t.paused) for t in loaded] == [("a", {"v": 2}, "kafka r2", True)]
    assert os.listdir(tmp_path / "tasks") == [entry_file("a")]
    assert tasks.remove("a") is True
    assert tasks.remove("a") is False
    assert tasks.remove("never stored") is False
    assert tasks.load() == ([], [])
    assert os.listdir(tmp_path / "tasks") == []


def test_tasks_load_sorted_by_name(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    names = ["m", "b", "z", "a", "B", "é"]
    for name in names:
        tasks.save(name, {"name_again": name}, "socket")
    loaded, problems = tasks.load()
    assert problems == []
    assert [t.name for t in loaded] == sorted(names)
    assert all(t.definition == {"name_again": t.name} for t in loaded)


@pytest.mark.parametrize("name", ["/", "../x", "..", ".", "a\x00b", "x" * 10_000, "звонок ☎ 通话",
                                  "line\nbreak", " ", "\U0001f4de"])
def test_any_name_is_stored_safely_and_loads_back_equal(tmp_path: Path, name: str) -> None:
    tasks = TaskStore(tmp_path / "state")
    tasks.save(name, {"name": name}, name)
    loaded, problems = tasks.load()
    assert problems == []
    assert [(t.name, t.definition, t.origin) for t in loaded] == [(name, {"name": name}, name)]
    # Nothing was written anywhere but the one hashed file.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == \
        ["state", "state/tasks", f"state/tasks/{entry_file(name)}"]
    assert tasks.remove(name) is True


# --- permissions and the directory -----------------------------------------------------------------

def test_the_directory_is_0700_and_entries_0600_also_after_an_overwrite(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path / "new" / "state")
    assert mode(tmp_path / "new" / "state" / "tasks") == 0o700
    assert mode(tmp_path / "new" / "state") == 0o700  # made by the store
    tasks.save("a", DEFINITION, "socket")
    path = tmp_path / "new" / "state" / "tasks" / entry_file("a")
    assert mode(path) == 0o600
    path.chmod(0o644)  # an operator's edit
    tasks.save("a", {"v": 2}, "socket")
    assert mode(path) == 0o600


def test_a_wider_tasks_directory_is_tightened_the_state_directory_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tasks").mkdir(parents=True)
    state.chmod(0o755)  # as systemd's StateDirectory= makes it
    (state / "tasks").chmod(0o755)
    TaskStore(state)
    assert mode(state / "tasks") == 0o700
    assert mode(state) == 0o755


def test_a_file_where_the_directory_should_be_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(SetupError) as raised:
        TaskStore(tmp_path / "state")
    assert str(raised.value) == f"task store {tmp_path / 'state'}: not a directory"
    (tmp_path / "other" ).mkdir()
    (tmp_path / "other" / "tasks").write_text("")
    with pytest.raises(SetupError) as raised:
        TaskStore(tmp_path / "other")
    assert str(raised.value) == f"task store {tmp_path / 'other' / 'tasks'}: not a directory"


def test_a_directory_that_cannot_be_made_is_one_line() -> None:
    # Not even root may make a directory in sysfs: EPERM, or EROFS where it is mounted read-only.
    with pytest.raises(SetupError) as raised:
        TaskStore(Path("/sys/otus-ebpf-test-state"))
    message = str(raised.value)
    assert message.startswith("task store /sys/otus-ebpf-test-state: ")
    assert message.split(": ", 1)[1] in {os.strerror(errno.EPERM), os.strerror(errno.EROFS),
                                         os.strerror(errno.EACCES)}
    assert "\n" not in message


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# --- what save refuses -----------------------------------------------------------------------------

def temp_files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


@pytest.mark.parametrize(("definition", "why"), [
    ({"day": datetime.date(2024, 1, 1)}, "not JSON serializable"),
    ({"ratio": float("nan")}, "not JSON compliant"),
    ({"ratio": float("inf")}, "not JSON compliant"),
    ({5060: "sip"}, "would not load back as it is"),
    ({"ports": (5060, 5080)}, "would not load back as it is"),
    ({"text": "lone \udc80 surrogate"}, "surrogates not allowed"),
    ({"deep": nested(5000)}, "recursion"),
])
def test_a_definition_that_would_not_load_back_equal_is_refused(tmp_path: Path, definition: dict[str, Any],
                                                                 why: str) -> None:
    tasks = TaskStore(tmp_path)
    with pytest.raises(SetupError) as raised:
        tasks.save("t", definition, "socket")
    message = str(raised.value)
    assert message.startswith("task 't' not stored: its definition is not plain JSON data (")
    assert why in message
    assert "\n" not in message
    assert os.listdir(tmp_path / "tasks") == []


@pytest.mark.parametrize("name", ["", "lone \udc80 surrogate"])
def test_a_name_that_cannot_be_stored_is_refused(tmp_path: Path, name: str) -> None:
    tasks = TaskStore(tmp_path)
    with pytest.raises(SetupError, match="cannot be stored: it must be non-empty Unicode text"):
        tasks.save(name, {}, "socket")
    assert os.listdir(tmp_path / "tasks") == []
    assert tasks.remove(name) is False
    assert tasks.set_aside(name, "why") is None


def test_an_entry_larger_than_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("big", {"blob": "x" * 500}, "socket")
    monkeypatch.setattr(store, "MAX_ENTRY_BYTES", 1000)
    with pytest.raises(SetupError) as raised:
        tasks.save("big", {"blob": "x" * 1000}, "socket")
    assert re.fullmatch(r"task 'big' not stored: its entry would take 11\d\d bytes, "
                        r"more than the 1000 a stored task may", str(raised.value))
    assert [t.definition for t in tasks.load()[0]] == [{"blob": "x" * 500}]  # the old one stays
    assert temp_files(tmp_path / "tasks") == []


def test_a_new_task_past_the_limit_is_refused_a_stored_one_still_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MAX_STORED_TASKS", 3)
    tasks = TaskStore(tmp_path)
    for name in ("a", "b", "c"):
        tasks.save(name, {}, "socket")
    with pytest.raises(SetupError) as raised:
        tasks.save("d", {}, "socket")
    assert str(raised.value) == \
        f"task 'd' not stored: 3 tasks are stored already, the most {tmp_path / 'tasks'} keeps"
    tasks.save("b", {"v": 2}, "socket")  # replacing one is not one more
    assert tasks.remove("a") is True
    tasks.save("d", {}, "socket")
    assert [t.name for t in tasks.load()[0]] == ["b", "c", "d"]


def test_a_failed_write_is_one_line_naming_the_entry_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("t", {"v": 1}, "socket")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SetupError) as raised:
        tasks.save("t", {"v": 2}, "socket")
    monkeypatch.undo()
    assert str(raised.value) == \
        f"cannot store task 't' as {tmp_path / 'tasks' / entry_file('t')}: {os.strerror(errno.EIO)}"
    assert temp_files(tmp_path / "tasks") == []
    assert [t.definition for t in tasks.load()[0]] == [{"v": 1}]


# --- what load skips -------------------------------------------------------------------------------

def write_entry(directory: Path, content: dict[str, Any] | bytes, file: str | None = None) -> Path:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    name = content["name"] if isinstance(content, dict) and isinstance(content.get("name"), str) else "bad"
    path = directory / "tasks" / (file or entry_file(name))
    path.write_bytes(data)
    return path


BAD_CONTENT: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("not UTF-8", b'{"name": "\xff\xfe"}', ": not UTF-8 text"),
    ("truncated", json.dumps(good_entry())[:-20].encode(), ": not JSON (Unterminated string"),
    ("empty", b"", ": not JSON (Expecting value"),
    ("nested past recursion", b"[" * 100_000 + b"]" * 100_000,
     ": not JSON (maximum recursion depth exceeded"),
    ("a 5000-digit number", b'{"format": ' + b"9" * 5000 + b"}", ": not JSON (Exceeds the limit"),
    ("a list", b"[]", ": not a JSON object but list"),
    ("a string", b'"task"', ": not a JSON object but str"),
    ("format 2", good_entry(format=2), ": format 2, not 1: not read"),
    ("format true", good_entry(format=True), ": format True, not 1: not read"),
    ("format 1.0", good_entry(format=1.0), ": format 1.0, not 1: not read"),
    ("no format", {k: v for k, v in good_entry().items() if k != "format"}, ": format None, not 1: not read"),
    ("no origin", {k: v for k, v in good_entry().items() if k != "origin"},
     ": fields missing or not as written: origin (a string)"),
    ("paused as text", good_entry(paused="no"), ": fields missing or not as written: paused (true or false)"),
    ("saved_ms true", good_entry(saved_ms=True), ": fields missing or not as written: saved_ms (an integer)"),
    ("two wrong", good_entry(definition=[], saved_ms=1.5),
     ": fields missing or not as written: definition (an object), saved_ms (an integer)"),
    ("empty name", good_entry(name=""), ": fields missing or not as written: name (a non-empty string)"),
    ("name a number", good_entry(name=7), ": fields missing or not as written: name (a non-empty string)"),
]


@pytest.mark.parametrize(("content", "says"), [case[1:] for case in BAD_CONTENT],
                         ids=[case[0] for case in BAD_CONTENT])
def test_a_damaged_entry_is_one_problem_line_and_the_others_load(
        tmp_path: Path, content: dict[str, Any] | bytes, says: str) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("good", DEFINITION, "socket")
    path = write_entry(tmp_path, content)
    loaded, problems = tasks.load()
    assert [(t.name, t.definition) for t in loaded] == [("good", DEFINITION)]
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}{says}")
    assert "\n" not in problems[0]
    assert path.exists()  # skipped, not deleted: an operator may want it


def test_an_entry_moved_or_copied_under_another_file_name_is_not_loaded(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("good", DEFINITION, "socket")
    good = tmp_path / "tasks" / entry_file("good")
    copied = tmp_path / "tasks" / entry_file("other")
    renamed = tmp_path / "tasks" / "good.json"
    copied.write_bytes(good.read_bytes())
    renamed.write_bytes(good.read_bytes())
    loaded, problems = tasks.load()
    assert [t.name for t in loaded] == ["good"]
    assert sorted(problems) == sorted(
        f"{path}: holds task 'good', whose entry is {entry_file('good')}: moved or copied here, not loaded"
        for path in (copied, renamed))


def test_a_name_not_unicode_inside_an_entry_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    path = write_entry(tmp_path, json.dumps(good_entry(name="a\udc80")).encode(), file="x.json")
    assert tasks.load() == ([], [f"{path}: holds task 'a\\udc80', whose entry is none (not Unicode text): "
                                 "moved or copied here, not loaded"])


def test_an_entry_larger_than_the_limit_is_not_read(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("good", {}, "socket")
    path = write_entry(tmp_path, b" " * (store.MAX_ENTRY_BYTES + 1))
    loaded, problems = tasks.load()
    assert [t.name for t in loaded] == ["good"]
    assert problems == [f"{path}: larger than {store.MAX_ENTRY_BYTES} bytes, the most a stored task takes"]


def test_a_symlink_entry_is_refused_even_to_a_good_entry(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("good", {}, "socket")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(good_entry("linked")))
    link = tmp_path / "tasks" / entry_file("linked")
    link.symlink_to(elsewhere)
    loaded, problems = tasks.load()
    assert [t.name for t in loaded] == ["good"]
    assert problems == [f"{link}: a symbolic link, not a regular file: not followed"]


def test_set_aside_refuses_a_symlink_entry(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(good_entry("linked")))
    link = tmp_path / "tasks" / entry_file("linked")
    link.symlink_to(elsewhere)
    with pytest.raises(SetupError, match="a symbolic link, not a regular file"):
        tasks.set_aside("linked", "why")
    assert link.is_symlink()
    assert json.loads(elsewhere.read_text()) == good_entry("linked")


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_an_entry_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("good", {}, "socket")
    path = tmp_path / "tasks" / entry_file("odd")
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # with no writer: a plain open would block load() for ever
    loaded, problems = tasks.load()
    assert [t.name for t in loaded] == ["good"]
    assert problems == [f"{path}: not a regular file"]


def test_leftover_temp_files_are_removed_other_files_named_and_left(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("good", {}, "socket")
    leftover = tmp_path / "tasks" / ".0123456789abcdef.tmp"
    leftover.write_text('{"format": 1, "na')
    notes = tmp_path / "tasks" / "notes.txt"
    notes.write_text("")
    odd = tmp_path / "tasks" / "new\nline"
    odd.write_text("")
    loaded, problems = tasks.load()
    assert [t.name for t in loaded] == ["good"]
    assert problems == [f"{str(odd)!r}: not a task entry, left alone",
                        f"{notes}: not a task entry, left alone"]
    assert sorted(os.listdir(tmp_path / "tasks")) == sorted([entry_file("good"), "notes.txt", "new\nline"])


def test_past_the_limit_the_first_entries_by_file_name_load_and_one_line_says_how_many_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = TaskStore(tmp_path)
    names = [f"task{i}" for i in range(5)]
    for name in names:
        tasks.save(name, {}, "socket")
    monkeypatch.setattr(store, "MAX_STORED_TASKS", 3)
    loaded, problems = tasks.load()
    by_file = sorted(names, key=entry_file)
    assert [t.name for t in loaded] == sorted(by_file[:3])
    assert problems == [f"{tmp_path / 'tasks'}: 2 entries not read, {entry_file(by_file[3])} and after: "
                        "more than the 3 a store keeps"]


# --- set aside -------------------------------------------------------------------------------------

def test_set_aside_moves_the_entry_to_conflicts_with_the_reason(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("t", DEFINITION, "kafka r1")
    saved = json.loads((tmp_path / "tasks" / entry_file("t")).read_text())
    moved = tasks.set_aside("t", "a task 't' is in the config file too")
    assert moved is not None
    assert moved.parent == tmp_path / "conflicts"
    stamp = re.fullmatch(entry_file("t")[:-5] + r"-(\d{8}T\d{6}Z)\.json", moved.name)
    assert stamp is not None
    when = datetime.datetime.strptime(stamp.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    assert abs(when - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(hours=1)
    assert json.loads(moved.read_text()) == {**saved, "set_aside": "a task 't' is in the config file too"}
    assert mode(tmp_path / "conflicts") == 0o700
    assert mode(moved) == 0o600
    assert tasks.load() == ([], [])
    assert tasks.set_aside("t", "again") is None


def test_the_same_task_set_aside_twice_keeps_both(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    paths = []
    for version in (1, 2, 3):
        tasks.save("t", {"v": version}, "socket")
        paths.append(tasks.set_aside("t", f"v{version}"))
    assert len({p for p in paths if p is not None}) == 3
    assert [json.loads(p.read_text())["definition"] for p in paths if p is not None] == \
        [{"v": 1}, {"v": 2}, {"v": 3}]


def test_a_damaged_entry_is_set_aside_as_it_is(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    path = write_entry(tmp_path, b'{"name": "t", "defin', file=entry_file("t"))
    moved = tasks.set_aside("t", "damaged")
    assert moved is not None
    assert moved.read_bytes() == b'{"name": "t", "defin'
    assert not path.exists()


def test_a_temp_file_left_in_conflicts_is_removed_by_load(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    tasks.save("t", {}, "socket")
    moved = tasks.set_aside("t", "why")
    assert moved is not None
    (tmp_path / "conflicts" / ".fedcba9876543210.tmp").write_text("{")
    assert tasks.load() == ([], [])
    assert os.listdir(tmp_path / "conflicts") == [moved.name]


# --- two threads, and a killed writer --------------------------------------------------------------

def test_saves_from_two_threads_and_loads_meanwhile_all_succeed(tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path)
    failures: list[BaseException] = []
    problems: list[str] = []

    def saving(prefix: str) -> None:
        try:
            for i in range(100):
                tasks.save(f"{prefix}{i % 7}", {"i": i}, prefix)
                if i % 3 == 0:
                    tasks.remove(f"{prefix}{(i + 1) % 7}")
        except BaseException as exc:  # the assert below shows it
            failures.append(exc)

    threads = [threading.Thread(target=saving, args=(p,)) for p in ("socket", "kafka")]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        problems += tasks.load()[1]
    for thread in threads:
        thread.join()
    assert failures == []
    assert problems == []
    loaded, final_problems = tasks.load()
    assert final_problems == []
    assert all(t.definition["i"] % 7 == int(t.name[-1]) for t in loaded)


WRITER = """
import sys
from pathlib import Path
from otus_ebpf.control.store import TaskStore

tasks = TaskStore(Path(sys.argv[1]))
counter = int(sys.argv[2])
blob = "0123456789" * 20_000  # 200 KB: its write spans many kill points
tasks.save("big", {"counter": counter, "blob": blob, "last": counter}, "writer")
print("saved", flush=True)
while True:
    counter += 1
    tasks.save("big", {"counter": counter, "blob": blob, "last": counter}, "writer", paused=counter % 2 == 1)
    tasks.save("small", {"counter": counter}, "writer")
    tasks.remove("small")
"""


def test_a_writer_killed_at_any_point_leaves_a_store_that_loads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rounds = random.Random(20_240_611)
    for round_ in range(30):
        first = round_ * 1_000_000
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state), str(first)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "saved\n", writer.stderr.read() if writer.stderr else ""
            time.sleep(rounds.uniform(0, 0.05))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.communicate()
        assert writer.returncode == -signal.SIGKILL

        loaded, problems = TaskStore(state).load()  # the restarted daemon
        assert problems == []
        big = [t for t in loaded if t.name == "big"]
        assert len(big) == 1
        counter = big[0].definition["counter"]
        assert big[0].definition == {"counter": counter, "blob": "0123456789" * 20_000, "last": counter}
        assert counter >= first  # this round's first save was done before the kill
        assert big[0].paused == (counter % 2 == 1)
        assert [t.name for t in loaded] in (["big"], ["big", "small"])
        assert set(os.listdir(state / "tasks")) <= {entry_file("big"), entry_file("small")}


def test_a_stored_task_is_a_frozen_record() -> None:
    task = StoredTask("a", {}, "socket", False, 1)
    with pytest.raises(AttributeError):
        task.name = "b"  # type: ignore[misc]
