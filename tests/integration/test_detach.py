"""Nothing of ours stays attached after the agent ends: SIGTERM, SIGKILL, or
(netlink attach) after `otus-ebpf detach`."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from otus_ebpf.kernel.bpfsys import AttachType, query_program_ids
from tests.support import netns
from tests.support.agent import start_agent
from tests.support.lab import Lab
from tests.support.paths import AGENT

DETACH_WAIT_S = 5.0


def xdp_attached(lab: Lab) -> bool:
    shown = lab.run(lab.uas_ns, "ip", "-d", "link", "show", lab.uas_if).stdout
    return "prog/xdp" in shown


def tc_egress_programs(lab: Lab) -> int:
    with netns.inside(lab.uas_ns):
        ifindex = socket.if_nametoindex(lab.uas_if)
        tcx = len(query_program_ids(ifindex, AttachType.TCX_EGRESS))
    clsact = lab.run(lab.uas_ns, "tc", "filter", "show", "dev", lab.uas_if, "egress").stdout
    return tcx + sum(1 for line in clsact.splitlines() if "name tc_egress" in line)


def wait_detached(lab: Lab) -> None:
    deadline = time.monotonic() + DETACH_WAIT_S
    while time.monotonic() < deadline and (xdp_attached(lab) or tc_egress_programs(lab)):
        time.sleep(0.05)
    assert not xdp_attached(lab), "XDP program still attached"
    assert tc_egress_programs(lab) == 0, "TC egress program still attached"


def test_sigterm_exits_zero_and_detaches(lab: Lab, tmp_path: Path) -> None:
    agent = start_agent(lab.uas_ns, lab.uas_if, tmp_path / "out.jsonl", tmp_path / "agent.log")
    assert xdp_attached(lab)
    assert tc_egress_programs(lab) == 1
    assert agent.stop(signal.SIGTERM) == 0, agent.output()
    wait_detached(lab)


def test_sigkill_leaves_nothing_attached(lab: Lab, tmp_path: Path) -> None:
    agent = start_agent(lab.uas_ns, lab.uas_if, tmp_path / "out.jsonl", tmp_path / "agent.log",
                        ["--attach-method", "link"])
    assert xdp_attached(lab)
    assert tc_egress_programs(lab) == 1
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_detached(lab)


def test_detach_removes_what_a_killed_netlink_agent_left(lab: Lab, tmp_path: Path) -> None:
    agent = start_agent(lab.uas_ns, lab.uas_if, tmp_path / "out.jsonl", tmp_path / "agent.log",
                        ["--attach-method", "netlink", "--xdp-mode", "generic"])
    assert "netlink" in agent.output()
    agent.stop(signal.SIGKILL)
    assert xdp_attached(lab), "a netlink attach should survive the process"
    assert tc_egress_programs(lab) == 1

    result = lab.run(lab.uas_ns, str(AGENT), "detach", lab.uas_if)
    assert "removed XDP program" in result.stderr
    wait_detached(lab)
    again = lab.run(lab.uas_ns, str(AGENT), "detach", lab.uas_if)
    assert "nothing of otus-ebpf attached" in again.stderr


def test_detach_leaves_a_foreign_xdp_program_alone(lab: Lab) -> None:
    from bcc import BPF
    from pyroute2 import IPRoute

    foreign = BPF(text=b"int someone_else(struct xdp_md *ctx) { return XDP_PASS; }")
    fd = foreign.load_func(b"someone_else", BPF.XDP).fd
    with netns.inside(lab.uas_ns), IPRoute() as ipr:
        ifindex = socket.if_nametoindex(lab.uas_if)
        ipr.link("set", index=ifindex, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", 2)]})
    try:
        result = lab.run(lab.uas_ns, str(AGENT), "detach", lab.uas_if)
        assert "nothing of otus-ebpf attached" in result.stderr
        assert xdp_attached(lab), "detach removed a program that is not ours"
    finally:
        foreign.cleanup()


@pytest.mark.parametrize("workers", ["1", "2"], ids=["in-process", "worker-processes"])
def test_unreachable_broker_fails_before_attaching(lab: Lab, tmp_path: Path, workers: str) -> None:
    result = subprocess.run(
        ["ip", "netns", "exec", lab.uas_ns, str(AGENT), "attach", lab.uas_if, "--workers", workers,
         "--out", str(tmp_path / "o.jsonl"), "--kafka", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("otus-ebpf: error:")]
    assert len(errors) == 1 and "unreachable" in errors[0], result.stderr
    assert "writing records" not in result.stderr and list(tmp_path.iterdir()) == [], "nothing created"
    assert not xdp_attached(lab)
    assert tc_egress_programs(lab) == 0
