"""Issue 13's call, replayed: a pcap written here with real 20 ms pacing. The
caller offers PCMU, PCMA and telephone-event; the callee answers PCMA; both
send PT 8 from right after the 200 OK, for 5 s, the caller losing 2 % and
pressing two DTMF digits. Replayed at the default speed (as fast as it reads)
and paced, the records say PCMA on both streams, count every packet and the
exact loss, and count the digits as events, not audio."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf.capture.replay import run_replay
from otus_ebpf.options import AttachOptions
from tests.support import calls
from tests.support.calls import OFFERED, PCMA, PTIME_NS, TELEPHONE_EVENT, Datagram, Dialog, Party, Stream
from tests.support.frames import ethernet, ipv4, udp
from tests.support.tunnels import vxlan
from userspace.calls import CallLimits

T0 = 1_800_000_000 * 1_000_000_000  # capture time of the INVITE
SECOND = 1_000_000_000
ANSWERED = T0 + 2 * SECOND
CALL_SLOTS = 250                      # 5 s of 20 ms packets
LOST = frozenset({24, 74, 124, 174, 224})  # 2 % of the caller's 250 slots
DTMF = {100: 5, 150: 1}              # slot -> digit, five packets each

CALLER = Party("10.1.0.1", 40000, "alice")
CALLEE = Party("10.2.0.1", 50000, "bob")
DIALOG = Dialog("pacing-1@test", CALLER, CALLEE, OFFERED,
                {PCMA: "PCMA/8000", TELEPHONE_EVENT: "telephone-event/8000"})
UP = Stream(0xA1, PCMA, CALL_SLOTS, ANSWERED + 10_000_000, lost=LOST, dtmf=DTMF)   # caller to callee
DOWN = Stream(0xB2, PCMA, CALL_SLOTS, ANSWERED + 1_000_000)                        # callee to caller
HANGUP = ANSWERED + 10_000_000 + CALL_SLOTS * PTIME_NS


def timeline() -> list[Datagram]:
    sip = calls.signalling(DIALOG, [(T0, "invite"), (T0 + SECOND, "ringing"), (ANSWERED, "ok"),
                                    (ANSWERED + 20_000_000, "ack"), (HANGUP, "bye"),
                                    (HANGUP + 5_000_000, "bye_ok")])
    at = ANSWERED + 3 * SECOND
    rtcp = [Datagram(at, CALLER.address, CALLER.media_port + 1, CALLEE.address, CALLEE.media_port + 1,
                     calls.sender_report(UP.ssrc, at, 149, 149 * 160, about=DOWN.ssrc, jitter=8))]
    return sip + calls.media(UP, CALLER, CALLEE) + calls.media(DOWN, CALLEE, CALLER) + rtcp


def replay(tmp_path: Path, speed: float | None, interval_s: float = 10.0) -> list[dict[str, Any]]:
    pcap = tmp_path / "paced.pcap"
    calls.write_pcap(pcap, timeline())
    out = tmp_path / f"records-{speed}-{interval_s}.jsonl"
    options = AttachOptions(("paced",), out=str(out), calls=CallLimits(rtp_report_interval_s=interval_s))
    assert run_replay(pcap, options, speed) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("speed", [None, 20.0], ids=["default-speed", "paced-20x"])
def test_codec_every_packet_exact_loss_and_dtmf_events(tmp_path: Path, speed: float | None) -> None:
    records = replay(tmp_path, speed)
    (call,) = [r for r in records if r["kind"] == "call"]
    assert call["end_cause"] == "bye"
    streams = {s["ssrc"]: s for s in call["streams"]}
    up, down = streams[UP.ssrc], streams[DOWN.ssrc]
    assert (up["codec"], down["codec"]) == ("PCMA/8000", "PCMA/8000")
    assert (down["packets"], down["lost"], down["expected"]) == (DOWN.sent, 0, DOWN.sent)
    assert (up["packets"], up["lost"], up["expected"]) == (UP.sent, len(LOST), UP.expected)
    assert up["loss_percent"] == pytest.approx(100 * len(LOST) / UP.expected, abs=0.001)
    assert (up["dtmf_events"], up["dtmf_packets"]) == (len(DTMF), len(DTMF) * 7), "5 packets, the end sent 3x"
    assert (down["dtmf_events"], down["dtmf_packets"]) == (0, 0)
    by_type = {t["payload_type"]: t for t in up["payload_types"]}
    assert by_type[PCMA]["packets"] == UP.sent - len(DTMF) * 7
    assert by_type[TELEPHONE_EVENT]["codec"] == "telephone-event/8000"
    assert up["mos"] < down["mos"] <= 4.5 and up["jitter_ms"] == pytest.approx(0, abs=0.01)
    rtcp = [r for r in records if r["kind"] == "rtcp"]
    assert [(r["call_id"], r["ssrc"], r["type"]) for r in rtcp] == [(DIALOG.call_id, UP.ssrc, 200)]


def test_paced_and_unpaced_replays_give_the_same_records(tmp_path: Path) -> None:
    assert replay(tmp_path, None) == replay(tmp_path, 20.0)


def test_a_5s_call_gives_periodic_stream_reports_timed_from_each_streams_first_packet(tmp_path: Path) -> None:
    records = replay(tmp_path, None, interval_s=1.0)
    reports = [r for r in records if r["kind"] == "rtp"]
    periodic = [r for r in reports if not r["final"]]
    final = [r for r in reports if r["final"]]
    assert {r["ssrc"] for r in final} == {UP.ssrc, DOWN.ssrc}
    for stream in (UP, DOWN):
        times = [r["ts_ns"] for r in periodic if r["ssrc"] == stream.ssrc]
        assert len(times) == 4, "at 1, 2, 3 and 4 s of a 5 s stream"
        assert all(0 <= t - stream.start_ns - (n + 1) * SECOND < PTIME_NS for n, t in enumerate(times))
    summary = next(r for r in records if r["kind"] == "call")
    assert sorted(s["packets"] for s in summary["streams"]) == sorted(r["packets"] for r in final)


def test_one_frame_stamped_a_year_ahead_times_out_no_call(tmp_path: Path,
                                                          logged: pytest.LogCaptureFixture) -> None:
    """A retransmitted ACK stamped a year ahead expired every other call at once, then
    nothing expired for a year of capture time."""
    stray_ack = calls.signalling(DIALOG, [(ANSWERED + 365 * 86_400 * SECOND, "ack")])
    pcap = tmp_path / "outlier.pcap"
    frames = [*timeline(), *stray_ack]
    frames.sort(key=lambda d: d.ts_ns)
    frames.insert(10, frames.pop())  # in the file among the first frames, as a merge might leave it
    calls.write_pcap_in_order(pcap, frames)
    out = tmp_path / "out.jsonl"
    assert run_replay(pcap, AttachOptions(("o",), out=str(out)), None) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    (call,) = [r for r in records if r["kind"] == "call"]
    assert call["end_cause"] == "bye" and len(call["streams"]) == 2
    assert "stamped_ahead=1" in logged.messages[-2]


def test_media_to_an_address_no_sdp_gave_reads_its_payload_types_from_the_other_sides_sdp(
        tmp_path: Path) -> None:
    """The callee behind NAT answers with telephone-event as 96 at a private address; the
    caller's media goes to its public one. Its DTMF was "unknown" audio, scored."""
    private = Party("192.168.1.5", 50000, "bob")
    dialog = Dialog("nat-1@test", CALLER, private, OFFERED, {PCMA: "PCMA/8000", 96: "telephone-event/8000"})
    sip = calls.signalling(dialog, [(T0, "invite"), (ANSWERED, "ok"), (HANGUP, "bye")])
    public = Party("203.0.113.5", 50000, "bob")
    up = Stream(0xA1, PCMA, 100, ANSWERED + 10_000_000, dtmf={40: 5})
    packets = [d for d in calls.media(up, CALLER, public)]
    as_96 = [calls.Datagram(d.ts_ns, d.src, d.sport, d.dst, d.dport,
                            d.payload[:1] + bytes([d.payload[1] & 0x80 | 96]) + d.payload[2:])
             if d.payload[1] & 0x7F == TELEPHONE_EVENT else d for d in packets]
    pcap = tmp_path / "nat.pcap"
    calls.write_pcap(pcap, sip + as_96)
    out = tmp_path / "nat.jsonl"
    assert run_replay(pcap, AttachOptions(("nat",), out=str(out)), None) == 0
    (call,) = [json.loads(line) for line in out.read_text().splitlines() if '"kind":"call"' in line]
    (stream,) = call["streams"]
    assert (stream["dst"], stream["codec"], stream["dtmf_events"]) == ("203.0.113.5", "PCMA/8000", 1)
    assert {t["payload_type"]: t["codec"] for t in stream["payload_types"]} == \
        {PCMA: "PCMA/8000", 96: "telephone-event/8000"}


