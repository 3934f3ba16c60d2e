"""A task's figures as one metrics sample: what /metrics, the live view and
a worker's reports to its parent all read. Gathered on demand (at scrape or
redraw time), never on the packet path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from otus_ebpf.metrics import TaskSample, sample_from_json
from otus_ebpf.workers import WorkersCapture, merge_samples
from userspace.reporters.hep import HepReporter

if TYPE_CHECKING:
    from otus_ebpf.task import Task


def fields(stats: object) -> list[tuple[str, int]]:
    return [(name, getattr(stats, name)) for name in stats.__dataclass_fields__]  # type: ignore[attr-defined]


def sample_task(task: Task) -> TaskSample:
    from otus_ebpf.task import TaskState  # noqa: PLC0415 - the task module imports this one

    sample = TaskSample(task.state.value)
    if task.capture is not None and task.state in (TaskState.RUNNING, TaskState.PAUSED):
        sample.capturers = task.capture.counters()
    if isinstance(task.capture, WorkersCapture):
        for worker, up in task.capture.workers_up().items():
            sample.gauge("otus_worker_up", 1.0 if up else 0.0, worker=worker)
        sample.count("otus_worker_restarts_total", task.capture.restarts)
        _add_own_figures(sample, task, pipeline_too=False)
        return merge_samples(sample, task.capture.worker_payloads(), sample_from_json)
    _add_own_figures(sample, task, pipeline_too=True)
    return sample


def _add_own_figures(sample: TaskSample, task: Task, pipeline_too: bool) -> None:
    for (stage, kind), value in list(task.boundary.counts.items()):
        sample.count("otus_internal_errors_total", value, stage=stage, type=kind)
    if task.pipeline is None or not pipeline_too:
        return
    for outcome, value in fields(task.flow_stats):
        sample.count("otus_flow_updates_total", value, outcome=outcome)
    _pipeline(sample, task)
    _outputs(sample, task)


def _pipeline(sample: TaskSample, task: Task) -> None:
    pipeline = task.pipeline
    assert pipeline is not None
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
    sample.gauge("otus_dialogs_active", len(calls))
    sample.gauge("otus_flows_active", calls.flows_active)
    sample.gauge("otus_rtp_streams_active", len(calls.media.streams))
    mos = calls.media.mean_mos  # kept as reports are made: O(1) however many streams
    if mos is not None:
        sample.gauge("otus_rtp_mos", mos)


def _outputs(sample: TaskSample, task: Task) -> None:
    for reporter in task.reporters:
        q = reporter.stats
        for outcome in ("written", "overflow", "failed", "to_fallback", "lost"):
            sample.count("otus_output_records_total", getattr(q, outcome), output=reporter.name,
                         outcome=outcome)
        sample.gauge("otus_output_queued", q.queued, output=reporter.name)
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
    for name, failed in task.frames.failures().items():
        sample.count("otus_output_records_total", failed, output=name, outcome="failed")
    if task.kafka is not None:
        k = task.kafka.stats
        for outcome in ("received", "produced", "delivered", "failed", "retried", "dropped", "spilled"):
            sample.count("otus_kafka_records_total", getattr(k, outcome), outcome=outcome)
        sample.gauge("otus_kafka_in_flight", k.in_flight)
