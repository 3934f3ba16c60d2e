"""RTP/RTCP stream quality: loss, reordering, duplicates, jitter, RTCP reports, MOS;
codecs by the payload type each packet carries, RFC 4733 events apart from the audio."""

from __future__ import annotations

import struct

import pytest

from tests.support.frames import raw
from userspace.media import MediaTracker
from userspace.records import NO_ORIGIN
from userspace.rtcp import NS, NTP_UNIX_OFFSET
from userspace.rtp import Formats, mos_estimate

FLOW = (raw("10.0.0.1"), 40000, raw("10.0.0.2"), 50000)
SSRC = 0x1234ABCD
PTIME_NS = 20_000_000  # 20 ms packets
SAMPLES = 160          # 20 ms at 8 kHz


def rtp(seq: int, timestamp: int, ssrc: int = SSRC, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + b"\xd5" * 160


OFFER: Formats = {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}


def stream_of(tracker: MediaTracker) -> dict[str, object]:
    (stream,) = tracker.streams.values()
    return stream.report()


def play(tracker: MediaTracker, seqs: list[int], jitter_ns: list[int] | None = None,
         start_seq: int = 0, pt: int = 0, formats: Formats = OFFER, clock_ns: int = 0,
         start_timestamp: int = 0) -> None:
    for i, n in enumerate(seqs):
        arrival = clock_ns + n * PTIME_NS + (jitter_ns[i] if jitter_ns else 0)
        tracker.rtp(FLOW, rtp(start_seq + n, start_timestamp + n * SAMPLES, pt=pt), arrival, 172, "call-1",
                    formats, NO_ORIGIN)


def test_a_clean_stream_has_no_loss_and_a_high_mos() -> None:
    tracker = MediaTracker()
    play(tracker, list(range(500)))
    report = stream_of(tracker)
    assert (report["packets"], report["expected"], report["lost"], report["jitter_ms"]) == (500, 500, 0, 0.0)
    assert report["mos"] == pytest.approx(4.4, abs=0.05)
    assert report["duration_ms"] == 499 * 20.0


def test_every_tenth_packet_dropped_is_ten_percent_loss() -> None:
    tracker = MediaTracker()
    # 501 packets so the last drop (499) is followed by one that reveals it.
    play(tracker, [n for n in range(501) if n % 10 != 9])
    report = stream_of(tracker)
    assert (report["lost"], report["expected"], report["loss_percent"]) == (50, 501, 9.98)
    assert report["mos"] == pytest.approx(3.37, abs=0.05)  # R = 93.2 - 0.72 - 95 * 9.98 / 35.08


def test_reordering_and_duplicates_are_not_loss() -> None:
    tracker = MediaTracker()
    play(tracker, [0, 1, 3, 2, 4, 4, 5, 7, 6, 8])
    report = stream_of(tracker)
    assert (report["lost"], report["reordered"], report["duplicates"]) == (0, 2, 1)


def test_sequence_wraparound() -> None:
    tracker = MediaTracker()
    play(tracker, list(range(200)), start_seq=65_500)
    report = stream_of(tracker)
    assert (report["packets"], report["expected"], report["lost"]) == (200, 200, 0)


def test_interarrival_jitter_follows_rfc3550() -> None:
    tracker = MediaTracker()
    alternating = [(i % 2) * 4_000_000 for i in range(2000)]  # every other packet 4 ms late
    play(tracker, list(range(2000)), alternating)
    # |D| is 32 clock units (4 ms at 8 kHz) every packet; J converges to it.
    assert stream_of(tracker)["jitter_ms"] == pytest.approx(4.0, abs=0.01)


def test_jitter_is_the_same_in_any_capture_clock_and_across_a_timestamp_wrap() -> None:
    # Live arrivals are monotonic ns, a replayed pcap's are wall-clock ns: the same
    # packets must give the same jitter, whatever the offset between the two.
    late = [(i % 3) * 1_234_567 for i in range(300)]
    reports: list[object] = []
    for clock_ns, start_timestamp in [(0, 0), (1_796_059_174_981_642_413, 0), (777, 2**32 - 100 * SAMPLES)]:
        tracker = MediaTracker()
        play(tracker, list(range(300)), late, clock_ns=clock_ns, start_timestamp=start_timestamp)
        reports.append(stream_of(tracker)["jitter_ms"])
    assert reports[0] == reports[1] == reports[2]
    assert isinstance(reports[0], float) and 0 < reports[0] < 2


def test_rtcp_receiver_report_gives_the_peers_view_and_round_trip_time() -> None:
    tracker = MediaTracker()
    play(tracker, list(range(10)))
    wall_ns = (1_800_000_000 * NS) + 500_000_000
    seconds, rest = divmod(wall_ns, NS)
    now_ntp = ((seconds + NTP_UNIX_OFFSET) & 0xFFFF) << 16 | (rest * 65536 // NS)
    lsr = (now_ntp - 65536 // 10 - 65536 // 20) & 0xFFFFFFFF   # sent 150 ms ago
    dlsr = 65536 // 10                                          # held 100 ms by the peer
    block = struct.pack("!IIIIII", SSRC, (25 << 24) | 3, 9, 80, lsr, dlsr)
    report_packet = struct.pack("!BBHI", 0x81, 201, 7, 0xBEEF) + block
    (report,) = tracker.rtcp(report_packet, wall_ns, "call-1")
    assert report.homer_json()["report_blocks"] == [{
        "source_ssrc": SSRC, "fraction_lost": 25, "packets_lost": 3, "highest_seq_no": 9, "ia_jitter": 80,
        "lsr": lsr, "dlsr": dlsr}]
    peer = stream_of(tracker)["peer"]
    assert isinstance(peer, dict)
    assert (peer["fraction_lost"], peer["cumulative_lost"], peer["jitter_ms"]) == (0.0977, 3, 10.0)
    assert peer["rtt_ms"] == pytest.approx(50.0, abs=0.1)
    assert tracker.stats.rtcp == 1


def test_a_broken_rtcp_compound_and_junk_rtp_are_counted() -> None:
    tracker = MediaTracker()
    (cut,) = tracker.rtcp(struct.pack("!BBHI", 0x80, 201, 9, 1), 0, "call-1")  # says 40 bytes, has 8
    assert (cut.ssrc, cut.blocks) == (1, ()), "what is whole of it: its SSRC, no block"
    assert tracker.rtcp(struct.pack("!BBH", 0x80, 201, 0) + bytes([0x81, 202, 0, 1]), 0, "call-1") == []
    assert tracker.rtcp(b"\x40" + bytes(7), 0, "call-1") == []  # version 1
    tracker.rtp(FLOW, b"\x00" * 20, 0, 20, "call-1", OFFER, NO_ORIGIN)
    assert (tracker.stats.rtcp, tracker.stats.rtcp_cut, tracker.stats.rtcp_errors, tracker.stats.not_rtp) == \
        (3, 1, 2, 1), "an RR of 4 bytes (no SSRC) and version 1 are broken"
    assert len(tracker.streams) == 0


def test_the_codec_is_the_payload_type_sent_not_the_first_offered() -> None:
    """Issue 13: a stream sending PT 8 was labelled with the SDP's first codec, PCMU."""
    tracker = MediaTracker()
    play(tracker, list(range(100)), pt=8)
    report = stream_of(tracker)
    assert (report["codec"], report["payload_type"]) == ("PCMA/8000", 8)
    assert report["payload_types"] == [{"payload_type": 8, "codec": "PCMA/8000", "packets": 100}]


def test_telephone_events_are_counted_apart_and_never_scored() -> None:
    """Issue 13: DTMF (telephone-event, PT 101) was reported as audio and given a MOS."""
    tracker = MediaTracker()
    play(tracker, list(range(50)), pt=8)
    for n in range(50, 60):  # one event: ten packets with the same timestamp (RFC 4733 §2.5.1.2)
        tracker.rtp(FLOW, struct.pack("!BBHII", 0x80, 101, n, 50 * SAMPLES, SSRC) + b"\x01\x0a\x00\xa0",
                    n * PTIME_NS + 7_000_000, 16, "call-1", OFFER, NO_ORIGIN)
    play(tracker, list(range(60, 110)), pt=8)
    report = stream_of(tracker)
    assert (report["dtmf_events"], report["dtmf_packets"]) == (1, 10)
    assert report["payload_type"] == 8, "the audio type, as the codec: not the event type sent most"
    assert (report["packets"], report["lost"]) == (110, 0)
    assert report["codec"] == "PCMA/8000" and report["jitter_ms"] == 0.0, "events do not enter the jitter"
    only_events = MediaTracker()
    only_events.rtp(FLOW, struct.pack("!BBHII", 0x80, 101, 1, 160, SSRC) + bytes(4), 0, 16, "c", OFFER,
                    NO_ORIGIN)
    events = stream_of(only_events)
    assert (events["codec"], events["mos"], events["jitter_ms"]) == ("telephone-event/8000", None, None)


def test_a_report_is_due_every_interval_from_the_streams_first_packet() -> None:
    tracker = MediaTracker(report_interval_ns=1_000_000_000)
    due = [n for n in range(200) if tracker.rtp(FLOW, rtp(n, n * SAMPLES), 5 * NS + n * PTIME_NS, 172,
                                                 "call-1", OFFER, NO_ORIGIN)]
    assert due == [50, 100, 150], "one a second of capture time, counted from the first packet"


def test_a_stray_sequence_number_hides_no_loss_and_a_confirmed_restart_keeps_it() -> None:
    """RFC 3550 A.1: a jump is believed when the next packet follows it. One stray
    packet reset the sequence and a stream losing 10 % reported 0 %."""
    tracker = MediaTracker()
    seqs = [n for n in range(500) if n % 10 != 9]
    play(tracker, seqs[:200])
    tracker.rtp(FLOW, rtp(40_000, 0), 201 * PTIME_NS, 172, "call-1", OFFER, NO_ORIGIN)
    play(tracker, seqs[200:])
    report = stream_of(tracker)
    assert (report["lost"], report["stray"], report["packets"]) == (49, 1, 450)
    restarted = MediaTracker()
    play(restarted, seqs[:100])  # 10 lost so far (the last, 109, shows when 110 comes)
    play(restarted, list(range(100)), start_seq=30_000)  # the sender restarts: two in a row confirm it
    report = stream_of(restarted)
    assert (report["stray"], report["lost"]) == (1, 11), "a jump's first packet waits; the loss before stays"


def test_rtcp_reports_on_an_ssrc_go_to_that_calls_stream_only() -> None:
    """Two calls' streams with one SSRC: a receiver report on one call's flow updated
    the other call's stream."""
    tracker = MediaTracker()
    for call in ("call-1", "call-2"):
        tracker.rtp(FLOW, rtp(1, 160), 0, 172, call, OFFER, NO_ORIGIN)
    block = struct.pack("!IIIIII", SSRC, 5, 9, 80, 0, 0)
    tracker.rtcp(struct.pack("!BBHI", 0x81, 201, 7, 0xBEEF) + block, NS, "call-1")
    tracker.rtcp(struct.pack("!BBHI", 0x81, 201, 7, 0xBEEF) + block, NS, None)  # after its call ended
    peers = {s.call_id: s.peer for s in tracker.streams.values()}
    assert peers["call-2"] is None and peers["call-1"] is not None and peers["call-1"]["cumulative_lost"] == 5
    assert tracker.stats.without_call == 1


def test_an_rtcp_compound_cut_by_a_snaplen_keeps_its_whole_reports() -> None:
    sender_report = struct.pack("!BBHIQIII", 0x81, 200, 12, 0xA1, 0, 0, 10, 1600) + \
        struct.pack("!IIIIII", SSRC, 3, 9, 80, 0, 0)
    sdes = bytes([0x81, 202, 0, 6]) + bytes(24)
    tracker = MediaTracker()
    (report,) = tracker.rtcp((sender_report + sdes)[:64], NS, "call-1")  # the kernel's RTP snaplen
    assert (report.ssrc, len(report.blocks), tracker.stats.rtcp_cut, tracker.stats.rtcp_errors) == \
        (0xA1, 1, 1, 0)


def test_capture_time_that_goes_back_or_jumps_gives_no_absurd_figures() -> None:
    tracker = MediaTracker(report_interval_ns=10 * NS)
    hour = 3600 * NS
    start = 2 * hour
    reports = 0
    for n in range(3000):  # 60 s of packets; the capture clock steps back an hour after 20 s
        arrival = start + n * PTIME_NS - (hour if n >= 1000 else 0)
        due = tracker.rtp(FLOW, rtp(n, n * SAMPLES), arrival, 172, "call-1", OFFER, NO_ORIGIN)
        reports += due is not None
    report = stream_of(tracker)
    assert report["duration_ms"] >= 0 and report["jitter_ms"] == 0.0  # type: ignore[operator]
    assert reports == 4, "every 10 s of packets: one before the step, three after it"
    (stream,) = tracker.streams.values()
    far = start + 10**9 * NS  # a capture time 30 years on: one report, and the next due in one step
    assert tracker.rtp(FLOW, rtp(3000, 3000 * SAMPLES), far, 172, "call-1", OFFER, NO_ORIGIN) is stream
    assert 0 < stream.next_report_ns - far <= 10 * NS


def test_the_mean_mos_follows_the_latest_reports_of_live_streams() -> None:
    tracker = MediaTracker(report_interval_ns=NS)
    assert tracker.mean_mos is None
    for n in range(100):
        stream = tracker.rtp(FLOW, rtp(n, n * SAMPLES), n * PTIME_NS, 172, "call-1", OFFER, NO_ORIGIN)
        if stream is not None:
            mos = tracker.report(stream)["mos"]
    assert tracker.mean_mos == mos
    tracker.take_call("call-1")
    assert tracker.mean_mos is None, "its stream ended: out of the mean"


@pytest.mark.parametrize(("loss", "jitter", "codec", "low", "high"), [
    (0.0, 0.0, "PCMU/8000", 4.3, 4.5), (0.0, 0.0, "G729/8000", 3.9, 4.2),
    (5.0, 10.0, "PCMA/8000", 3.8, 3.95), (40.0, 50.0, "PCMU/8000", 1.6, 1.75),
    (90.0, 200.0, "PCMU", 1.0, 1.0),
])
def test_mos_estimate_ranges(loss: float, jitter: float, codec: str, low: float, high: float) -> None:
    assert low <= mos_estimate(loss, jitter, codec) <= high
