"""Two daemons, a and b, in the lab's UAS namespace, driven through a real
broker (tansu) with signed commands: a create for b runs only on b and is
answered once; status to all is answered by both; forged, unsigned and
replayed commands are refused and counted; the read-only node a refuses a
create; the task b took over Kafka comes back, capturing, after b restarts;
`fleet status` shows both nodes and marks a stopped or silent one. And a
broker that is away 20 s: capture goes on, and a command sent after it
returns is executed once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from otus_ebpf.fleet import envelope
from otus_ebpf.fleet.envelope import Target
from tests.support import netns
from tests.support.agent import read_records
from tests.support.broker import Broker, free_port, start_broker
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.procs import Background
from tests.support.sip_samples import sip_message
from tests.unit.test_metrics import scrape

KEY = "fleet-test-key-0123456789abcdef"
START_TIMEOUT_S = 60.0
TOPICS = {"otus-commands": 2, "otus-responses": 1, "otus-status": 1}
OUTAGE_S = 20.0


def _key_file(tmp: Path) -> Path:
    path = tmp / "fleet.key"
    path.write_text(KEY + "\n")
    os.chmod(path, 0o600)
    return path


def _config(tmp: Path, node: str, broker: Broker, task: str, extra: str = "") -> Path:
    path = tmp / f"{node}.yaml"
    path.write_text(f"""
node: {{name: {node}}}
metrics: {{listen: "127.0.0.1:{free_port(broker.netns)}"}}
state: {{dir: {tmp}/{node}-state}}
control:
  socket: {tmp}/{node}.sock
  kafka:
    brokers: {broker.address}
    key_file: {tmp}/fleet.key
    heartbeat_s: 1
{extra}
tasks:
{task}
""")
    return path


def _file_task(name: str, interface: str, mode: str, out: Path) -> str:
    return f"""  - name: {name}
    interfaces: [{interface}]
    mode: {mode}
    workers: 1
    outputs: {{jsonl: {{path: {out}}}}}"""


def _start(tmp: Path, node: str, lab: Lab) -> Background:
    daemon = Background([str(AGENT), "daemon", "-c", str(tmp / f"{node}.yaml")], tmp / f"{node}.log",
                        netns=lab.uas_ns)
    daemon.wait_for_output(f"fleet: node {node}", START_TIMEOUT_S)
    return daemon


def _metrics(tmp: Path, node: str, lab: Lab) -> dict[str, float]:
    listen = next(line.split('"')[1] for line in (tmp / f"{node}.yaml").read_text().splitlines()
                  if "listen" in line)
    with netns.inside(lab.uas_ns):
        found = scrape(listen)
    return {labels[0][1]: value for (name, labels), value in found.items()
            if name == "otus_fleet_commands_total"}


def _cli(lab: Lab, broker: Broker, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", lab.uas_ns, str(AGENT), "fleet", *args, "--kafka", broker.address]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def _send(lab: Lab, broker: Broker, tmp: Path, *args: str, check: bool = True) -> list[dict[str, Any]]:
    done = _cli(lab, broker, "send", *args, "--key-file", str(tmp / "fleet.key"), "--json", "--timeout", "15",
                check=check)
    return [json.loads(line) for line in done.stdout.splitlines()]


def _local(lab: Lab, tmp: Path, node: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", lab.uas_ns, str(AGENT), "task", "list", "--socket",
                          str(tmp / f"{node}.sock")], check=True, capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in out.stdout.splitlines()]


def _produce(broker: Broker, messages: list[bytes]) -> None:
    with broker.inside():
        producer = Producer({"bootstrap.servers": broker.address})
    for value in messages:
        producer.produce("otus-commands", value=value)
    assert producer.flush(10) == 0


def _answers(broker: Broker, request_id: str, wait_s: float = 6.0) -> list[dict[str, Any]]:
    with broker.inside():
        consumer = Consumer({"bootstrap.servers": broker.address, "group.id": f"t-{time.monotonic_ns()}",
                             "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition("otus-responses", 0, 0)])
        found, deadline = [], time.monotonic() + wait_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                body = json.loads(message.value() or b"{}")
                if body.get("id") == request_id:
                    found.append(body)
        return found
    finally:
        consumer.close()


def _send_sip(lab: Lab, tag: str, count: int, port: int) -> None:
    with netns.inside(lab.uas_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(count):
            sender.sendto(sip_message("OPTIONS sip:lo SIP/2.0", [
                f"Call-ID: {tag}-{n}", "From: <sip:a@lo>;tag=1", "To: <sip:b@lo>", f"CSeq: {n} OPTIONS"]),
                ("127.0.0.1", port))


def _task_file(tmp: Path) -> Path:
    path = tmp / "t2.yaml"
    path.write_text(f"""tasks:
  - name: t2
    interfaces: [lo]
    mode: afpacket
    direction: ingress
    workers: 1
    filter: {{sip_ports: [5070]}}
    outputs: {{jsonl: {{path: {tmp}/t2.jsonl}}}}
