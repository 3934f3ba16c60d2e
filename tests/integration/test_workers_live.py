"""Worker processes on the lab: SIP from eight hosts spreads over two
workers, each writes its own file, the parent's final figures add them up,
and nothing is lost or counted twice."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from otus_ebpf import netns
from tests.support.agent import final_stats, read_records, start_agent
from tests.support.broker import free_port
from tests.support.lab import Lab
from tests.support.sip_samples import sip_message
from tests.unit.test_metrics import scrape

HOSTS = [f"10.77.0.{n}" for n in range(20, 28)]
PER_HOST = 50


def send_from(lab: Lab, hosts: list[str]) -> None:
    with netns.inside(lab.uac_ns):
        for host in hosts:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.bind((host, 5060))
                for n in range(PER_HOST):
                    sender.sendto(sip_message("OPTIONS sip:w SIP/2.0", [
                        f"Call-ID: {host}-{n}", "From: <sip:a@w>;tag=1", "To: <sip:b@w>",
                        f"CSeq: {n} OPTIONS"]), (lab.uas_v4, 5060))


def test_two_workers_share_the_hosts_and_lose_nothing(lab: Lab, tmp_path: Path) -> None:
    lab.add_uac_addresses(HOSTS)
    out = tmp_path / "sip.jsonl"
    port = free_port(lab.uas_ns)
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "--metrics", f"127.0.0.1:{port}"])
    assert "2 worker process(es)" in agent.output()
    try:
        send_from(lab, HOSTS)
        time.sleep(1.5)  # two worker reports
        with netns.inside(lab.uas_ns):
            page = scrape(f"127.0.0.1:{port}")
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    task = ("task", "attach")
    per_worker_metric = [page["otus_worker_events_total", (task, ("worker", w))] for w in ("w0", "w1")]
    assert sum(per_worker_metric) == page["otus_events_total", (task,)] == len(HOSTS) * PER_HOST
    assert [page["otus_worker_up", (task, ("worker", w))] for w in ("w0", "w1")] == [1, 1]
    files = sorted(tmp_path.glob("sip.w*.jsonl"))
    assert [f.name for f in files] == ["sip.w0.jsonl", "sip.w1.jsonl"]
    per_worker = [len(f.read_text().splitlines()) for f in files]
    assert all(per_worker), f"both workers had hosts to serve: {per_worker}"
    records = read_records(out)
    assert sorted(r["call_id"] for r in records) == sorted(f"{h}-{n}" for h in HOSTS for n in range(PER_HOST))
    stats = final_stats(agent)
    assert stats["records"] == len(records) == sum(per_worker)
    assert stats["ingress_submitted"] == stats["events"] == len(HOSTS) * PER_HOST


@pytest.mark.parametrize(("strategy", "hosts"), [("round-robin", HOSTS[:1]), ("flow-hash", HOSTS)])
def test_one_reader_dispatches_to_two_workers(lab: Lab, tmp_path: Path, strategy: str,
                                              hosts: list[str]) -> None:
    lab.add_uac_addresses(hosts)
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "--dispatch", "dispatch", "--strategy", strategy])
    assert f"1 ring dispatched ({strategy}) to 2 worker process(es)" in agent.output()
    try:
        send_from(lab, hosts)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    per_worker = [len(f.read_text().splitlines()) for f in sorted(tmp_path.glob("sip.w*.jsonl"))]
    assert len(per_worker) == 2 and all(per_worker), f"both workers got events: {per_worker}"
    records = read_records(out)
    assert sorted(r["call_id"] for r in records) == sorted(f"{h}-{n}" for h in hosts for n in range(PER_HOST))
    assert final_stats(agent)["events"] == len(hosts) * PER_HOST


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_exit_when_their_parent_is_killed(lab: Lab, tmp_path: Path) -> None:
    """Regression: after a SIGKILL of the parent, workers stayed, ignored SIGTERM and kept
    the BPF maps (each held the parent's end of its own control pipe, so never saw EOF)."""
    agent = start_agent(lab.uas_ns, lab.uas_if, tmp_path / "sip.jsonl", tmp_path / "agent.log",
                        ["--workers", "2"])
    workers = children_of(agent.pid)
    assert len(workers) == 2
    agent.send_signal(signal.SIGKILL)
    agent.stop()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, "the workers outlived their parent"
        time.sleep(0.05)
    programs = lab.run(lab.uas_ns, "ip", "link", "show", lab.uas_if).stdout
    assert "xdp" not in programs, "nothing holds the BPF links any more"


def test_a_worker_that_dies_is_said_counted_and_started_again(lab: Lab, tmp_path: Path) -> None:
    lab.add_uac_addresses(HOSTS)
    out = tmp_path / "sip.jsonl"
    port = free_port(lab.uas_ns)
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "--metrics", f"127.0.0.1:{port}"])
    try:
        (first, second) = children_of(agent.pid)
        os.kill(first, signal.SIGKILL)
        agent.wait_for_output("restarted (pid", 15)
        assert "worker 0 failed: exited with status -9; restarting it in 1 s" in agent.output()
        children = children_of(agent.pid)
        assert len(children) == 2 and second in children, (children, agent.output())
        time.sleep(1.0)
        send_from(lab, HOSTS)  # both shards have hosts: the restarted worker serves its ring again
        time.sleep(1.5)
        with netns.inside(lab.uas_ns):
            page = scrape(f"127.0.0.1:{port}")
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    task = ("task", "attach")
    assert page["otus_worker_restarts_total", (task,)] == 1
    assert [page["otus_worker_up", (task, ("worker", w))] for w in ("w0", "w1")] == [1, 1]
    records = read_records(out)
    assert sorted(r["call_id"] for r in records) == sorted(f"{h}-{n}" for h in HOSTS for n in range(PER_HOST))
