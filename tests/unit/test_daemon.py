"""Many tasks: apply/reload diffs leave unchanged tasks alone, a failed start
leaves the manager as it was, the control socket answers, SIGHUP reloads and
the daemon gives its signal handlers back. The kernel side is a stand-in."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from otus_ebpf.control.config import load
from otus_ebpf.control.daemon import run_daemon
from otus_ebpf.control.manager import TaskManager
from otus_ebpf.control.server import request
from otus_ebpf.control.task import live_changeable
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.settings import KernelSettings
from otus_ebpf.options import AttachOptions
from tests.support.frames import ethernet, ipv4, ring_record, udp
from tests.unit.test_sdp_calls import ANSWER, OFFER, message
from tests.unit.test_task import FakeOpener, as_root, sip_frames  # noqa: F401 - as_root: a fixture
from userspace.tunnel import TunnelKind


def write_config(path: Path, tmp: Path, lo_ports: str = "[5060]", third: bool = False,
                 snaplen: int = 2048, filters: str = "") -> Path:
    tasks = f"""
tasks:
  - name: one
    interfaces: [lo]
    mode: afpacket
    workers: 1
    filter: {{sip_ports: {lo_ports}, snaplen: {snaplen}{filters}}}
    outputs: {{jsonl: {{path: {tmp}/one.jsonl}}}}
  - name: two
    interfaces: [lo]
    mode: afpacket
    workers: 1
    outputs: {{jsonl: {{path: {tmp}/two.jsonl}}}}
"""
    if third:
        tasks += f"""  - name: three
    interfaces: [lo]
    mode: afpacket
    workers: 1
    outputs: {{jsonl: {{path: {tmp}/three.jsonl}}}}