""")
    return path


def _broker(tmp: Path, lab: Lab, port: int | None = None) -> Broker:
    broker = start_broker(tmp / f"tansu-{time.monotonic_ns()}.log", lab.uas_ns, port)
    for topic, partitions in TOPICS.items():
        broker.create_topic(topic, partitions)
    return broker


def _forged_unsigned_and_replayed_are_refused(lab: Lab, broker: Broker, tmp: Path) -> None:
    now, key = time.time_ns() // 1_000_000, KEY.encode()
    forged = envelope.command("forged-1", now, Target(node="b"), "delete", {"task": "t2"}, b"w" * 32)
    unsigned = {k: v for k, v in envelope.command("unsigned-1", now, Target(node="b"), "delete",
                                                  {"task": "t2"}, key).items() if k != "sig"}
    once = envelope.encode(envelope.command("replay-1", now, Target(node="b"), "list", {}, key))
    _produce(broker, [envelope.encode(forged), envelope.encode(unsigned), once, once])
    assert [a["error"] for a in _answers(broker, "forged-1")] == ["signature does not match this fleet's key"]
    assert [a["error"] for a in _answers(broker, "unsigned-1", 1)] == ["unsigned command refused"]
    assert [a["ok"] for a in _answers(broker, "replay-1", 1)] == [True], "a replay is not answered again"
    counted = _metrics(tmp, "b", lab)
    assert (counted.get("bad_signature"), counted.get("unsigned"), counted.get("replayed")) == (1, 1, 1), \
        counted
    assert _metrics(tmp, "a", lab).get("read_only") == 1
    assert _local(lab, tmp, "b") == ["b-calls", "t2"], "the forged delete did nothing"


def _nodes(table: str) -> dict[str, str]:
    """NODE -> STATE of `fleet status`'s table (task lines are indented)."""
    return {line.split()[0]: line.split()[1] for line in table.splitlines()[1:] if not line.startswith(" ")}


