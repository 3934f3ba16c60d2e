"""Processors on a live capture: calls sent across the lab's veth to an
agent whose task keeps one number prefix, drops messages by a header,
labels a call from its X-Customer header and hashes every party. The JSON
lines, the Kafka records (a real broker) and the HEP datagrams (a collector
in the namespace) carry only the kept calls, with their labels, and none of
the numbers or names that were on the wire."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from tests.support import netns
from tests.support.agent import read_records, start_agent
from tests.support.broker import start_broker
from tests.support.lab import Lab
from tests.support.send import send_udp
from tests.support.sip_samples import sip_message

KEPT, OTHER, CALLEE = "+493012345678", "+498911122233", "+4940999888"
NAME = "Alice Example"
SECRETS = (KEPT, KEPT.lstrip("+"), OTHER.lstrip("+"), CALLEE, CALLEE.lstrip("+"), NAME)


def call(lab: Lab, call_id: str, caller: str, extra: tuple[str, ...] = ()) -> list[bytes]:
    a, b = f"{lab.uac_v4}:5060", f"{lab.uas_v4}:5060"

    def msg(start: str, cseq: str, to_tag: str = "", more: tuple[str, ...] = ()) -> bytes:
        return sip_message(start, [
            f"Via: SIP/2.0/UDP {a};branch=z9hG4bK{call_id}{cseq.split(maxsplit=1)[0]}",
            f'From: "{NAME}" <sip:{caller}@{a}>;tag=f1', f"To: <sip:{CALLEE}@{b}>{to_tag}",
            f"Call-ID: {call_id}", f"CSeq: {cseq}", f"Contact: <sip:{caller}@{a}>",
            f"P-Asserted-Identity: <tel:{caller}>", *extra, *more])

    return [msg(f"INVITE sip:{CALLEE}@{b} SIP/2.0", "1 INVITE"),
            msg("SIP/2.0 180 Ringing", "1 INVITE", ";tag=t1"), msg("SIP/2.0 200 OK", "1 INVITE", ";tag=t1"),
            msg(f"ACK sip:{CALLEE}@{b} SIP/2.0", "1 ACK", ";tag=t1"),
            msg(f"BYE sip:{CALLEE}@{b} SIP/2.0", "2 BYE", ";tag=t1"),
            msg("SIP/2.0 200 OK", "2 BYE", ";tag=t1")]


def config(tmp: Path, lab: Lab, broker: str, hep_port: int) -> Path:
    key = tmp / "redact.key"
    key.write_text("lab-redaction-key-0123456789\n")
    os.chmod(key, 0o600)
    path = tmp / "otus.yaml"
    path.write_text(f"""
tasks:
  - name: t
    interfaces: [{lab.uas_if}]
    workers: 1
    direction: ingress
    outputs:
      kafka: {{brokers: "{broker}", topic: sip}}
      hep: {{collectors: ["udp:127.0.0.1:{hep_port}"]}}
    processors:
      - filter: {{keep: {{number: {{prefix: ["+4930"]}}}}, calls: true}}
      - filter: {{drop: {{header: {{name: X-Test, regex: "^junk"}}}}, calls: true}}
      - label: {{static: {{site: lab}}, from_header: {{customer: X-Customer}}}}
      - redact: {{mode: hash, key_file: {key}}}
""")
    return path


def test_kept_labelled_and_redacted_in_every_output(lab: Lab, tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "tansu.log", lab.uas_ns)
    collector = netns_udp_socket(lab)
    try:
        broker.create_topic("sip", 1)
        out = tmp_path / "records.jsonl"
        agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                            ["-c", str(config(tmp_path, lab, broker.address, collector.getsockname()[1])),
                             "--task", "t"])
        try:
            wire = call(lab, "kept-1", KEPT, ("X-Customer: acme",)) + call(lab, "other-1", OTHER) + \
                call(lab, "junk-1", KEPT, ("X-Test: junk-7",))
            send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, wire)
            time.sleep(2.0)
        finally:
            assert agent.stop(signal.SIGTERM) == 0, agent.output()
        hep = drain(collector)
        kafka = broker.consume("sip", expected=7, timeout=30)
    finally:
        collector.close()
        broker.process.stop()

    records = read_records(out)
    sip = [r for r in records if r["kind"] == "sip"]
    assert {r["call_id"] for r in sip} == {"kept-1"} and len(sip) == 6, [r["call_id"] for r in sip]
    summaries = [r for r in records if r["kind"] == "call"]
    assert [s["call_id"] for s in summaries] == ["kept-1"], "the other calls' summaries went with them"
    for record in sip + summaries:
        assert record["labels"] == {"site": "lab", "customer": "acme"}, record
    values = [json.loads(m.value) for m in kafka]
    assert sorted(v["call_id"] for v in values) == ["kept-1"] * 7
    assert all(v["labels"]["customer"] == "acme" for v in values)
    assert len(hep) == 6, "one HEP packet per kept SIP message"
    outputs = out.read_bytes() + b"".join(m.value for m in kafka) + b"".join(hep)
    for secret in SECRETS:
        assert secret.encode() not in outputs, secret
    assert all(b"kept-1" in packet for packet in hep), "the HEP payloads are the (redacted) messages"
    assert {len(r["from_user"]) for r in sip} == {len(KEPT)}, "hashed in place, not left out"


def netns_udp_socket(lab: Lab) -> socket.socket:
    with netns.inside(lab.uas_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    sock.settimeout(1.0)
    packets = []
    try:
        while True:
            packets.append(sock.recv(65536))
    except TimeoutError:
        return packets
