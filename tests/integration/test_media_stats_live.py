"""Live, on the lab: RTP measured in the kernel (the default). A trunk's calls
are set up, their RTP replayed by tcpreplay, then torn down: the call
summaries count every packet sent, each stream's first packet is the only
one copied up (the kernel's counters say so), and `--media packets` on the
same traffic gives the same figures per stream. scripts/bench/live_media.py
runs 2,000 streams at 250,000 packets/s."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.support.agent import final_stats, read_records, start_agent
from tests.support.lab import Lab, interface_mac, tcpreplay
from tests.support.media_trunk import MediaTrunk, write_media_trunk

STREAMS, PER_STREAM, RATE = 200, 150, 20_000
LEARN_WAIT_S, QUIET_S = 3.0, 3.0


def capture(lab: Lab, trunk: MediaTrunk, workdir: Path, mode: str) -> tuple[dict[int, dict[str, Any]],
                                                                             dict[str, int]]:
    """The streams the call summaries report, by SSRC, and the agent's last stats line."""
    out = workdir / f"{mode}.jsonl"
    agent = start_agent(lab.uas_ns, lab.uas_if, out, workdir / f"{mode}.log",
                        ["--direction", "ingress", "--media", mode, "--workers", "2"])
    try:
        tcpreplay(lab, trunk.setup, 5_000)
        time.sleep(LEARN_WAIT_S)
        tcpreplay(lab, trunk.rtp, RATE)
        tcpreplay(lab, trunk.teardown, 5_000)
        time.sleep(QUIET_S)
    finally:
        status = agent.stop(signal.SIGTERM)
    assert status == 0, agent.output()[-3000:]
    summaries = [r for r in read_records(out) if r["kind"] == "call"]
    assert len(summaries) == STREAMS and {s["end_cause"] for s in summaries} == {"bye"}
    streams = {s["ssrc"]: s for r in summaries for s in r["streams"]}
    return streams, final_stats(agent)


def test_every_rtp_packet_is_counted_in_the_kernel_only_first_packets_go_up(lab: Lab, tmp_path: Path) -> None:
    trunk = write_media_trunk(tmp_path, STREAMS, PER_STREAM, interface_mac(lab.uac_ns, lab.uac_if),
                              interface_mac(lab.uas_ns, lab.uas_if))
    streams, stats = capture(lab, trunk, tmp_path, "stats")
    assert sorted(streams) == list(range(1, STREAMS + 1))
    assert {(s["packets"], s["expected"], s["lost"], s["duplicates"]) for s in streams.values()} == {
        (PER_STREAM, PER_STREAM, 0, 0)}
    assert sum(s["packets"] for s in streams.values()) == trunk.packets
    # SIP (7 a call) and each stream's first packet were copied up; the rest was counted in the kernel.
    assert stats["ingress_submitted"] == 7 * STREAMS + STREAMS, stats
    assert stats["ingress_media_counted"] == trunk.packets - STREAMS
    assert stats["ingress_submit_failed"] == stats["ingress_streams_full"] == 0

    packets, _ = capture(lab, trunk, tmp_path, "packets")
    same = ("packets", "expected", "lost", "reordered", "duplicates", "bytes", "codec", "payload_type")
    for ssrc, stream in streams.items():
        assert {k: stream[k] for k in same} == {k: packets[ssrc][k] for k in same}, ssrc
