"""sipp calls across the lab; the agent on the UAS side must see every message,
both directions, exactly as tshark sees them on the UAC side, and deliver the
same records to Kafka keyed by Call-ID."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns
from tests.support.agent import read_records, start_agent
from tests.support.broker import Broker, free_port
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.sipp import run_calls
from tests.support.tshark import frame_fields, hep_fields, hep_packets_as_pcap, sip_messages, start_capture
from tests.unit.test_metrics import scrape
from userspace.records import RECORD_SCHEMA_VERSION

CALLS = 20
PARTITIONS = 3
# What one basic call (scripts/sipp/*.xml) puts on the wire.
MESSAGES_PER_CALL = Counter({"INVITE": 1, "100": 1, "180": 1, "200": 2, "ACK": 1, "BYE": 1})
TRANSPORT_NAMES = {"u1": "udp", "t1": "tcp"}


def message_key(record: dict[str, Any]) -> tuple[str, str, int, str]:
    kind = record["method"] if record["method"] else str(record["status"])
    return record["call_id"], kind, record["cseq"], record["cseq_method"]


@pytest.mark.parametrize(("transport", "workers"), [
    ("u1", 1), ("t1", 2), ("u1", 2),
], ids=["udp", "tcp-2-shards", "udp-2-shards"])
def test_sipp_calls_are_captured_in_both_directions_and_reach_kafka(
    lab: Lab, uas_broker: Broker, tmp_path: Path, transport: str, workers: int
) -> None:
    topic = f"sip-{transport}-{workers}"
    uas_broker.create_topic(topic, PARTITIONS)
    out = tmp_path / "sip.jsonl"
    capture = start_capture(lab.uac_ns, lab.uac_if, tmp_path / "peer.pcap", tmp_path / "tshark.log")
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--kafka", uas_broker.address, "--topic", topic, "--kafka-headers",
                         "--workers", str(workers)])
    readers = "; 1 shard(s)" if workers == 1 else f"; {workers} worker process(es), one writer per file"
    assert readers in agent.output()
    assert f"sending records to Kafka at {uas_broker.address}, topic {topic}" in agent.output()
    try:
        run_calls(lab, CALLS, transport, tmp_path)
    finally:
        agent_status = agent.stop(signal.SIGTERM)
        capture.stop(signal.SIGTERM)
    assert agent_status == 0, agent.output()

    everything = read_records(out)
    records = [r for r in everything if r["kind"] == "sip"]
    assert [r["end_cause"] for r in everything if r["kind"] == "call"] == ["bye"] * CALLS
    final_stats = [line for line in agent.output().splitlines() if line.startswith("otus-ebpf: ")][-1]
    assert f"records={len(everything)} " in final_stats and "errors=0" in final_stats, final_stats
    sections = final_stats.split(" | ")
    kernel = [section for section in sections if section.startswith(("ingress ", "egress "))]
    assert len(kernel) == 2 and all(" submit_failed=0 " in section for section in kernel), final_stats
    # Printed after the flush: every record is accounted for by Kafka.
    n = len(everything)
    assert f"kafka produced={n} delivered={n} failed=0" in final_stats, final_stats

    wire = sip_messages(tmp_path / "peer.pcap")
    assert len(wire) == CALLS * sum(MESSAGES_PER_CALL.values())
    assert Counter(map(message_key, records)) == Counter(wire)

    per_call: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        per_call[record["call_id"]][message_key(record)[1]] += 1
        assert record["transport"] == TRANSPORT_NAMES[transport]
        from_uac = record["method"] is not None  # requests come from the UAC here
        assert record["direction"] == ("ingress" if from_uac else "egress"), record
        assert record["src"] == (lab.uac_v4 if from_uac else lab.uas_v4), record
    assert len(per_call) == CALLS
    assert all(counts == MESSAGES_PER_CALL for counts in per_call.values()), per_call

    consumed = uas_broker.consume(topic, expected=len(everything))
    values = [json.loads(m.value) for m in consumed]
    assert sorted(map(json.dumps, values)) == sorted(map(json.dumps, everything))
    partitions_of_call: dict[str, set[int]] = defaultdict(set)
    for message, value in zip(consumed, values, strict=True):
        assert message.key is not None and message.key.decode() == value["call_id"]
        assert message.headers == {"node": socket.gethostname().encode(), "task": b"capture",
                                   "kind": value["kind"].encode(),
                                   "schema": str(RECORD_SCHEMA_VERSION).encode()}, message.headers
        partitions_of_call[message.key.decode()].add(message.partition)
    assert all(len(p) == 1 for p in partitions_of_call.values()), partitions_of_call


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_afpacket_mode_yields_the_same_records_as_xdp_mode(lab: Lab, tmp_path: Path, transport: str) -> None:
    """Both agents watch the same sipp run on the same interface."""
    xdp_out, afpacket_out = tmp_path / "xdp.jsonl", tmp_path / "afpacket.jsonl"
    xdp = start_agent(lab.uas_ns, lab.uas_if, xdp_out, tmp_path / "xdp.log", ["--mode", "xdp"])
    afpacket = start_agent(lab.uas_ns, lab.uas_if, afpacket_out, tmp_path / "afpacket.log",
                           ["--mode", "afpacket", "--workers", "2"])
    assert "AF_PACKET" in afpacket.output()
    try:
        run_calls(lab, CALLS, transport, tmp_path)
    finally:
        assert xdp.stop(signal.SIGTERM) == 0, xdp.output()
        assert afpacket.stop(signal.SIGTERM) == 0, afpacket.output()

    def comparable(path: Path) -> list[str]:
        """SIP records without capture time (call summaries are made of capture times)."""
        return sorted(json.dumps({k: v for k, v in r.items() if k != "ts_ns"}, sort_keys=True)
                      for r in read_records(path) if r["kind"] == "sip")

    expected = comparable(xdp_out)
    assert len(expected) == CALLS * sum(MESSAGES_PER_CALL.values())
    assert comparable(afpacket_out) == expected
    assert "drops=0" in [line for line in afpacket.output().splitlines() if "afpacket" in line][-1]


def test_a_broker_outage_neither_stalls_capture_nor_loses_or_duplicates_records(
    lab: Lab, uas_broker: Broker, tmp_path: Path
) -> None:
    topic = "sip-outage"
    uas_broker.create_topic(topic, PARTITIONS)
    out = tmp_path / "sip.jsonl"
    # A 1 KB librdkafka queue: records must wait in the reporter's own backlog.
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--kafka", uas_broker.address, "--topic", topic, "--kafka-queue-kb", "1"])
    uas_broker.process.send_signal(signal.SIGSTOP)
    try:
        run_calls(lab, CALLS, "u1", tmp_path)  # finishes: capture does not wait for the broker
        time.sleep(1.5)
        during = [line for line in agent.output().splitlines() if "kafka produced" in line][-1]
        assert len(read_records(out)) == CALLS * (sum(MESSAGES_PER_CALL.values()) + 1), "capture kept up"
    finally:
        uas_broker.process.send_signal(signal.SIGCONT)
    assert "queue_full=0" not in during, during
    assert agent.stop(signal.SIGTERM) == 0, agent.output()

    everything = read_records(out)
    final_stats = [line for line in agent.output().splitlines() if line.startswith("otus-ebpf: ")][-1]
    n = len(everything)
    assert f"kafka produced={n} delivered={n} failed=0" in final_stats, final_stats
    assert "backlog=0 dropped=0" in final_stats, final_stats
    consumed = uas_broker.consume_all(topic, expected=n)
    values = sorted(json.dumps(json.loads(value)) for _key, value, _partition in consumed)
    assert values == sorted(map(json.dumps, everything)), "each record exactly once"


@pytest.mark.parametrize("file_format", ["pcap", "pcapng"])
def test_the_pcap_outputs_hold_the_captured_sip_for_tshark(lab: Lab, tmp_path: Path,
                                                            file_format: str) -> None:
    out, pcap, per_call = tmp_path / "sip.jsonl", tmp_path / f"capture.{file_format}", tmp_path / "calls"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--pcap", str(pcap), "--pcap-format", file_format, "--pcap-per-call", str(per_call)])
    try:
        run_calls(lab, CALLS, "u1", tmp_path)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    records = [r for r in read_records(out) if r["kind"] == "sip"]
    assert Counter(map(message_key, records)) == Counter(sip_messages(pcap))
    assert len(records) == CALLS * sum(MESSAGES_PER_CALL.values())

    files = sorted(per_call.iterdir())
    assert len(files) == CALLS
    by_call: dict[str, Counter[tuple[str, str, int, str]]] = defaultdict(Counter)
    for record in records:
        by_call[record["call_id"]][message_key(record)] += 1
    for path in files:
        messages = Counter(sip_messages(path))
        (call_id,) = {call for call, _kind, _seq, _method in messages}
        assert messages == by_call[call_id], path
    if file_format == "pcapng":
        frames = frame_fields(pcap, ["frame.interface_name", "frame.packet_flags_direction", "frame.comment"])
        flags = {"ingress": "0x00000001", "egress": "0x00000002"}  # pcapng: 01 inbound, 10 outbound
        assert {f[0] for f in frames} == {lab.uas_if}
        assert all(flags[f[2]] == f[1] for f in frames), frames[:4]
        assert Counter(f[2] for f in frames) == Counter(r["direction"] for r in records)


class TcpCollectorServer:
    """A HEP-over-TCP collector: accepts every connection (one per worker process)
    and keeps what each sends."""

    def __init__(self, server: socket.socket) -> None:
        self.server = server
        self.streams: list[bytearray] = []
        self.readers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener is closed
            stream = bytearray()
            self.streams.append(stream)
            reader = threading.Thread(target=self._read, args=(conn, stream), daemon=True)
            reader.start()
            self.readers.append(reader)

    @staticmethod
    def _read(conn: socket.socket, stream: bytearray) -> None:
        with conn:
            while chunk := conn.recv(65536):
                stream += chunk

    def packets(self) -> list[bytes]:
        for reader in list(self.readers):
            reader.join(timeout=30)
        packets = []
        for stream in self.streams:
            offset = 0
            while offset + 6 <= len(stream):
                length = int.from_bytes(stream[offset + 4:offset + 6], "big")
                packets.append(bytes(stream[offset:offset + length]))
                offset += length
            assert offset == len(stream), "each TCP stream ends on a packet boundary"
        return packets


def test_hep_reaches_a_udp_and_a_tcp_collector_and_tshark_reads_it(lab: Lab, tmp_path: Path) -> None:
    with netns.inside(lab.uas_ns):
        udp_collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp_listener = socket.socket()
    with udp_collector, tcp_listener:
        udp_collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp_collector.bind(("127.0.0.1", 0))
        tcp_listener.bind(("127.0.0.1", 0))
        tcp_listener.listen()
        udp_port, tcp_port = udp_collector.getsockname()[1], tcp_listener.getsockname()[1]
        tcp_collector = TcpCollectorServer(tcp_listener)
        out = tmp_path / "sip.jsonl"
        agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                            ["--hep", f"udp:127.0.0.1:{udp_port}", "--hep", f"tcp:127.0.0.1:{tcp_port}",
                             "--hep-capture-id", "77", "--hep-node-name", "uas-edge"])
        try:
            run_calls(lab, CALLS, "u1", tmp_path)
        finally:
            assert agent.stop(signal.SIGTERM) == 0, agent.output()
        records = [r for r in read_records(out) if r["kind"] == "sip"]
        udp_collector.settimeout(1)
        datagrams = [udp_collector.recv(65535) for _ in records]
        tcp_packets = tcp_collector.packets()

    assert sorted(tcp_packets) == sorted(datagrams), "both collectors got the same packets"
    hep_packets_as_pcap(datagrams, tmp_path / "hep.pcap", udp_port)
    decoded = hep_fields(tmp_path / "hep.pcap", udp_port)
    seen = Counter((d["sip.Call-ID"], d["sip.CSeq.method"], d["hep3.src_ip"], int(d["hep3.src_port"]),
                    d["hep3.dst_ip"], int(d["hep3.dst_port"]), d["hep3.capture_id"], d["hep3.node_name"])
                   for d in decoded)
    expected = Counter((r["call_id"], r["cseq_method"], r["src"], r["sport"], r["dst"], r["dport"],
                        "77", "uas-edge") for r in records)
    assert seen == expected
    assert len(records) == CALLS * sum(MESSAGES_PER_CALL.values())


def test_metrics_scraped_over_http_match_the_records_written(lab: Lab, tmp_path: Path) -> None:
    port = free_port(lab.uas_ns)
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--metrics", f"127.0.0.1:{port}"])
    try:
        run_calls(lab, CALLS, "u1", tmp_path)
        time.sleep(1.5)  # the reporters' queues drain
        with netns.inside(lab.uas_ns):
            page = scrape(f"127.0.0.1:{port}")
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    records = read_records(out)
    task = ("task", "attach")
    assert page["otus_records_total", (task,)] == len(records)
    written = (("outcome", "written"), ("output", "jsonl"), task)
    assert page["otus_output_records_total", written] == len(records)
    assert page["otus_sip_messages_total", (("kind", "INVITE"), task)] == CALLS
    assert page["otus_calls_total", (("outcome", "ended"), task)] == CALLS
    seen = page["otus_capture_packets_total", (("capturer", "kernel"), ("counter", "ingress_seen"), task)]
    submitted = page["otus_capture_task_packets_total", (("counter", "ingress_submitted"), task)]
    assert seen >= submitted > 0


def test_a_capture_file_replays_to_the_same_records(lab: Lab, tmp_path: Path) -> None:
    out, pcap = tmp_path / "live.jsonl", tmp_path / "capture.pcapng"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--pcap", str(pcap), "--pcap-format", "pcapng"])
    try:
        run_calls(lab, CALLS, "t1", tmp_path)  # TCP: the replay reassembles the streams again
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    replayed = tmp_path / "replayed.jsonl"
    result = subprocess.run([str(AGENT), "replay", str(pcap), "--out", str(replayed)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    live = sorted(json.dumps(r, sort_keys=True) for r in read_records(out))
    again = sorted(json.dumps(r, sort_keys=True) for r in read_records(replayed))
    assert again == live, "the same records, capture times and all"
    assert len([r for r in read_records(replayed) if r["kind"] == "call"]) == CALLS
