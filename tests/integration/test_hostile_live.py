"""Issue 12, live: an agent on the lab's UAS side receives every datagram that
used to stop it, a flood of media endpoints larger than its flow map, and RTP
for a stream whose SDP gave a clock rate of 0. Then an ordinary sipp run of
10 calls is recorded whole, the agent is still running, and its counters name
each condition. Once as `attach`, once as a `daemon` task."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.support import netns
from tests.support.agent import read_records, start_agent
from tests.support.broker import free_port
from tests.support.hostile import TRIGGERS, clock_zero_media, flow_flood, rtp_packet
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.procs import Background
from tests.support.send import send_udp
from tests.support.sipp import run_calls
from tests.unit.test_metrics import scrape

CALLS = 10
MESSAGES_PER_CALL = 7  # INVITE 100 180 200 ACK BYE 200
MAX_CALLS = 40          # so the flow map holds 160 endpoints
FLOOD_CALLS = 10        # x 16 media lines x RTP and RTCP = 320 endpoints
RTP_PACKETS = 100
START_TIMEOUT_S = 60.0


def task_yaml(tmp: Path, lab: Lab) -> str:
    return f"""
  - name: edge
    interfaces: [{lab.uas_if}]
    workers: 1
    calls: {{max_calls: {MAX_CALLS}}}
    outputs: {{jsonl: {{path: {tmp}/edge.jsonl}}}}
"""


def send_hostile_traffic(lab: Lab) -> None:
    send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, list(TRIGGERS.values()))
    flood = flow_flood(FLOOD_CALLS)
    send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, flood)
    time.sleep(0.5)  # the SDP is learned (or refused, the map being full) before its media comes
    address, port = clock_zero_media()
    media = [rtp_packet(n, 0xC10C) for n in range(RTP_PACKETS)]
    send_udp(lab.uac_ns, lab.uac_v4, 40000, address, port, media)
    byes = [m.replace(b"INVITE sip:", b"BYE sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 2 BYE")
            for m in flood]  # the flood calls end: their endpoints leave the map again
    send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, byes)
    time.sleep(0.5)


def check_conditions(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], task: str) -> None:
    def value(name: str, **labels: str) -> float:
        key = tuple(sorted({**labels, "task": task}.items()))
        return metrics.get((name, key), 0.0)

    assert value("otus_task_up", state="running") == 1
    assert value("otus_sdp_problems_total", problem="sdp_unlearnable") >= 1   # c=IN IP4 pbx.example.com
    assert value("otus_sdp_problems_total", problem="sdp_bad_ports") >= 3     # ², a=rtcp:², 65535 + 1
    assert value("otus_sdp_problems_total", problem="sdp_bad_clock") >= 2     # PCMU/², PCMU/0
    assert value("otus_decode_errors_total", layer="sip") >= 1                # Content-Length: ²
    assert value("otus_flow_updates_total", outcome="flows_map_full") >= 2 * 16 * FLOOD_CALLS - 4 * MAX_CALLS
    assert not [k for k in metrics if k[0] == "otus_internal_errors_total"], "no bug was hit"


def check_records(path: Path) -> None:
    records = read_records(path)
    sip = [r for r in records if r["kind"] == "sip"]
    call_ids = {r["call_id"] for r in sip}
    assert {"[/]", "esc\x1b]0;owned\x07\x1b[2J-call"} <= call_ids, "hostile text recorded as given"
    calls = [r for r in records if r["kind"] == "call" and not r["call_id"].startswith(("flood-", "h-"))]
    ended = [c for c in calls if c["end_cause"] != "capture-stopped"]
    assert len(ended) == CALLS and {c["end_cause"] for c in ended} == {"bye"}, "every sipp call, summarised"
    stopped = {c["call_id"] for c in calls if c["end_cause"] == "capture-stopped"}
    assert stopped <= call_ids - {c["call_id"] for c in ended}, "only the triggers' INVITEs were left going"
    for call in ended:
        assert len([r for r in sip if r["call_id"] == call["call_id"]]) == MESSAGES_PER_CALL
    (clock_zero,) = [r for r in records if r["kind"] == "rtp" and r["call_id"] == "h-clock0"]
    assert (clock_zero["packets"], clock_zero["lost"]) == (RTP_PACKETS, 0), "measured at the default clock"


def test_attach_survives_every_trigger_and_keeps_recording(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("tasks:" + task_yaml(tmp_path, lab))
    port = free_port(lab.uas_ns)
    out = tmp_path / "edge.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["-c", str(config), "--metrics", f"127.0.0.1:{port}"])
    try:
        send_hostile_traffic(lab)
        run_calls(lab, CALLS, "u1", tmp_path)
        time.sleep(1.0)
        assert agent.proc.poll() is None, agent.output()
        with netns.inside(lab.uas_ns):
            metrics = scrape(f"127.0.0.1:{port}")
    finally:
        status = agent.stop()
    assert status == 0, agent.output()
    check_conditions(metrics, "attach")
    check_records(out)
    assert "records: " in agent.output() and "lost=0" in agent.output()


def test_a_daemon_task_stays_running_and_keeps_recording(lab: Lab, tmp_path: Path) -> None:
    port = free_port(lab.uas_ns)
    sock = tmp_path / "control.sock"
    path = tmp_path / "otus.yaml"
    path.write_text(f'metrics: {{listen: "127.0.0.1:{port}"}}\ncontrol: {{socket: {sock}}}\ntasks:'
                    + task_yaml(tmp_path, lab))
    daemon = Background([str(AGENT), "daemon", "-c", str(path)], tmp_path / "daemon.log", netns=lab.uas_ns)
    try:
        daemon.wait_for_output("1 task(s) running", START_TIMEOUT_S)
        send_hostile_traffic(lab)
        run_calls(lab, CALLS, "u1", tmp_path)
        time.sleep(1.0)
        listing = subprocess.run(["ip", "netns", "exec", lab.uas_ns, str(AGENT), "task", "list", "--socket",
                                  str(sock)], check=True, capture_output=True, text=True, timeout=30).stdout
        assert listing.split()[:2] == ["edge", "running"]
        with netns.inside(lab.uas_ns):
            metrics = scrape(f"127.0.0.1:{port}")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
    check_conditions(metrics, "edge")
    check_records(tmp_path / "edge.jsonl")
