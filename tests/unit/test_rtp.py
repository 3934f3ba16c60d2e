"""RTP/RTCP stream quality: loss, reordering, duplicates, jitter, RTCP reports, MOS."""

from __future__ import annotations

import struct

import pytest

from userspace.rtp import NS, NTP_UNIX_OFFSET, MediaTracker, mos_estimate

FLOW = ("10.0.0.1", 40000, "10.0.0.2", 50000)
SSRC = 0x1234ABCD
PTIME_NS = 20_000_000  # 20 ms packets
SAMPLES = 160          # 20 ms at 8 kHz


def rtp(seq: int, timestamp: int, ssrc: int = SSRC, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + b"\xd5" * 160


def stream_of(tracker: MediaTracker) -> dict[str, object]:
    (stream,) = tracker.streams.values()
    return stream.report()


def play(tracker: MediaTracker, seqs: list[int], jitter_ns: list[int] | None = None,
         start_seq: int = 0) -> None:
    for i, n in enumerate(seqs):
        arrival = n * PTIME_NS + (jitter_ns[i] if jitter_ns else 0)
        tracker.feed(FLOW, rtp(start_seq + n, n * SAMPLES), arrival, arrival, 172, 8000, "PCMU/8000",
                     "call-1")


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
    tracker.feed(FLOW, report_packet, 0, wall_ns, len(report_packet))
    peer = stream_of(tracker)["peer"]
    assert isinstance(peer, dict)
    assert (peer["fraction_lost"], peer["cumulative_lost"], peer["jitter_ms"]) == (0.0977, 3, 10.0)
    assert peer["rtt_ms"] == pytest.approx(50.0, abs=0.1)
    assert tracker.stats.rtcp == 1


def test_rtcp_muxed_on_the_rtp_port_is_recognised_and_junk_is_counted() -> None:
    tracker = MediaTracker()
    tracker.feed(FLOW, struct.pack("!BBHI", 0x80, 201, 1, 1), 0, 0, 8)
    tracker.feed(FLOW, b"\x00" * 20, 0, 0, 20)
    assert (tracker.stats.rtcp, tracker.stats.not_rtp, len(tracker.streams)) == (1, 1, 0)


@pytest.mark.parametrize(("loss", "jitter", "codec", "low", "high"), [
    (0.0, 0.0, "PCMU/8000", 4.3, 4.5), (0.0, 0.0, "G729/8000", 3.9, 4.2),
    (5.0, 10.0, "PCMA/8000", 3.8, 3.95), (40.0, 50.0, "PCMU/8000", 1.6, 1.75),
    (90.0, 200.0, "PCMU", 1.0, 1.0),
])
def test_mos_estimate_ranges(loss: float, jitter: float, codec: str, low: float, high: float) -> None:
    assert low <= mos_estimate(loss, jitter, codec) <= high
