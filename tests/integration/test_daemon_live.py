"""The daemon in the lab: tasks on the UAS namespace's two veth interfaces
(uas0 and uas1, eBPF) and on lo (AF_PACKET), sipp calls on both veths and
crafted SIP datagrams on lo; the control socket answers task list/status
and stats; a SIGHUP that adds a SIP port to one task changes its filter live
(no restart, the new port is captured) and leaves the others alone, their
counters running on; /metrics agrees with the records written."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support import netns
from tests.support.agent import read_records
from tests.support.broker import free_port
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.procs import Background
from tests.support.sip_samples import sip_message
from tests.support.sipp import run_calls
from tests.unit.test_metrics import scrape

CALLS = 10
LOOPBACK_MESSAGES = 12
START_TIMEOUT_S = 60.0


def config(tmp: Path, lab: Lab, metrics_port: int, loop_ports: str) -> str:
    return f"""
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
control: {{socket: {tmp}/control.sock}}
tasks:
  - name: sip
    interfaces: [{lab.uas_if}]
    workers: 1
    outputs: {{jsonl: {{path: {tmp}/sip.jsonl}}}}
  - name: second
    interfaces: [uas1]
    workers: 1
    outputs: {{jsonl: {{path: {tmp}/second.jsonl}}}}
  - name: loop
    interfaces: [lo]
    mode: afpacket
    direction: ingress
    workers: 1
    filter: {{sip_ports: {loop_ports}}}
    outputs: {{jsonl: {{path: {tmp}/loop.jsonl}}}}
"""


def send_on_loopback(lab: Lab, count: int, tag: str, port: int = 5060) -> None:
    with netns.inside(lab.uas_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(count):
            sender.sendto(sip_message("OPTIONS sip:lo SIP/2.0", [
                f"Call-ID: {tag}-{n}", "From: <sip:a@lo>;tag=1", "To: <sip:b@lo>", f"CSeq: {n} OPTIONS"]),
                ("127.0.0.1", port))


def cli(lab: Lab, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.uas_ns, str(AGENT), *args], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def test_two_tasks_a_control_socket_a_reload_and_metrics(lab: Lab, tmp_path: Path) -> None:
    port = free_port(lab.uas_ns)
    path = tmp_path / "otus.yaml"
    path.write_text(config(tmp_path, lab, port, "[5060]"))
    sock = str(tmp_path / "control.sock")
    daemon = Background([str(AGENT), "daemon", "-c", str(path)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("3 task(s) running", START_TIMEOUT_S)
        run_calls(lab, CALLS, "u1", tmp_path)
        run_calls(lab.second_link(), CALLS, "u1", tmp_path)
        send_on_loopback(lab, LOOPBACK_MESSAGES, "before")
        time.sleep(1.0)
        listing = cli(lab, "task", "list", "--socket", sock)
        rows = [line.split()[:2] for line in listing.splitlines()]
        assert rows == [["sip", "running"], ["second", "running"], ["loop", "running"]]
        assert "sip: running on uas0" in cli(lab, "task", "status", "sip", "--socket", sock)
        assert "loop: " in cli(lab, "stats", "--socket", sock)
        with netns.inside(lab.uas_ns):
            before = scrape(f"127.0.0.1:{port}")

        path.write_text(config(tmp_path, lab, port, "[5060, 5070]"))  # only the loop task changes
        daemon.send_signal(signal.SIGHUP)
        daemon.wait_for_output("reconfigured ['loop']", 30)
        assert "unchanged ['sip', 'second']" in daemon.output()
        run_calls(lab, CALLS, "u1", tmp_path)
        run_calls(lab.second_link(), CALLS, "u1", tmp_path)
        send_on_loopback(lab, LOOPBACK_MESSAGES, "after", port=5070)  # the port the reload added
        time.sleep(1.5)
        with netns.inside(lab.uas_ns):
            after = scrape(f"127.0.0.1:{port}")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()

    sip = ("task", "sip")
    seen = (("capturer", "kernel"), ("counter", "ingress_seen"), sip)
    assert after["otus_capture_packets_total", seen] > before["otus_capture_packets_total", seen] > 0
    assert after["otus_calls_total", (("outcome", "ended"), sip)] == 2 * CALLS, "the sip task ran on"
    sip_records = read_records(tmp_path / "sip.jsonl")
    assert after["otus_records_total", (sip,)] == len(sip_records)
    second = ("task", "second")
    second_records = read_records(tmp_path / "second.jsonl")
    assert after["otus_calls_total", (("outcome", "ended"), second)] == 2 * CALLS
    assert after["otus_records_total", (second,)] == len(second_records)
    assert {r["dst"] for r in second_records if r["kind"] == "sip"} <= {"10.78.0.1", "10.78.0.2"}
    loop_records = [r for r in read_records(tmp_path / "loop.jsonl") if r["kind"] == "sip"]
    assert sorted(r["call_id"] for r in loop_records) == sorted(
        [f"before-{n}" for n in range(LOOPBACK_MESSAGES)] + [f"after-{n}" for n in range(LOOPBACK_MESSAGES)])
    assert not Path(sock).exists(), "the control socket went with the daemon"


def test_paused_tasks_take_nothing_and_resume_where_they_were(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "otus.yaml"
    path.write_text(config(tmp_path, lab, free_port(lab.uas_ns), "[5060]"))
    sock = str(tmp_path / "control.sock")
    daemon = Background([str(AGENT), "daemon", "-c", str(path)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("3 task(s) running", START_TIMEOUT_S)
        for task in ("sip", "loop"):
            assert f"task {task}: paused" in cli(lab, "task", "pause", task, "--socket", sock)
        assert [line.split()[1] for line in cli(lab, "task", "list", "--socket", sock).splitlines()] == \
            ["paused", "running", "paused"]
        run_calls(lab, 3, "u1", tmp_path)
        send_on_loopback(lab, LOOPBACK_MESSAGES, "paused")
        time.sleep(1.0)
        for task in ("sip", "loop"):
            cli(lab, "task", "resume", task, "--socket", sock)
        run_calls(lab, 3, "u1", tmp_path)
        send_on_loopback(lab, LOOPBACK_MESSAGES, "resumed")
        time.sleep(1.5)
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
    sip_calls = {r["call_id"] for r in read_records(tmp_path / "sip.jsonl") if r["kind"] == "sip"}
    assert len(sip_calls) == 3, "only the calls made after resume"
    loop_ids = sorted(r["call_id"] for r in read_records(tmp_path / "loop.jsonl") if r["kind"] == "sip")
    assert loop_ids == sorted(f"resumed-{n}" for n in range(LOOPBACK_MESSAGES))


def test_two_tasks_on_one_interface_with_different_filters(lab: Lab, tmp_path: Path) -> None:
    """AF_PACKET tasks each have their own sockets, so they can share an interface
    (eBPF tasks cannot: an interface has one XDP hook, and a second one is refused)."""
    sock = tmp_path / "control.sock"
    path = tmp_path / "otus.yaml"
    path.write_text(f"""
