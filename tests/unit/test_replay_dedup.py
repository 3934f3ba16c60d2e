"""Acceptance, through `otus-ebpf replay`: a trunk captured where every frame
shows up twice, the second copy one hop later (TTL one less, the IPv4 checksum
recomputed, a router's MACs and a VLAN tag), with some messages retransmitted
at SIP's own pace (500 ms, then 1 s more: RFC 3261 §17.1.1.2) byte for byte.
With --dedup each message is one record and the retransmissions stay; without,
every copy is a record too. The replay's window runs on the capture's times."""

from __future__ import annotations

import json
import struct
import subprocess
from collections import Counter
from pathlib import Path

from tests.support.agent import read_records
from tests.support.frames import next_hop
from tests.support.paths import AGENT
from tests.support.trunk import CORE, MAC_A, MAC_B, SBC, UDP_PROTO, Wire, trunk_messages, udp_datagram

CALLS = 12
RETRANSMITTED = (0, 7, 21)          # messages sent again 500 ms and 1.5 s after the first time
COPY_AFTER_US = 40                  # the second capture point sees a frame this much later
GAP_US = 2_000                      # between messages


def write_capture(path: Path) -> tuple[int, int]:
    """The pcap; returns (messages, retransmissions)."""
    messages = trunk_messages(CALLS, seed=5, pad_invite=1600)  # INVITEs over the MTU: fragments too
    wire = Wire(SBC, CORE, MAC_A, MAC_B)
    timed: list[tuple[int, bytes]] = []
    for n, (direction, payload) in enumerate(messages):
        src, dst, _, _ = wire.ends(direction)
        frames = wire.frames(direction, UDP_PROTO, udp_datagram(src[1], dst[1], payload), mtu=1500)
        sent = [n * GAP_US] + ([n * GAP_US + 500_000, n * GAP_US + 1_500_000] if n in RETRANSMITTED else [])
        for at in sent:  # a retransmission is the same datagram again, IP id and all
            for frame in frames:
                timed += [(at, frame), (at + COPY_AFTER_US, next_hop(frame, vlans=(30,)))]
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for at, frame in sorted(timed, key=lambda timed_frame: timed_frame[0]):
            seconds, micros = divmod(1_700_000_000_000_000 + at, 1_000_000)
            f.write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)
    return len(messages), 2 * len(RETRANSMITTED)


def replay(capture: Path, out: Path, *flags: str) -> list[dict[str, object]]:
    result = subprocess.run([str(AGENT), "replay", str(capture), "--out", str(out), *flags],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return read_records(out)


def sip_records(records: list[dict[str, object]]) -> Counter[str]:
    """How many records each SIP message made, by the bytes of its message."""
    return Counter(json.dumps(r, sort_keys=True, default=str) for r in records if r["kind"] == "sip")


def test_with_dedup_a_message_seen_twice_is_one_record_and_retransmissions_stay(tmp_path: Path) -> None:
    capture = tmp_path / "two-taps.pcap"
    messages, retransmissions = write_capture(capture)
    deduplicated = replay(capture, tmp_path / "dedup.jsonl", "--dedup")
    every_copy = replay(capture, tmp_path / "all.jsonl")
    sip_once, sip_all = sip_records(deduplicated), sip_records(every_copy)
    assert sum(sip_once.values()) == messages + retransmissions
    assert sum(sip_all.values()) == 2 * (messages + retransmissions)
    # What stays is each message as the first tap saw it (no VLAN tag), time and all.
    first_tap = [r for r in every_copy if r["kind"] == "sip" and not r["vlan"]]
    assert sip_once == sip_records(first_tap)


def test_a_window_past_sips_timer_swallows_retransmissions_too(tmp_path: Path) -> None:
    """What the window means: at 600 ms the first retransmission (500 ms) is a duplicate."""
    capture = tmp_path / "two-taps.pcap"
    messages, _retransmissions = write_capture(capture)
    records = replay(capture, tmp_path / "long.jsonl", "--dedup", "--dedup-window-ms", "600")
    assert sum(sip_records(records).values()) == messages + len(RETRANSMITTED)  # the 1.5 s ones stay
