from __future__ import annotations

from otus_ebpf.capture.sampling import StatsLine
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
    assert "egress seen=0 matched=0 filtered=0 submitted=0 submit_failed=3" in line
    assert "records=7" in line and "errors=2" in line
    assert "kafka produced=7 delivered=5 failed=2 queue_full=0 backlog=0 dropped=0" in line
    assert "in_flight=0 retried=0" in line
    assert "kafka" not in StatsLine("eth0", [], PipelineStats()).format()
