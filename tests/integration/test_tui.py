"""The interactive live view in a real terminal (tmux, with its own server
socket): `otus-ebpf attach` while sipp calls run across the lab, and `otus-ebpf
top` against a daemon. The call list must show the calls, a call's ladder its
messages in order, a message its text; each screen is printed into the test's
output and kept beside its records."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
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
        # Without COLUMNS/LINES: a program in the pane must read the pane's own size.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run(["tmux", "-L", self.socket, *args], check=check, capture_output=True,
                              text=True, env=env).stdout

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
                with contextlib.suppress(ProcessLookupError):  # a pane kept after its command ended
                    os.kill(int(pid), signal.SIGTERM)
        terminal.run("kill-server", check=False)


def rate(screen: str, label: str) -> float:
    match = re.search(rf"{label} (\d[\d,]*)", screen)
    return float(match.group(1).replace(",", "")) if match else 0.0


LADDER = ["INVITE", "100 Trying", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"]
_LABEL = re.compile(r"^(INVITE|ACK|BYE|CANCEL|\d{3} [A-Za-z ]+?)( \(retransmission\))?$")


def ladder_labels(screen: str) -> list[str]:
    """The messages of a ladder on the screen, top to bottom (retransmissions left out)."""
    labels = []
    for line in screen.splitlines():
        label = re.sub(r"[│├┤▶◀─▊▎\s]+", " ", line).strip()  # the ladder's lines and its border
        match = _LABEL.match(label)
        if match is not None and match.group(2) is None:
            labels.append(match.group(1))
    return labels


def wait_for(tmux: Tmux, ready: Callable[[str], bool], what: str, timeout: float = START_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux.screen()
        if ready(screen):
            return screen
        assert time.monotonic() < deadline and tmux.alive(), f"{what}:\n{screen}"
        time.sleep(0.25)


def keep(tmp_path: Path, name: str, screen: str) -> None:
    (tmp_path / f"{name}.txt").write_text(screen)
    print(f"--- {name} ---\n{screen}")


def ended_rows(screen: str) -> int:
    return sum(1 for line in screen.splitlines() if re.search(r"\bINVITE\b.*\bended\b.*\b200\b", line))


def walk_a_call(tmux: Tmux, tmp_path: Path, calls: int) -> None:
    """List (every call ended) -> ladder of the highlighted call -> its INVITE -> back to the list."""
    listed = wait_for(tmux, lambda s: ended_rows(s) >= calls, f"the list does not show {calls} ended calls")
    keep(tmp_path, "list", listed)
    tmux.run("send-keys", "-t", tmux.session, "Enter")
    ladder = wait_for(tmux, lambda s: ladder_labels(s) == LADDER, "no ladder of the call")
    keep(tmp_path, "ladder", ladder)
    tmux.run("send-keys", "-t", tmux.session, "Enter")
    message = wait_for(tmux, lambda s: "Call-ID:" in s and "INVITE sip:" in s, "no message text")
    keep(tmp_path, "message", message)
    tmux.run("send-keys", "-t", tmux.session, "Escape")
    wait_for(tmux, lambda s: ladder_labels(s) == LADDER, "not back on the ladder")
    tmux.run("send-keys", "-t", tmux.session, "Escape")
    wait_for(tmux, lambda s: ended_rows(s) >= calls, "not back on the list")


def stopped(tmux: Tmux, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while tmux.alive():
        assert time.monotonic() < deadline, f"the view did not end:\n{tmux.screen()}"
        time.sleep(0.2)


def test_attach_view_lists_the_calls_and_draws_a_ladder(lab: Lab, tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "sip.jsonl"
    command = f"ip netns exec {lab.uas_ns} {AGENT} attach {lab.uas_if} --out {out} --metrics off"
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "200", "-y", "50", "-c", str(tmp_path),
             f"env -u COLUMNS -u LINES {command}")
    wait_for(tmux, lambda s: "packets/s" in s and "Call-ID" in s, "no live view")

    sipp = threading.Thread(target=run_calls, args=(lab, CALLS, "u1", tmp_path), kwargs={"rate": 5})
    sipp.start()
    busiest = ""
    while sipp.is_alive():
        screen = tmux.screen()
        if rate(screen, "SIP msg/s") > rate(busiest, "SIP msg/s"):
            busiest = screen
        time.sleep(0.25)
    sipp.join()
    assert rate(busiest, "SIP msg/s") > 0 and rate(busiest, "packets/s") > 0, busiest
    walk_a_call(tmux, tmp_path, CALLS)
    final = wait_for(tmux, lambda s: rate(s, "calls ended") == CALLS, "the dashboard's count")
    assert rate(final, "SIP messages") == len([r for r in read_records(out) if r["kind"] == "sip"]), final

    tmux.run("send-keys", "-t", tmux.session, "q")  # the view's quit stops the capture too
    stopped(tmux)
    assert sum(1 for r in read_records(out) if r["kind"] == "call") == CALLS, "stopped cleanly, flushed"


def test_top_lists_a_daemons_calls_and_draws_a_ladder(lab: Lab, tmux: Tmux, tmp_path: Path) -> None:
    config = tmp_path / "otus.yaml"
    sock = tmp_path / "control.sock"
    config.write_text(f"metrics: {{listen: 'off'}}\ncontrol: {{socket: {sock}}}\ntasks:\n"
                      f"  - {{name: edge, interfaces: [{lab.uas_if}], workers: 1,\n"
                      f"      outputs: {{jsonl: {{path: {tmp_path}/edge.jsonl}}}}}}\n")
    daemon = Background([str(AGENT), "daemon", "-c", str(config)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("1 task(s) running", START_TIMEOUT_S)
        tmux.run("new-session", "-d", "-s", tmux.session, "-x", "200", "-y", "50", "-c", str(tmp_path),
                 f"env -u COLUMNS -u LINES {AGENT} top --socket {sock}")
        wait_for(tmux, lambda s: "edge running" in s, "top shows no task")
        run_calls(lab, CALLS, "u1", tmp_path)  # calls from the view's first look on are kept
        walk_a_call(tmux, tmp_path, CALLS)
        screen = wait_for(tmux, lambda s: rate(s, "calls ended") == CALLS, "the dashboard's count")
        assert rate(screen, "SIP messages") == CALLS * 7 and "edge" in screen, screen
        tmux.run("send-keys", "-t", tmux.session, "q")
        stopped(tmux)
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()


def agent_pid(marker: str, timeout: float = START_TIMEOUT_S) -> int:
    """The agent whose command line holds ``marker`` (its output file)."""
    deadline = time.monotonic() + timeout
    while True:
        pattern = rf"^\S*python\S* \S*otus-ebpf attach .*{marker}"  # not its shell
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                               check=False).stdout.split()
        if found:
            return int(found[0])
        assert time.monotonic() < deadline, f"no agent with {marker}"
        time.sleep(0.2)


def gone(pid: int, timeout: float = 20.0) -> bool:
    """The process ended: no longer there, or a zombie its parent (tmux, which keeps the
    dead pane) has not reaped yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["SIGINT", "hang-up"])