def test_a_call_mirrored_inside_vxlan_has_its_media_followed_and_its_tunnel_named(tmp_path: Path) -> None:
    """SIP, SDP and RTP all inside one VXLAN: the media the SDP announced is
    matched on the inner addresses, counted as on the wire; records name the tunnel."""
    pcap = tmp_path / "vxlan.pcap"
    with pcap.open("wb") as f:
        f.write(struct.pack("<IHHiIII", calls.NANOSECOND_PCAP_MAGIC, 2, 4, 0, 0, 65535,
                            calls.LINKTYPE_ETHERNET))
        for d in sorted(timeline(), key=lambda d: d.ts_ns):
            frame = vxlan(ethernet(ipv4(udp(d.payload, d.sport, d.dport), src=d.src, dst=d.dst)), vni=77)
            seconds, nanos = divmod(d.ts_ns, SECOND)
            f.write(struct.pack("<IIII", seconds, nanos, len(frame), len(frame)) + frame)
    out = tmp_path / "records.jsonl"
    assert run_replay(pcap, AttachOptions(("mirror",), out=str(out)), None) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    (call,) = [r for r in records if r["kind"] == "call"]
    streams = {s["ssrc"]: s for s in call["streams"]}
    assert (streams[UP.ssrc]["packets"], streams[DOWN.ssrc]["packets"]) == (UP.sent, DOWN.sent)
    assert call["encap"] == {"kind": "vxlan", "id": 77, "src": "192.0.2.1", "dst": "192.0.2.2"}
    assert {r["encap"]["id"] for r in records if r["kind"] == "sip"} == {77}