metrics: {{listen: "off"}}
control: {{socket: {sock}}}
tasks:
  - {{name: calls, interfaces: [{lab.uas_if}], mode: afpacket, workers: 1, filter: {{sip_ports: [5060]}},
     outputs: {{jsonl: {{path: {tmp_path}/calls.jsonl}}}}}}
  - {{name: other, interfaces: [{lab.uas_if}], mode: afpacket, workers: 1, filter: {{sip_ports: [5070]}},
     outputs: {{jsonl: {{path: {tmp_path}/other.jsonl}}}}}}
""")
    daemon = Background([str(AGENT), "daemon", "-c", str(path)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("2 task(s) running", START_TIMEOUT_S)
        run_calls(lab, CALLS, "u1", tmp_path)
        with netns.inside(lab.uac_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for n in range(LOOPBACK_MESSAGES):
                sender.sendto(sip_message("OPTIONS sip:o SIP/2.0", [
                    f"Call-ID: other-{n}", "From: <sip:a@o>;tag=1", "To: <sip:b@o>", f"CSeq: {n} OPTIONS"]),
                    (lab.uas_v4, 5070))
        time.sleep(1.5)
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
    calls = [r for r in read_records(tmp_path / "calls.jsonl") if r["kind"] == "sip"]
    other = [r for r in read_records(tmp_path / "other.jsonl") if r["kind"] == "sip"]
    assert len({r["call_id"] for r in calls}) == CALLS and all(r["dport"] == 5060 or r["sport"] == 5060
                                                                for r in calls)
    assert sorted(r["call_id"] for r in other) == sorted(f"other-{n}" for n in range(LOOPBACK_MESSAGES))


def test_an_operators_filter_changes_survive_pause_resume_and_reload(lab: Lab, tmp_path: Path) -> None:
    """`otus-ebpf filter` writes the maps from outside; the agent kept its own copy of the
    flags and wrote it back on pause, resume and reload, undoing the operator's change."""
    sock = str(tmp_path / "control.sock")
    path = tmp_path / "otus.yaml"

    def write_config(ports: str) -> None:
        path.write_text(f"""
metrics: {{listen: "off"}}
control: {{socket: {sock}}}
tasks:
  - {{name: edge, interfaces: [{lab.uas_if}], workers: 1, filter: {{sip_ports: {ports}}},
     outputs: {{jsonl: {{path: {tmp_path}/edge.jsonl}}}}}}
""")

    write_config("[5060]")
    daemon = Background([str(AGENT), "daemon", "-c", str(path)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("1 task(s) running", START_TIMEOUT_S)
        cli(lab, "filter", lab.uas_if, "--signature", "on", "--add-exclude", "192.0.2.0/24",
            "--add-sip-port", "5080", "--add-drop-method", "NOTIFY")
        cli(lab, "task", "pause", "edge", "--socket", sock)
        cli(lab, "task", "resume", "edge", "--socket", sock)
        write_config("[5060, 5062]")  # the reload changes the ports the file names, and only those
        daemon.send_signal(signal.SIGHUP)
        daemon.wait_for_output("reconfigured ['edge']", START_TIMEOUT_S)
        shown = cli(lab, "filter", lab.uas_if).splitlines()
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
    assert shown[:4] == ["sip ports  5060 5062 5080", "signature  on", "include    -",
                         "exclude    192.0.2.0/24"], shown
    assert "drop       NOTIFY" in shown
    assert shown[-1] == "capture    running"