def test_attach_with_its_view_stops_cleanly_on_a_signal_and_on_a_hang_up(lab: Lab, tmux: Tmux, tmp_path: Path,
                                                                         how: str) -> None:
    """The view is a process of its own: a signal to the agent closes it and gives the
    terminal back (the agent's held lines printed after); a terminal that hangs up
    leaves nothing running and nothing attached."""
    out = tmp_path / f"stop-{how}.jsonl"
    command = f"env -u COLUMNS -u LINES ip netns exec {lab.uas_ns} {AGENT} attach {lab.uas_if} --out {out}"
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "200", "-y", "50", "-c", str(tmp_path),
             f"{command} --metrics off")
    tmux.run("set-option", "-t", tmux.session, "remain-on-exit", "on")
    wait_for(tmux, lambda s: "packets/s" in s and "Call-ID" in s, "no live view")
    pid = agent_pid(str(out))
    views = subprocess.run(["pgrep", "-P", str(pid), "-f", "otus_ebpf.view"], capture_output=True, text=True,
                           check=False).stdout.split()
    assert len(views) == 1, "the view runs as the agent's child process"
    if how == "SIGINT":
        os.kill(pid, signal.SIGINT)
        assert gone(pid), f"the agent did not stop on SIGINT:\n{tmux.screen()}"
        screen = wait_for(tmux, lambda s: "records: " in s, "the agent's last lines, after the view")
        keep(tmp_path, "after-sigint", screen)
        assert "capturing:" in screen and "stopping: detaching" in screen, screen
        assert "Call-ID" not in screen, "the view gave the terminal back"
    else:
        tmux.run("kill-server")
        assert gone(pid), "the agent did not stop when its terminal hung up"
    assert gone(int(views[0]), 5.0), "the view is gone too"
    links = subprocess.run(["ip", "-n", lab.uas_ns, "link", "show", lab.uas_if], capture_output=True,
                           text=True, check=True).stdout
    assert "xdp" not in links, links
    assert out.exists(), "the outputs were opened and closed"
