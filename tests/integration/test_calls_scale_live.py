"""20,000 calls live at once, each with RTP and RTCP endpoints of its own on
both sides (80,000 flow entries: past the 65,536 the map once held), media on
a sample, then all torn down: every call summarised whole, every live gauge
and the kernel's flow map back to 0, and the agent's memory within the
budget docs/CONFIG.md gives. scripts/bench/live_calls.py runs 100,000."""

from __future__ import annotations

from pathlib import Path

from otus_ebpf.control.memory import memory_budget
from otus_ebpf.kernel.settings import DEFAULT_RING_MB
from tests.support.lab import Lab
from tests.support.mass_calls import PACKETS, run_mass_calls

CALLS = 20_000


def test_twenty_thousand_calls_with_their_own_endpoints_come_and_go(lab: Lab, tmp_path: Path) -> None:
    result = run_mass_calls(lab, tmp_path, CALLS, ("--workers", "2"))
    assert result.exit_status == 0, result.output[-3000:]
    assert result.learned == result.kernel_flows_at_peak == 4 * CALLS > 65_536
    assert result.processes == 3
    assert result.rss_bytes_at_peak <= memory_budget(CALLS, 2, DEFAULT_RING_MB), result.pss_by_process
    assert result.gauges_after == dict.fromkeys(result.gauges_after, 0.0)
    assert result.kernel_flows_after == 0
    summaries = {r["call_id"]: r for r in result.records if r["kind"] == "call"}
    assert len(summaries) == CALLS
    assert {s["end_cause"] for s in summaries.values()} == {"bye"}
    for n in result.sampled:
        (stream,) = summaries[f"mass-{n}"]["streams"]
        assert (stream["ssrc"], stream["packets"], stream["lost"]) == (0x7000 + n, PACKETS, 0), n
    sip = [r for r in result.records if r["kind"] == "sip"]
    assert len(sip) == 5 * CALLS