def test_two_daemons_driven_by_signed_commands(lab: Lab, tmp_path: Path) -> None:
    _key_file(tmp_path)
    broker = _broker(tmp_path, lab)
    _config(tmp_path, "a", broker, _file_task("a-calls", lab.uas_if, "xdp", tmp_path / "a.jsonl"),
            "    groups: [eu]\n    read_only: true")
    _config(tmp_path, "b", broker, _file_task("b-calls", "uas1", "afpacket", tmp_path / "b.jsonl"),
            "    groups: [eu, core]")
    daemons = {node: _start(tmp_path, node, lab) for node in ("a", "b")}
    try:
        created = _send(lab, broker, tmp_path, "create", "t2", "--node", "b", "-c", str(_task_file(tmp_path)))
        assert [(a["node"], a["ok"], a.get("created")) for a in created] == [("b", True, "t2")]
        assert _local(lab, tmp_path, "b") == ["b-calls", "t2"] and _local(lab, tmp_path, "a") == ["a-calls"]
        assert len(_answers(broker, created[0]["id"])) == 1, "answered once"

        everyone = _send(lab, broker, tmp_path, "status", "t2", "--all", check=False)  # a: no t2
        assert sorted((a["node"], a["ok"]) for a in everyone) == [("a", False), ("b", True)]
        listed = _send(lab, broker, tmp_path, "list", "--group", "eu")
        assert sorted(a["node"] for a in listed) == ["a", "b"]

        refused = _send(lab, broker, tmp_path, "create", "t2", "--node", "a", "-c", str(_task_file(tmp_path)),
                        check=False)
        assert [(a["node"], a["ok"]) for a in refused] == [("a", False)]
        assert "read-only" in refused[0]["error"]
        assert _local(lab, tmp_path, "a") == ["a-calls"]

        _forged_unsigned_and_replayed_are_refused(lab, broker, tmp_path)

        _send_sip(lab, "before", 5, 5070)
        time.sleep(1.5)
        assert daemons["b"].stop(signal.SIGTERM) == 0, daemons["b"].output()
        daemons["b"] = _start(tmp_path, "b", lab)
        daemons["b"].wait_for_output("2 task(s) running", START_TIMEOUT_S)
        assert _local(lab, tmp_path, "b") == ["b-calls", "t2"]
        _send_sip(lab, "after", 5, 5070)
        time.sleep(2.5)  # two heartbeats

        table = _cli(lab, broker, "status").stdout
        assert _nodes(table) == {"a": "running", "b": "running"}, table
        assert "t2" in table and "a-calls" in table and "b-calls" in table, table
        assert " xdp " in table and " afpacket " in table, table

        assert daemons["a"].stop(signal.SIGTERM) == 0, daemons["a"].output()
        daemons["b"].stop(signal.SIGKILL)
        time.sleep(4.0)  # past three of b's heartbeats
        table = _cli(lab, broker, "status").stdout
        assert _nodes(table) == {"a": "stopped", "b": "stale"}, table
    finally:
        for daemon in daemons.values():
            daemon.stop(signal.SIGTERM)
        broker.process.stop()
    after = {r["call_id"] for r in read_records(tmp_path / "t2.jsonl") if r["kind"] == "sip"}
    assert {f"after-{n}" for n in range(5)} <= after, "the task created over Kafka captured after the restart"


def test_a_broker_away_20_s_stops_neither_capture_nor_commands(lab: Lab, tmp_path: Path) -> None:
    _key_file(tmp_path)
    broker = _broker(tmp_path, lab)
    for node in ("a", "b"):  # each an AF_PACKET task on lo: both see every datagram
        loop = _file_task(f"{node}-loop", "lo", "afpacket", tmp_path / f"{node}-loop.jsonl").replace(
            "workers: 1", "workers: 1\n    direction: ingress")
        _config(tmp_path, node, broker, loop)
    daemons = {node: _start(tmp_path, node, lab) for node in ("a", "b")}
    try:
        broker.process.stop()
        _send_sip(lab, "outage", 10, 5060)
        time.sleep(OUTAGE_S)
        _send_sip(lab, "late-outage", 10, 5060)
        broker = _broker(tmp_path, lab, broker.port)  # memory storage: the topics are made again
        created = _send(lab, broker, tmp_path, "create", "t2", "--node", "b", "-c", str(_task_file(tmp_path)))
        assert [(a["node"], a["ok"]) for a in created] == [("b", True)]
        listed = _send(lab, broker, tmp_path, "list", "--all")
        assert sorted(a["node"] for a in listed) == ["a", "b"]
        time.sleep(3.0)  # the command topic read again and again: nothing runs twice
        assert _local(lab, tmp_path, "b") == ["b-loop", "t2"] and _local(lab, tmp_path, "a") == ["a-loop"]
        assert daemons["b"].output().count("fleet: create from request") == 1, daemons["b"].output()
        assert _metrics(tmp_path, "b", lab).get("accepted") == 2
    finally:
        for daemon in daemons.values():
            daemon.stop(signal.SIGTERM)
        broker.process.stop()
    for node in ("a", "b"):
        ids = {r["call_id"] for r in read_records(tmp_path / f"{node}-loop.jsonl") if r["kind"] == "sip"}
        assert {f"outage-{n}" for n in range(10)} | {f"late-outage-{n}" for n in range(10)} <= ids, node
