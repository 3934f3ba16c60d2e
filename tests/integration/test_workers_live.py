"""Worker processes on the lab: SIP from eight hosts spreads over two
workers, their records go to the one file the operator named (or a file
each, on request), the parent's final figures add them up, and nothing is
lost or counted twice."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.agent import final_stats, read_records, start_agent
from tests.support.broker import free_port
from tests.support.lab import Lab
from tests.support.procs import Background
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
    assert all(per_worker_metric), f"both workers had hosts to serve: {per_worker_metric}"
    assert [page["otus_worker_up", (task, ("worker", w))] for w in ("w0", "w1")] == [1, 1]
    assert not list(tmp_path.glob("sip.w*.jsonl")), "one file, as asked: no per-worker files"
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line valid JSON, none cut or interleaved
    assert sorted(r["call_id"] for r in records) == sorted(f"{h}-{n}" for h in HOSTS for n in range(PER_HOST))
    stats = final_stats(agent)
    assert stats["records"] == len(records)
    assert stats["ingress_submitted"] == stats["events"] == len(HOSTS) * PER_HOST
    assert "records: 400 produced; jsonl written=400 to_fallback=0 lost=0" in agent.output()


def test_per_worker_files_on_request(lab: Lab, tmp_path: Path) -> None:
    lab.add_uac_addresses(HOSTS)
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--workers", "2", "--per-worker-files"])
    try:
        send_from(lab, HOSTS)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    files = sorted(tmp_path.glob("sip.w*.jsonl"))
    assert [f.name for f in files] == ["sip.w0.jsonl", "sip.w1.jsonl"]
    assert not out.exists()
    per_worker = [len(f.read_text().splitlines()) for f in files]
    assert all(per_worker), f"both workers had hosts to serve: {per_worker}"
    assert sum(per_worker) == final_stats(agent)["records"] == len(HOSTS) * PER_HOST


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
    forwarded = [int(n) for n in re.findall(r"w[01]-jsonl-forward written=(\d+)", final_line(agent))]
    assert len(forwarded) == 2 and all(forwarded), f"both workers got events: {forwarded}"
    records = read_records(out)
    assert sorted(r["call_id"] for r in records) == sorted(f"{h}-{n}" for h in hosts for n in range(PER_HOST))
    assert final_stats(agent)["events"] == len(hosts) * PER_HOST


def final_line(agent: Background) -> str:
    return [line for line in agent.output().splitlines() if line.startswith("otus-ebpf: ")][-1]


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
        assert time.monotonic() < deadline, f"the workers outlived their parent: {agent.output()[-4000:]}"
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
