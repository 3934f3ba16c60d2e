"""Calls across the lab: media endpoints from SDP appear in the kernel's flow
map during the calls and vanish after the last BYE; every call is summarised."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from tests.support.agent import read_records, start_agent
from tests.support.lab import Lab
from tests.support.paths import AGENT
from tests.support.send import send_udp
from tests.support.sipp import finish_calls, start_calls

CALLS = 50
HOLD_MS = 2000
MESSAGES_PER_CALL = 7  # INVITE 100 180 200 ACK BYE 200
SIPP_MEDIA_PORT = 6000  # sipp's default -mp, announced by both sides
SIPP_CLOCK_SLACK_MS = 5


def learned_flows(lab: Lab) -> set[tuple[str, str, int]]:
    out = lab.run(lab.uas_ns, str(AGENT), "flows", lab.uas_if).stdout
    rows = (line.split() for line in out.splitlines())
    return {(kind, address, int(port)) for kind, address, port, *_rest in rows}

@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_media_flows_follow_the_calls_and_calls_are_summarised(lab: Lab, tmp_path: Path,
                                                               transport: str) -> None:
    out = tmp_path / "records.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log")
    uas, uac = start_calls(lab, CALLS, transport, tmp_path, rate=25, hold_ms=HOLD_MS)
    try:
        during: set[tuple[str, str, int]] = set()
        deadline = time.monotonic() + 10
        while not during and time.monotonic() < deadline:
            time.sleep(0.2)
            during = learned_flows(lab)
    finally:
        finish_calls(uas, uac)
    time.sleep(0.5)
    after = learned_flows(lab)
    assert agent.stop() == 0, agent.output()

    assert {("rtp", lab.uac_v4, SIPP_MEDIA_PORT), ("rtcp", lab.uac_v4, SIPP_MEDIA_PORT + 1),
            ("rtp", lab.uas_v4, SIPP_MEDIA_PORT), ("rtcp", lab.uas_v4, SIPP_MEDIA_PORT + 1)} <= during
    assert after == set(), "every learned flow is forgotten after the last BYE"

    records = read_records(out)
    calls = [r for r in records if r["kind"] == "call"]
    sip = [r for r in records if r["kind"] == "sip"]
    assert len(sip) == CALLS * MESSAGES_PER_CALL, "every SIP message is recorded"
    assert len(calls) == CALLS
    assert len({c["call_id"] for c in calls}) == CALLS
    assert {r["call_id"] for r in records if r["kind"] == "sip"} == {c["call_id"] for c in calls}
    for call in calls:
        assert (call["end_cause"], call["final_status"], call["caller"]) == ("bye", 200, lab.uac_v4)
        assert 0 <= call["setup_ms"] <= call["answer_ms"] < 1000
        # sipp times its pause on its own millisecond clock, read once per event loop: on a
        # loaded machine the BYE leaves up to a few ms before the hold has passed on ours.
        assert HOLD_MS - SIPP_CLOCK_SLACK_MS <= call["duration_ms"] < HOLD_MS + 1000


def rtp_packets(ssrc: int, count: int, drop_every: int = 0) -> list[bytes]:
    packets = []
    for n in range(count):
        if drop_every and n % drop_every == drop_every - 1:
            continue
        packets.append(struct.pack("!BBHII", 0x80, 0, n, n * 160, ssrc) + b"\xd5" * 160)
    return packets


@pytest.mark.parametrize("mode", ["xdp", "afpacket"])
def test_rtp_quality_is_measured_per_stream_and_reported_with_the_call(lab: Lab, tmp_path: Path,
                                                                      mode: str) -> None:
    out = tmp_path / "records.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log", ["--mode", mode])
    uas, uac = start_calls(lab, 1, "u1", tmp_path, hold_ms=3000)
    try:
        if mode == "xdp":
            deadline = time.monotonic() + 10
            while ("rtp", lab.uas_v4, SIPP_MEDIA_PORT) not in learned_flows(lab):
                assert time.monotonic() < deadline, "the callee's media endpoint was never learned"
                time.sleep(0.1)
        else:
            time.sleep(1.0)  # the 200 OK's SDP is in; its socket filter now passes the media port
        # Towards the endpoint the callee announced; from another port than sipp's own.
        send_udp(lab.uac_ns, lab.uac_v4, 6100, lab.uas_v4, SIPP_MEDIA_PORT, rtp_packets(0xC1EA, 200))
        send_udp(lab.uac_ns, lab.uac_v4, 6102, lab.uas_v4, SIPP_MEDIA_PORT,
                 rtp_packets(0x1055, 201, drop_every=10))
    finally:
        finish_calls(uas, uac)
    time.sleep(0.5)
    assert agent.stop() == 0, agent.output()
    (call,) = [r for r in read_records(out) if r["kind"] == "call"]
    streams = {s["ssrc"]: s for s in call["streams"]}
    assert set(streams) == {0xC1EA, 0x1055}, call["streams"]
    clean, lossy = streams[0xC1EA], streams[0x1055]
    assert (clean["packets"], clean["lost"], clean["loss_percent"]) == (200, 0, 0.0)
    assert (lossy["packets"], lossy["lost"], lossy["expected"]) == (181, 20, 201)
    assert lossy["loss_percent"] == pytest.approx(9.95, abs=0.01)
    assert clean["mos"] > lossy["mos"]
    assert (clean["codec"], clean["dst"], clean["dport"]) == ("PCMU/8000", lab.uas_v4, SIPP_MEDIA_PORT)
