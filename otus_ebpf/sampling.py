"""A task's figures as one metrics sample: what /metrics, the live view and
a worker's reports to its parent all read. Gathered on demand (at scrape or
redraw time), never on the packet path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from otus_ebpf.metrics import TaskSample
from userspace.boundary import Boundary
from userspace.reporters.hep import HepReporter

if TYPE_CHECKING:
    from otus_ebpf.fanout import QueueStats
    from otus_ebpf.joined import JoinedOutputs, JoinedStats
    from otus_ebpf.runner import Runner


def fields(stats: object) -> list[tuple[str, int]]:
    return [(name, getattr(stats, name)) for name in stats.__dataclass_fields__]  # type: ignore[attr-defined]


def add_boundary(sample: TaskSample, boundary: Boundary) -> None:
    for (stage, kind), value in list(boundary.counts.items()):
        sample.count("otus_internal_errors_total", value, stage=stage, type=kind)


def add_runner_figures(sample: TaskSample, runner: Runner) -> None:
    """A runner's pipeline and outputs (the task's own, or one worker's)."""
    for outcome, value in fields(runner.flow_stats):
        sample.count("otus_flow_updates_total", value, outcome=outcome)
    _pipeline(sample, runner)
    _outputs(sample, runner)


def add_joined_figures(sample: TaskSample, joined: JoinedOutputs) -> None:
    """The files the parent of worker processes writes for all of them."""
    for name, writer in joined.writers.items():
        _queue_figures(sample, name, writer.stats)


def _queue_figures(sample: TaskSample, output: str, stats: QueueStats | JoinedStats) -> None:
    """What an output's queue did with its records (a reporter's queue, or a joined file's)."""
    for outcome in ("written", "overflow", "failed", "to_fallback", "lost"):
        sample.count("otus_output_records_total", getattr(stats, outcome), output=output, outcome=outcome)
    sample.gauge("otus_output_queued", stats.queued, output=output)


def _pipeline(sample: TaskSample, runner: Runner) -> None:
    pipeline = runner.pipeline
    p = pipeline.stats
    sample.count("otus_events_total", p.events)
    sample.count("otus_records_total", p.records)
    for layer, value in (("event", p.event_errors), ("frame", p.decode_errors), ("sip", p.sip_errors)):
        sample.count("otus_decode_errors_total", value, layer=layer)
    for kind, value in dict(p.sip_messages).items():
        sample.count("otus_sip_messages_total", value, kind=kind)
    sample.count("otus_sip_defects_total", p.sip_defects)
    for outcome, value in fields(pipeline.reassembler.stats):
        sample.count("otus_reassembly_total", value, outcome=outcome)
    for outcome, value in fields(pipeline.tcp.stats):
        sample.count("otus_tcp_total", value, outcome=outcome)
    calls = pipeline.calls
    for outcome in ("calls", "ended", "expired", "evicted"):
        sample.count("otus_calls_total", getattr(calls.stats, outcome), outcome=outcome)
    sample.count("otus_early_responses_dropped_total", calls.early_dropped)
    for problem in ("sdp_errors", "sdp_unlearnable", "sdp_bad_ports", "sdp_bad_clock", "media_over_cap"):
        sample.count("otus_sdp_problems_total", getattr(calls.stats, problem), problem=problem)
    media = calls.media.stats
    for outcome in ("not_rtp", "rtcp_errors", "rtcp_cut", "streams_table_full", "without_call",
                    "streams_over_cap"):
        sample.count("otus_media_problems_total", getattr(media, outcome), problem=outcome)
    for outcome in ("kernel_streams", "kernel_orphans", "kernel_orphan_packets", "kernel_gone"):
        sample.count("otus_kernel_streams_total", getattr(media, outcome), outcome=outcome)
    if runner.streams is not None:
        sample.count("otus_kernel_streams_total", runner.streams.stats.failures, outcome="read_failures")
    sample.gauge("otus_dialogs_active", len(calls))
    sample.gauge("otus_flows_active", calls.flows_active)
    sample.gauge("otus_rtp_streams_active", len(calls.media.streams))
    mos = calls.media.mean_mos  # kept as reports are made: O(1) however many streams
    if mos is not None:
        sample.gauge("otus_rtp_mos", mos)


def _outputs(sample: TaskSample, runner: Runner) -> None:
    for reporter in runner.reporters:
        q = reporter.stats
        _queue_figures(sample, reporter.name, q)
        sample.count("otus_output_batches_total", q.batches, output=reporter.name)
        sample.count("otus_output_latency_seconds_total", q.latency_s, output=reporter.name)
        sample.gauge("otus_output_latency_max_seconds", q.latency_max_s, output=reporter.name)
        if isinstance(reporter.reporter, HepReporter):
            h = reporter.reporter.stats
            for outcome, value in (("sent", h.encoded), ("not_for_hep", h.not_for_hep),
                                   ("unencodable", h.unencodable)):
                sample.count("otus_hep_records_total", value, outcome=outcome)
        sync_errors = getattr(getattr(reporter.reporter, "stats", None), "sync_errors", None)
        if sync_errors is not None:
            sample.count("otus_output_sync_errors_total", sync_errors, output=reporter.name)
    for name, failed in runner.frames.failures().items():
        sample.count("otus_output_records_total", failed, output=name, outcome="failed")
    if runner.kafka is not None:
        k = runner.kafka.stats
        for outcome in ("received", "produced", "delivered", "failed", "retried", "dropped", "spilled"):
            sample.count("otus_kafka_records_total", getattr(k, outcome), outcome=outcome)
        sample.gauge("otus_kafka_in_flight", k.in_flight)
