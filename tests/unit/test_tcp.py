"""SIP over TCP: stream reassembly from captured segments and message framing."""

from __future__ import annotations

import itertools
import random

from tests.support.sip_samples import INVITE, OK_200
from userspace.sip import parse_message
from userspace.tcp import FIN, SEQ_MOD, SYN, TcpLimits, TcpStreams

KEY = ("10.0.0.1", 40000, "10.0.0.2", 5060)
ISN = 1000


def opened(streams: TcpStreams | None = None, isn: int = ISN) -> TcpStreams:
    streams = TcpStreams() if streams is None else streams
    assert streams.feed(KEY, isn, SYN, b"", 0) == []
    return streams


def segments(data: bytes, count: int, start: int = ISN + 1) -> list[tuple[int, bytes]]:
    size = -(-len(data) // count)
    return [((start + i) % SEQ_MOD, data[i:i + size]) for i in range(0, len(data), size)]


def test_several_messages_in_one_segment_with_keepalives() -> None:
    streams = opened()
    out = streams.feed(KEY, ISN + 1, 0, b"\r\n\r\n" + INVITE + OK_200 + b"\r\n", 1)
    assert out == [INVITE, OK_200]
    assert streams.stats.keepalives == 3


def test_one_message_in_five_segments_out_of_order_with_a_retransmission() -> None:
    streams = opened()
    parts = segments(INVITE, 5)
    order = [parts[3], parts[0], parts[4], parts[0], parts[2], parts[1]]  # parts[0] sent twice
    outputs = [streams.feed(KEY, seq, 0, data, t) for t, (seq, data) in enumerate(order)]
    assert [m for out in outputs for m in out] == [INVITE]
    assert outputs[-1] == [INVITE], "complete only when the last hole fills"
    assert streams.stats.duplicate_segments == 1
    assert streams.stats.out_of_order >= 2
    assert streams.buffered_bytes == 0


def test_partial_overlap_from_a_resegmented_retransmission_is_trimmed() -> None:
    streams = opened()
    assert streams.feed(KEY, ISN + 1, 0, INVITE[:100], 1) == []
    assert streams.feed(KEY, ISN + 1 + 60, 0, INVITE[60:], 2) == [INVITE]
    assert streams.stats.retransmitted_bytes == 40


def test_a_gap_is_counted_and_framing_recovers_at_the_next_message() -> None:
    streams = opened(TcpStreams(TcpLimits(window=4096)))
    seq = ISN + 1
    streams.feed(KEY, seq, 0, INVITE[:50], 1)          # then 200 bytes are never captured
    lost = len(INVITE) - 50
    after_gap = seq + 50 + lost
    # The rest of the lost message's stream, then whole messages, all beyond the window.
    far = after_gap + 10_000
    out = streams.feed(KEY, far, 0, b"garbage tail of a lost message\r\n" + OK_200 + INVITE, 2)
    assert out == [OK_200, INVITE]
    assert streams.stats.gaps == 1 and streams.stats.skipped_bytes > 0


def test_seq_wraparound() -> None:
    isn = SEQ_MOD - 100
    streams = opened(isn=isn)
    parts = segments(OK_200, 3, start=(isn + 1) % SEQ_MOD)
    outputs = [streams.feed(KEY, seq, 0, data, 1) for seq, data in parts]
    assert outputs[-1] == [OK_200]


def test_joining_mid_stream_frames_from_the_next_start_line() -> None:
    streams = TcpStreams()
    assert streams.feed(KEY, 777, 0, INVITE[100:] + OK_200, 1) == [OK_200]


def test_ten_megabytes_of_garbage_stay_within_the_per_connection_bound() -> None:
    limits = TcpLimits()
    streams = opened(TcpStreams(limits))
    rng = random.Random(3)
    seq = ISN + 1
    peak = 0
    for _ in range(10 * 1024):  # 10 MiB in 1 KiB segments, never a start line
        chunk = bytes(rng.choice(b"abcdefghij \t") for _ in range(1024))
        assert streams.feed(KEY, seq, 0, chunk, 1) == []
        seq = (seq + len(chunk)) % SEQ_MOD
        peak = max(peak, streams.buffered_bytes)
    assert peak <= limits.max_message + 1024
    out = streams.feed(KEY, seq, 0, b"\r\n" + INVITE, 2)
    assert out == [INVITE], "a real message after the garbage is still found"


def test_fin_closes_and_idle_streams_expire() -> None:
    streams = opened()
    streams.feed(KEY, ISN + 1, FIN, INVITE, 1)
    assert len(streams) == 0
    other = ("10.0.0.9", 1, "10.0.0.2", 5060)
    streams.feed(other, 5, 0, INVITE[:10], 0)
    streams.expire(301 * 10**9)
    assert len(streams) == 0 and streams.stats.expired_streams == 1 and streams.buffered_bytes == 0


def test_stream_cap_evicts_the_least_recently_used() -> None:
    streams = TcpStreams(TcpLimits(max_streams=2))
    for port in (1, 2, 3):
        streams.feed(("10.0.0.1", port, "10.0.0.2", 5060), 1, SYN, b"", port)
    assert len(streams) == 2 and streams.stats.evicted_streams == 1


def test_random_segmentation_and_order_within_the_window() -> None:
    rng = random.Random(7)
    data = b"".join([INVITE, OK_200] * 20)
    for _ in range(50):
        streams = opened()
        cuts = sorted(rng.sample(range(1, len(data)), 30))
        bounds = [0, *cuts, len(data)]
        parts = [(ISN + 1 + a, data[a:b]) for a, b in itertools.pairwise(bounds)]
        window: list[tuple[int, bytes]] = []
        out: list[bytes] = []
        # Deliver in order except for local swaps, so holes stay inside the window.
        for seq, chunk in parts:
            window.append((seq, chunk))
            if len(window) == 3:
                rng.shuffle(window)
                out += [m for s, c in window for m in streams.feed(KEY, s, 0, c, 1)]
                window = []
        out += [m for s, c in window for m in streams.feed(KEY, s, 0, c, 1)]
        assert out == [INVITE, OK_200] * 20
        assert all(parse_message(m).call_id for m in out)
