"""SIP over WebSocket (RFC 7118), live: a WebSocket client and server on plain
sockets (tests/support/ws_peer.py) in the lab's namespaces exchange SIP —
masked client frames, an INVITE split over continuation frames, a 200 OK split
over three frames with a pong between them, Sec-WebSocket-Protocol: sip. A live
`otus-ebpf attach --ws-port` on the UAS side must record every message tshark
decodes from a capture of the same traffic on the UAC side: one connection on
the WebSocket port, one on a SIP port, found by its upgrade handshake. Then
the same calls with permessage-deflate (RFC 7692), checked against the
conversation the peers completed (tshark 4.0 loses its inflater's window on
it: it decodes the first messages, then garbage)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.support.agent import read_records, start_agent
from tests.support.lab import Lab
from tests.support.paths import REPO
from tests.support.procs import Background, netns_argv
from tests.support.tshark import sip_messages, start_capture

WS_PORT = 8080
DEFLATE_PORT = 8081
UPGRADED_SIP_PORT = 5060  # a SIP port: WebSocket there is known by its handshake only
CALLS = 12
# Per call: INVITE, 100, 180, 200 (in three frames), ACK, BYE, 200 (a binary frame).
MESSAGES_PER_CALL = 7
START_TIMEOUT_S = 15.0
PEER = [sys.executable, "-m", "tests.support.ws_peer"]


def message_key(record: dict[str, Any]) -> tuple[str, str, int, str]:
    kind = record["method"] if record["method"] else str(record["status"])
    return record["call_id"], kind, record["cseq"], record["cseq_method"]


@pytest.mark.parametrize(("mode", "workers"), [("xdp", 1), ("xdp", 2), ("afpacket", 1)],
                         ids=["one-worker", "2-workers", "afpacket"])
def test_sip_over_websocket_is_recorded_message_for_message_as_tshark_decodes_it(
    lab: Lab, tmp_path: Path, mode: str, workers: int
) -> None:
    require_tool("tshark")
    require_tool("tcpdump")
    pcap, out = tmp_path / "peer.pcap", tmp_path / "sip.jsonl"
    server = Background([*PEER, "server", lab.uas_v4, str(WS_PORT), str(UPGRADED_SIP_PORT)],
                        tmp_path / "server.log", netns=lab.uas_ns, cwd=REPO)
    capture = agent = None
    try:
        server.wait_for_output("listening", START_TIMEOUT_S)
        capture = start_capture(lab.uac_ns, lab.uac_if, pcap, tmp_path / "tcpdump.log",
                                f"tcp port {WS_PORT} or tcp port {UPGRADED_SIP_PORT}")
        agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                            ["--ws-port", str(WS_PORT), "--workers", str(workers), "--mode", mode])
        for port in (WS_PORT, UPGRADED_SIP_PORT):
            argv = netns_argv(lab.uac_ns, [*PEER, "client", lab.uas_v4, str(port), str(CALLS)])
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0 and f"done {CALLS} calls" in done.stdout, done.stdout + done.stderr
        time.sleep(1.0)  # the last segments through the rings
    finally:
        agent_status = agent.stop(signal.SIGTERM) if agent is not None else None
        if capture is not None:
            capture.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
    assert agent is not None and agent_status == 0, agent.output() if agent else ""

    expected = conversation(WS_PORT, CALLS) + conversation(UPGRADED_SIP_PORT, CALLS)
    assert expected.total() == 2 * CALLS * MESSAGES_PER_CALL
    records = [r for r in read_records(out) if r["kind"] == "sip"]
    assert Counter(map(message_key, records)) == expected, "every message the peers exchanged"
    # tshark on a tcpdump capture of the same traffic: what it decodes, the agent recorded
    # alike. Its own count is not held exact: on a loaded machine tcpdump beside the peers
    # has been seen short of the conversation (147 of 168 once), which is the capture's loss.
    wire = Counter(sip_messages(pcap, [f"tcp.port=={WS_PORT},http", f"tcp.port=={UPGRADED_SIP_PORT},http"]))
    assert wire <= expected and wire.total() >= 0.8 * expected.total(), (wire.total(), expected.total())
    assert {r["transport"] for r in records} == {"ws"}
    for record in records:
        from_client = record["method"] is not None
        assert record["direction"] == ("ingress" if from_client else "egress"), record
        assert (record["src"], record["dst"]) == ((lab.uac_v4, lab.uas_v4) if from_client
                                                  else (lab.uas_v4, lab.uac_v4)), record
    calls = [r for r in read_records(out) if r["kind"] == "call"]
    assert [c["end_cause"] for c in calls] == ["bye"] * (2 * CALLS)
    final = [line for line in agent.output().splitlines() if line.startswith("otus-ebpf: ")][-1]
    assert "errors=0" in final, final


def conversation(port: int, calls: int) -> Counter[tuple[str, str, int, str]]:
    """What tests/support/ws_peer.py's client and server say in ``calls`` calls."""
    keys: Counter[tuple[str, str, int, str]] = Counter()
    for call in range(calls):
        call_id = f"ws-{port}-{call}@client.invalid"
        keys.update([(call_id, kind, 1, "INVITE") for kind in ("INVITE", "100", "180", "200")]
                    + [(call_id, "ACK", 1, "ACK"), (call_id, "BYE", 2, "BYE"), (call_id, "200", 2, "BYE")])
    return keys


def test_deflated_sip_over_websocket_is_inflated_live(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "sip.jsonl"
    server = Background([*PEER, "server", lab.uas_v4, str(DEFLATE_PORT)], tmp_path / "server.log",
                        netns=lab.uas_ns, cwd=REPO)
    agent = None
    try:
        server.wait_for_output("listening", START_TIMEOUT_S)
        agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                            ["--ws-port", str(DEFLATE_PORT), "--workers", "1"])
        argv = netns_argv(lab.uac_ns, [*PEER, "client", lab.uas_v4, str(DEFLATE_PORT), str(CALLS), "deflate"])
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and f"done {CALLS} calls" in done.stdout, done.stdout + done.stderr
        time.sleep(1.0)
    finally:
        agent_status = agent.stop(signal.SIGTERM) if agent is not None else None
        server.stop(signal.SIGTERM)
    assert agent is not None and agent_status == 0, agent.output() if agent else ""
    records = [r for r in read_records(out) if r["kind"] == "sip"]
    assert Counter(map(message_key, records)) == conversation(DEFLATE_PORT, CALLS)
    assert {r["transport"] for r in records} == {"ws"}
