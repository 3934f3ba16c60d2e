from __future__ import annotations

import pytest

from otus_ebpf.capture.sampling import StatsLine
from otus_ebpf.kernel import counters
from otus_ebpf.kernel.abi import COUNTERS_VALUE, MAX_SHARDS
from otus_ebpf.kernel.counters import (
    KernelCounts,
    format_kernel_counts,
)
from userspace.event import Counter, Direction
from userspace.pipeline import PipelineStats
from userspace.reporters.kafka import KafkaStats


def test_stats_line_shows_kernel_pipeline_and_kafka_figures() -> None:
    kernel: KernelCounts = {(d, c): 0 for d in Direction for c in Counter if c is not Counter.MAX}
    kernel[Direction.INGRESS, Counter.SEEN] = 10
    kernel[Direction.EGRESS, Counter.SUBMIT_FAILED] = 3
    pipeline = PipelineStats(records=7, sip_errors=1, decode_errors=1)
    line = StatsLine("eth0", format_kernel_counts(kernel), pipeline,
                     KafkaStats(produced=7, delivered=5, failed=2)).format()
    assert "ingress seen=10" in line
    assert ("egress seen=0 matched=0 filtered=0 dropped_method=0 duplicate=0 submitted=0 submit_failed=3"
            in line)
    assert "records=7" in line and "errors=2" in line
    assert "kafka produced=7 delivered=5 failed=2 queue_full=0 backlog=0 dropped=0" in line
    assert "in_flight=0 retried=0" in line
    assert "kafka" not in StatsLine("eth0", [], PipelineStats()).format()


def test_each_directions_counters_are_summed_over_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per CPU, the kernel hands over one struct otus_counters per possible CPU."""
    def value(direction: int, cpu: int) -> bytes:
        counts = [(cpu + 1) * (10 * direction + c) for c in range(Counter.MAX)]
        failures = [(cpu + 1) * (100 + 10 * direction + shard) for shard in range(MAX_SHARDS)]
        return COUNTERS_VALUE.pack(*counts, *failures)

    cpus = 3
    monkeypatch.setattr(counters, "possible_cpus", lambda: cpus)
    monkeypatch.setattr(counters, "map_lookup", lambda _fd, key, size: b"".join(
        value(int.from_bytes(key, "little"), cpu) for cpu in range(cpus)))
    counts, failures = counters.read_counters(-1)
    assert counts[Direction.INGRESS, Counter.SEEN] == 0
    assert counts[Direction.EGRESS, Counter.NOT_IP] == 6 * 11  # 1 + 2 + 3 CPUs' shares
    assert counts[Direction.EGRESS, Counter.DUPLICATE] == 6 * 23
    assert counts[Direction.EGRESS, Counter.STREAMS_FULL] == 6 * 28
    assert failures == [6 * (100 + shard + 110 + shard) for shard in range(MAX_SHARDS)]  # both directions
