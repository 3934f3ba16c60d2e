"""The live view: `otus-ebpf attach` in a real terminal (tmux, with its own
server socket) while sipp calls run across the lab; the screen must show
non-zero rates and the calls."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import read_records
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.procs import Background
from tests.support.sipp import run_calls

CALLS = 20
START_TIMEOUT_S = 30.0


class Tmux:
    def __init__(self) -> None:
        self.socket = f"otus-test-{os.getpid()}"
        self.session = "agent"

    def run(self, *args: str, check: bool = True) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=check, capture_output=True,
                              text=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", self.session],
                              check=False, capture_output=True).returncode == 0


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    terminal = Tmux()
    try:
        yield terminal
    finally:
        if terminal.alive():
            pid = terminal.run("display-message", "-p", "-t", terminal.session, "#{pane_pid}", check=False)
            if pid.strip().isdigit():
                os.kill(int(pid), signal.SIGTERM)
        terminal.run("kill-server", check=False)


def rate(screen: str, label: str) -> float:
    match = re.search(rf"{label} (\d[\d,]*)", screen)
    return float(match.group(1).replace(",", "")) if match else 0.0


def test_the_live_view_shows_rates_and_calls_under_traffic(lab: Lab, tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "sip.jsonl"
    command = f"ip netns exec {lab.uas_ns} {AGENT} attach {lab.uas_if} --out {out} --metrics off"
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "200", "-y", "50", command)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "packets/s" not in tmux.screen():
        assert time.monotonic() < deadline and tmux.alive(), f"no live view:\n{tmux.screen()}"
        time.sleep(0.2)

    calls = threading.Thread(target=run_calls, args=(lab, CALLS, "u1", tmp_path), kwargs={"rate": 5})
    calls.start()
    busiest = ""
    while calls.is_alive():
        screen = tmux.screen()
        if rate(screen, "SIP msg/s") > rate(busiest, "SIP msg/s"):
            busiest = screen
        time.sleep(0.25)
    calls.join()
    time.sleep(1.5)
    final = tmux.screen()
    (tmp_path / "screen.txt").write_text(final)

    assert rate(busiest, "SIP msg/s") > 0 and rate(busiest, "packets/s") > 0, busiest
    assert rate(final, "calls ended") == CALLS, final
    assert rate(final, "SIP messages") == len([r for r in read_records(out) if r["kind"] == "sip"]), final
    assert ("latest SIP" in final and "BYE" in final) or "200 OK" in final, final

    tmux.run("send-keys", "-t", tmux.session, "C-c")
    deadline = time.monotonic() + 20
    while tmux.alive():
        assert time.monotonic() < deadline, "the agent did not stop on ^C"
        time.sleep(0.2)


def test_top_shows_a_running_daemon(lab: Lab, tmux: Tmux, tmp_path: Path) -> None:
    config = tmp_path / "otus.yaml"
    sock = tmp_path / "control.sock"
    config.write_text(f"metrics: {{listen: 'off'}}\ncontrol: {{socket: {sock}}}\ntasks:\n"
                      f"  - {{name: edge, interfaces: [{lab.uas_if}], workers: 1,\n"
                      f"      outputs: {{jsonl: {{path: {tmp_path}/edge.jsonl}}}}}}\n")
    daemon = Background([str(AGENT), "daemon", "-c", str(config)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("1 task(s) running", START_TIMEOUT_S)
        run_calls(lab, CALLS, "u1", tmp_path)
        tmux.run("new-session", "-d", "-s", tmux.session, "-x", "200", "-y", "50",
                 f"{AGENT} top --socket {sock}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while rate(tmux.screen(), "calls ended") < CALLS:
            assert time.monotonic() < deadline and tmux.alive(), f"top shows no calls:\n{tmux.screen()}"
            time.sleep(0.2)
        screen = tmux.screen()
        assert "edge running" in screen and rate(screen, "SIP messages") == CALLS * 7, screen
        tmux.run("send-keys", "-t", tmux.session, "C-c")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