"""
    path.write_text(f"metrics: {{listen: 'off'}}\ncontrol: {{socket: {tmp}/control.sock}}\n{tasks}")
    return path


@pytest.mark.usefixtures("as_root")
def test_a_changed_drop_list_and_dedup_window_are_made_live_by_a_reload(tmp_path: Path) -> None:
    path = write_config(tmp_path / "otus.yaml", tmp_path, filters=", drop_methods: [OPTIONS]")
    opener = FakeOpener(batches=[sip_frames(4)])
    manager = TaskManager(opener)
    try:
        manager.apply(load(path, {}))
        one = manager.get("one")
        assert one is not None and one.options.kernel.drop_methods == ("OPTIONS",)
        changed = ", drop_methods: [NOTIFY, '100'], dedup: true, dedup_window_ms: 20"
        result = manager.apply(load(write_config(path, tmp_path, filters=changed), {}))
        assert (result.reconfigured, result.restarted) == (["one"], [])
        assert manager.get("one") is one, "the same task, its capture told the new filters"
        before, after = cast(tuple[KernelSettings, KernelSettings], opener.captures[0].filters_changed)
        assert (before.drop_methods, before.dedup) == (("OPTIONS",), False)
        assert (after.drop_methods, after.dedup, after.dedup_window_ms) == (("NOTIFY", "100"), True, 20)
    finally:
        manager.stop_all()


@pytest.mark.usefixtures("as_root")
def test_apply_leaves_unchanged_tasks_alone_and_a_failed_start_changes_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path / "otus.yaml", tmp_path)
    manager = TaskManager(FakeOpener(batches=[sip_frames(4)]))
    try:
        first = manager.apply(load(path, {}))
        assert sorted(first.started) == ["one", "two"]
        one, two = manager.get("one"), manager.get("two")
        ports = manager.apply(load(write_config(path, tmp_path, lo_ports="[5080]"), {}))
        assert (ports.reconfigured, ports.restarted, ports.unchanged) == (["one"], [], ["two"])
        assert manager.get("one") is one, "a filter change is made live, in the same task"
        assert one is not None and one.options.kernel.sip_ports == (5080,)
        snaplen = manager.apply(load(write_config(path, tmp_path, lo_ports="[5080]", snaplen=512), {}))
        assert (snaplen.restarted, snaplen.unchanged) == (["one"], ["two"])
        assert manager.get("one") is not one
        assert manager.get("two") is two, "task two kept running: same task, same counters"
        bad = load(write_config(path, tmp_path, third=True), {})
        three = dataclasses.replace(bad.tasks[2], options=dataclasses.replace(bad.tasks[2].options,
                                                                              interfaces=("no-such-if9",)))
        failed = manager.apply(dataclasses.replace(bad, tasks=(*bad.tasks[:2], three)))
        assert "three" in failed.failed and "no-such-if9" in failed.failed["three"]
        assert sorted(t.name for t in manager.tasks()) == ["one", "two"]
        assert manager.get("two") is two
    finally:
        manager.stop_all()
    assert manager.tasks() == []


@pytest.mark.usefixtures("as_root")
def test_the_daemon_answers_on_its_socket_reloads_on_sighup_and_gives_back_its_handlers(
    tmp_path: Path
) -> None:
    path = write_config(tmp_path / "otus.yaml", tmp_path)
    socket_path = str(tmp_path / "control.sock")
    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    seen: dict[str, Any] = {}
    failures: list[BaseException] = []

    def client() -> None:
        try:
            deadline = time.monotonic() + 10
            while not Path(socket_path).exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            seen["mode"] = stat.S_IMODE(os.stat(socket_path).st_mode)
            deadline = time.monotonic() + 10
            while len(request(socket_path, {"cmd": "list"})["tasks"]) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            seen["list"] = request(socket_path, {"cmd": "list"})["tasks"]
            seen["status"] = request(socket_path, {"cmd": "status", "task": "one"})["task"]["state"]
            seen["stats"] = sorted(request(socket_path, {"cmd": "stats"})["stats"])
            seen["samples"] = [t["name"] for t in request(socket_path, {"cmd": "samples"})["tasks"]]
            with pytest.raises(SetupError, match="unknown command 'nope'"):
                request(socket_path, {"cmd": "nope"})
            with pytest.raises(SetupError, match="no task named 'ghost'"):
                request(socket_path, {"cmd": "delete", "task": "ghost"})
            write_config(path, tmp_path, third=True)
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 10
            while len(request(socket_path, {"cmd": "list"})["tasks"]) < 3:
                assert time.monotonic() < deadline, "SIGHUP did not add task three"
                time.sleep(0.05)
            request(socket_path, {"cmd": "delete", "task": "three"})
            seen["after_delete"] = sorted(t["name"] for t in request(socket_path, {"cmd": "list"})["tasks"])
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client)
    thread.start()
    assert run_daemon(path, FakeOpener()) == 0
    thread.join()
    assert not failures, failures
    assert seen["mode"] == 0o600
    assert [t["name"] for t in seen["list"]] == ["one", "two"]
    assert (seen["status"], seen["stats"], seen["samples"]) == ("running", ["one", "two"], ["one", "two"])
    assert seen["after_delete"] == ["one", "two"]
    assert {s: signal.getsignal(s) for s in handlers_before} == handlers_before
    assert not Path(socket_path).exists()


def test_an_invalid_config_stops_the_daemon_before_anything_starts(tmp_path: Path,
                                                                    logged: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tasks:\n  - name: a\n    interfaces: [lo]\n    workers: 0\n")
    assert run_daemon(path) == 2
    assert logged.messages == [f"{path}:4: tasks[0].workers: must be between 1 and 8, not 0"]


@pytest.mark.usefixtures("as_root")
def test_outputs_change_live_and_dialogs_survive_the_change(tmp_path: Path) -> None:
    path = tmp_path / "otus.yaml"
    path.write_text("tasks:\n  - {name: one, interfaces: [lo], mode: afpacket, workers: 1,\n"
                    f"     outputs: {{jsonl: {{path: {tmp_path}/one.jsonl}}}}}}\n")
    now = time.monotonic_ns()  # the task expires calls by this clock: the events must share it
    invite = ring_record(ethernet(ipv4(udp(message("INVITE sip:b@y SIP/2.0", "1 INVITE", OFFER)))), ts_ns=now)
    ok = ring_record(ethernet(ipv4(udp(message("SIP/2.0 200 OK", "1 INVITE", ANSWER, to_tag=";tag=t")),
                                   src="10.0.0.2", dst="10.0.0.1")), ts_ns=now + 1_000_000)
    bye = ring_record(ethernet(ipv4(udp(message("BYE sip:b@y SIP/2.0", "2 BYE", to_tag=";tag=t")))),
                      ts_ns=now + 2_000_000)
    opener = FakeOpener(batches=[[invite, ok]])
    manager = TaskManager(opener)
    try:
        manager.apply(load(path, {}))
        one = manager.get("one")
        assert one is not None
        deadline = time.monotonic() + 5
        while one.runner is not None and one.runner.pipeline.stats.records < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        moved = path.read_text().replace(f"{tmp_path}/one.jsonl", f"{tmp_path}/one-new.jsonl")
        path.write_text(moved)
        result = manager.apply(load(path, {}))
        assert (result.reconfigured, result.restarted) == (["one"], [])
        assert manager.get("one") is one
        opener.captures[0].batches.append([bye])
        deadline = time.monotonic() + 5
        while one.runner is not None and one.runner.pipeline.stats.records < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        manager.stop_all()
    old = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    new = [json.loads(line) for line in (tmp_path / "one-new.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in old] == ["sip", "sip"]
    assert [r["kind"] for r in new] == ["sip", "call"]
    assert new[1]["end_cause"] == "bye" and new[1]["answer_ms"] is not None, "it began before the change"


def test_a_reload_that_changes_the_tunnels_restarts_the_task_and_one_of_the_filters_does_not() -> None:
    """Every worker's pipeline reads a tunnelled record's outer headers with the tunnel
    settings: changing them live would leave those stale."""
    before = AttachOptions(("lo",))
    for changed in ({"decap": frozenset({TunnelKind.GRE})}, {"vxlan_ports": (8472,)}):
        after = dataclasses.replace(before, kernel=dataclasses.replace(before.kernel, **changed))
        assert not live_changeable(before, after), changed
    exclude = dataclasses.replace(before.kernel, exclude=(ipaddress.ip_network("10.9.0.0/16"),))
    assert live_changeable(before, dataclasses.replace(before, kernel=exclude))
