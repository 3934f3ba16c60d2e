"""Live: sipp calls across the lab while the other side is pinged with OPTIONS
every 100 ms, the agent on the pinged side. With `--drop-method OPTIONS` no
ping and no answer to one is a record, the kernel counts each under its own
verdict (the pings arriving, the answers leaving), the rings carry that much
less than without the drop list, and every call is captured whole. The
AF_PACKET capture, whose Python mirror decides the same, does the same."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import final_stats, read_records, start_agent
from tests.support.lab import Lab
from tests.support.paths import AGENT, SIPP_SCENARIOS
from tests.support.procs import Background
from tests.support.send import send_udp
from tests.support.sip_samples import request
from tests.support.sipp import finish_calls, start_calls

CALLS = 20
PINGS = 30                # one every 100 ms: -r 10
PING_PORT = 5061          # a SIP port of the agent's defaults, as a trunk's keep-alives are
PINGER_PORT = 5070
MESSAGES_PER_CALL = 7     # INVITE, 100, 180, 200, ACK, BYE, 200 (scripts/sipp/uac.xml, uas.xml)
LISTEN_TIMEOUT_S = 10.0


@dataclass
class Run:
    stats: dict[str, int]
    records: list[dict[str, Any]]
    pinger_log: str


def wait_udp_listening(lab: Lab, port: int, process: Background) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if lab.run(lab.uas_ns, "ss", "-lunH", "sport", "=", f":{port}").stdout.strip():
            return
        assert process.proc.poll() is None, process.output()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on UDP {port}")


def calls_and_pings(lab: Lab, workdir: Path, agent_flags: list[str]) -> Run:
    """The agent on the UAS side; CALLS calls from the UAC to the UAS and, at the same
    time, PINGS OPTIONS from the UAC to the UAS's second port, each answered."""
    workdir.mkdir()
    out = workdir / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, workdir / "agent.log", agent_flags)
    try:
        answering = Background(["sipp", "-sf", str(SIPP_SCENARIOS / "options_uas.xml"), "-t", "u1",
                                "-i", lab.uas_v4, "-p", str(PING_PORT), "-m", str(PINGS), "-nostdin"],
                               workdir / "sipp-options-uas.log", netns=lab.uas_ns, cwd=workdir)
        try:
            wait_udp_listening(lab, PING_PORT, answering)
            uas, uac = start_calls(lab, CALLS, "u1", workdir)
            pinger = Background(["sipp", f"{lab.uas_v4}:{PING_PORT}",
                                 "-sf", str(SIPP_SCENARIOS / "options_uac.xml"), "-t", "u1",
                                 "-i", lab.uac_v4, "-p", str(PINGER_PORT), "-m", str(PINGS),
                                 "-r", "10", "-rp", "1000", "-nostdin", "-timeout", "60s"],
                                workdir / "sipp-options-uac.log", netns=lab.uac_ns, cwd=workdir)
            try:
                finish_calls(uas, uac)
                assert pinger.wait(60) == 0, pinger.output()[-3000:]
                assert answering.wait(30) == 0, answering.output()[-3000:]
            finally:
                pinger.stop()
        finally:
            answering.stop()
        time.sleep(1.5)  # a stats line after the last packet
    finally:
        status = agent.stop(signal.SIGTERM)
    assert status == 0, agent.output()
    return Run(final_stats(agent), read_records(out), pinger.output())


def options_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "sip" and "OPTIONS" in (r["method"], r["cseq_method"])]


def submitted(stats: dict[str, int]) -> int:
    return stats["ingress_submitted"] + stats["egress_submitted"]


def calls_complete(run: Run) -> None:
    assert [r["end_cause"] for r in run.records if r["kind"] == "call"] == ["bye"] * CALLS
    call_messages = [r for r in run.records if r["kind"] == "sip" and r not in options_records(run.records)]
    assert len(call_messages) == CALLS * MESSAGES_PER_CALL


def test_options_pings_and_their_answers_stay_in_the_kernel(lab: Lab, tmp_path: Path) -> None:
    plain = calls_and_pings(lab, tmp_path / "plain", [])
    dropping = calls_and_pings(lab, tmp_path / "drop", ["--drop-method", "OPTIONS"])

    calls_complete(plain)
    assert len(options_records(plain.records)) == 2 * PINGS, "every ping and answer, without the list"
    assert plain.stats["ingress_dropped_method"] == plain.stats["egress_dropped_method"] == 0

    calls_complete(dropping)
    assert options_records(dropping.records) == []
    # Each ping arrives on the agent's interface once, each answer leaves it once (no
    # retransmission: every ping was answered at once, sipp's -m count completed).
    assert dropping.stats["ingress_dropped_method"] == PINGS, dropping.stats
    assert dropping.stats["egress_dropped_method"] == PINGS, dropping.stats
    assert submitted(plain.stats) - submitted(dropping.stats) == 2 * PINGS, (plain.stats, dropping.stats)
    assert dropping.stats["ingress_submit_failed"] == dropping.stats["egress_submit_failed"] == 0


@pytest.mark.parametrize("mode", ["afpacket"])
def test_the_af_packet_capture_drops_them_alike(lab: Lab, tmp_path: Path, mode: str) -> None:
    run = calls_and_pings(lab, tmp_path / mode, ["--drop-method", "OPTIONS", "--mode", mode])
    calls_complete(run)
    assert options_records(run.records) == []
    assert run.stats["afpacket_dropped_method"] == 2 * PINGS, run.stats  # both directions on one socket
    assert run.stats["afpacket_duplicate"] == 0


def test_otus_ebpf_filter_changes_a_running_agents_drop_list(lab: Lab, tmp_path: Path) -> None:
    """The drop list and the duplicates' map belong to the screen programs: `filter`
    reaches them through the attached programs' tail-call arrays."""
    out = tmp_path / "sip.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log", ["--drop-method", "OPTIONS"])
    try:
        shown = lab.run(lab.uas_ns, str(AGENT), "filter", lab.uas_if).stdout.splitlines()
        assert "drop       OPTIONS" in shown and "dedup      off" in shown, shown
        changed = lab.run(lab.uas_ns, str(AGENT), "filter", lab.uas_if, "--remove-drop-method", "OPTIONS",
                          "--add-drop-method", "NOTIFY", "--dedup", "on", "--dedup-window-ms", "200")
        assert "drop       NOTIFY" in changed.stdout.splitlines(), changed.stdout
        assert "dedup      on, 200 ms" in changed.stdout.splitlines(), changed.stdout
        send_udp(lab.uac_ns, lab.uac_v4, 5062, lab.uas_v4, 5060, [request("OPTIONS"), request("NOTIFY")])
        time.sleep(1.5)
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
    methods = [r["method"] for r in read_records(out) if r["kind"] == "sip"]
    assert methods == ["OPTIONS"]
    assert final_stats(agent)["ingress_dropped_method"] == 1
