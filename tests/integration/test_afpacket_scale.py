"""The AF_PACKET fallback with the media of 1,000 and 20,000 calls learned.

Its socket filter named every learned media port: at ~100 calls the program
passed the classic BPF limit and the agent died (EINVAL), at 500 it spun in
libpcap's optimiser and grew to gigabytes. Now the ports go in as a bounded
number of ranges. Every call announces RTP and RTCP on both sides; then RTP
flows on a sample of the calls, and each sampled call's summary (written at
stop: capture-stopped) must hold its stream, whole, and the agent must have
run throughout with no failed filter swap."""

from __future__ import annotations

import signal
import struct
import time
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.agent import final_stats, read_records, start_agent
from tests.support.broker import free_port
from tests.support.lab import Lab
from tests.support.send import send_udp
from tests.support.sip_samples import sip_message
from tests.unit.test_metrics import scrape

SAMPLED, PACKETS = 8, 50
LEARN_TIMEOUT_S = 120.0


def port(n: int) -> int:
    return 10_000 + 2 * n  # RTP; RTCP on the next port. Both sides use the same numbers


def sdp(address: str, n: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
            f"m=audio {port(n)} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def dialog(lab: Lab, n: int, response: bool) -> bytes:
    headers = [f"Via: SIP/2.0/UDP {lab.uac_v4};branch=z9hG4bK{n}", f"From: <sip:u{n}@x>;tag=a{n}",
               f"To: <sip:v{n}@y>{';tag=b' if response else ''}", f"Call-ID: scale-{n}", "CSeq: 1 INVITE",
               "Content-Type: application/sdp"]
    if response:
        return sip_message("SIP/2.0 200 OK", headers, sdp(lab.uas_v4, n))
    return sip_message(f"INVITE sip:v{n}@y SIP/2.0", headers, sdp(lab.uac_v4, n))


@pytest.mark.parametrize("calls", [1_000, 20_000])
def test_media_of_many_calls_is_captured_and_measured(lab: Lab, tmp_path: Path, calls: int) -> None:
    metrics = free_port(lab.uas_ns)
    out = tmp_path / "records.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                        ["--mode", "afpacket", "--metrics", f"127.0.0.1:{metrics}"])
    sampled = sorted({round(i * (calls - 1) / (SAMPLED - 1)) for i in range(SAMPLED)})
    try:
        invites = [dialog(lab, n, False) for n in range(calls)]
        answers = [dialog(lab, n, True) for n in range(calls)]
        send_udp(lab.uac_ns, lab.uac_v4, 5060, lab.uas_v4, 5060, invites)
        send_udp(lab.uas_ns, lab.uas_v4, 5060, lab.uac_v4, 5060, answers)
        deadline = time.monotonic() + LEARN_TIMEOUT_S
        while True:
            with netns.inside(lab.uas_ns):
                learned = sum(v for (name, _l), v in scrape(f"127.0.0.1:{metrics}").items()
                              if name == "otus_flows_active")
            if learned == 4 * calls:  # in the calls' tables; the socket filter follows in the same loop
                break
            alive = agent.proc.poll() is None
            assert time.monotonic() < deadline and alive, (learned, agent.output()[-2000:])
            time.sleep(0.5)
        time.sleep(1.0)
        for n in sampled:
            packets = [struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5000 + n) + b"\xd5" * 160
                       for seq in range(PACKETS)]
            send_udp(lab.uac_ns, lab.uac_v4, port(n), lab.uas_v4, port(n), packets)
        time.sleep(1.0)
        assert agent.proc.poll() is None, "the agent ran throughout"
    finally:
        assert agent.stop(signal.SIGTERM) == 0, agent.output()[-2000:]
    summaries = {r["call_id"]: r for r in read_records(out) if r["kind"] == "call"}
    assert len(summaries) == calls and {s["end_cause"] for s in summaries.values()} == {"capture-stopped"}
    for n in sampled:
        (stream,) = summaries[f"scale-{n}"]["streams"]
        assert (stream["ssrc"], stream["packets"], stream["lost"]) == (0x5000 + n, PACKETS, 0), n
    assert final_stats(agent)["afpacket_filter_failures"] == 0
