"""Property tests over generated hostile calls (tests/support/hostile.py):
SIP and SDP with Unicode digits, huge, negative and signed numbers, host
names, every port edge, hostile RTP/RTCP, over UDP and shuffled TCP, through
the whole pipeline and flow learning into a table that packs the kernel's
key. Strict: any exception other than a counted decode error fails.
scripts/bench/fuzz_pipeline.py runs the same generator on 1,000,000 events."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otus_ebpf.kernel.flows import FlowStats
from tests.support.hostile import CheckedFlowTable, drive_hostile
from userspace.boundary import Boundary
from userspace.calls import CallLimits
from userspace.pipeline import Pipeline
from userspace.records import CallSummary


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=4))
def test_generated_hostile_calls_raise_nothing_and_learn_only_sound_endpoints(rng: random.Random,
                                                                              calls: int) -> None:
    pipeline = Pipeline({}, 0, calls=CallLimits(max_streams=4), boundary=Boundary(strict=True))
    table, stats = CheckedFlowTable(), FlowStats()
    drive_hostile(pipeline, table, stats, rng, calls)
    assert stats.failed == 0 and pipeline.boundary.counts == {}
    for summary in pipeline.expire(10**18):
        if isinstance(summary, CallSummary):
            assert len(summary.streams) <= 4 and len(summary.media) <= 4
    assert all(0 < port < 65536 for _address, port in table.learned)


def test_a_thousand_generated_calls_in_one_pipeline() -> None:
    """State that builds up across calls (streams, owners, TCP, reassembly) stays sound."""
    pipeline = Pipeline({}, 0, boundary=Boundary(strict=True))
    table, stats = CheckedFlowTable(), FlowStats()
    fed = drive_hostile(pipeline, table, stats, random.Random(12), 1000)
    assert fed > 10_000 and pipeline.stats.records > 1000
    assert pipeline.calls.stats.sdp_unlearnable > 0 and pipeline.calls.stats.sdp_bad_ports > 0
    pipeline.expire(10**18)
    assert len(pipeline.calls) == 0 and pipeline.calls.flows_active == 0
    apply_remaining = pipeline.take_flow_events()
    for event in apply_remaining:
        table.forget(event)
    assert table.learned == {}, "every endpoint learned was forgotten when its call ended"
