"""A task's figures as one metrics sample: what /metrics, the live view and
a worker's reports to its parent all read. Gathered on demand (at scrape or
redraw time), never on the packet path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from userspace.boundary import Boundary
from userspace.pipeline import PipelineStats
from userspace.processors.chain import ProcessorChain
from userspace.reassembly import ReassemblyStats
from userspace.reporters.hep import HepReporter
from userspace.reporters.kafka import KafkaStats

if TYPE_CHECKING:
    from otus_ebpf.kernel.flows import FlowStats
    from otus_ebpf.kernel.streams import KernelStreams
    from otus_ebpf.outputs.fanout import QueuedReporter, QueueStats
    from otus_ebpf.outputs.joined import JoinedOutputs, JoinedStats
    from otus_ebpf.outputs.wiring import FrameOutputs
    from userspace.pipeline import Pipeline
    from userspace.reporters.kafka import KafkaReporter


@dataclass(slots=True)
class TaskSample:
    """One task's figures at one moment, as plain numbers."""

    state: str
    capturers: dict[str, dict[str, int]] = field(default_factory=dict)
    counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)
    gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)

    def count(self, name: str, value: float, **labels: str) -> None:
        self.counters.setdefault(name, {})[tuple(sorted(labels.items()))] = value

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self.gauges.setdefault(name, {})[tuple(sorted(labels.items()))] = value


def sample_to_json(sample: TaskSample) -> dict[str, Any]:
    return {"state": sample.state, "capturers": sample.capturers,
            "counters": [[name, [list(pair) for pair in labels], value]
                         for name, values in sample.counters.items() for labels, value in values.items()],
            "gauges": [[name, [list(pair) for pair in labels], value]
                       for name, values in sample.gauges.items() for labels, value in values.items()]}


def sample_from_json(data: dict[str, Any]) -> TaskSample:
    sample = TaskSample(str(data["state"]), {k: dict(v) for k, v in data["capturers"].items()})
    for name, labels, value in data["counters"]:
        sample.count(name, value, **dict(labels))
    for name, labels, value in data["gauges"]:
        sample.gauge(name, float(value), **dict(labels))
    return sample



def fields(stats: object) -> list[tuple[str, int]]:
    return [(name, getattr(stats, name)) for name in stats.__dataclass_fields__]  # type: ignore[attr-defined]


def add_boundary(sample: TaskSample, boundary: Boundary) -> None:
    for (stage, kind), value in list(boundary.counts.items()):
        sample.count("otus_internal_errors_total", value, stage=stage, type=kind)


class RunnerParts(Protocol):
    """What a runner (otus_ebpf.capture.runner) shows of itself to a sample."""

    flow_stats: FlowStats
    pipeline: Pipeline
    streams: KernelStreams | None
    reporters: list[QueuedReporter]
    kafka: KafkaReporter | None
    frames: FrameOutputs
    chain: ProcessorChain


def add_runner_figures(sample: TaskSample, runner: RunnerParts) -> None:
    """A runner's pipeline, processors and outputs (the task's own, or one worker's)."""
    for outcome, value in fields(runner.flow_stats):
        sample.count("otus_flow_updates_total", value, outcome=outcome)
    _pipeline(sample, runner)
    for processor, verdicts in runner.chain.counts().items():
        for verdict, value in verdicts.items():
            sample.count("otus_processor_records_total", value, processor=processor, verdict=verdict)
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


def _pipeline(sample: TaskSample, runner: RunnerParts) -> None:
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
    for outcome, value in fields(pipeline.tcp.websocket):
        sample.count("otus_websocket_total", value, outcome=outcome)
    calls = pipeline.calls
    for outcome in ("calls", "ended", "expired", "evicted"):
        sample.count("otus_calls_total", getattr(calls.stats, outcome), outcome=outcome)
    sample.count("otus_early_messages_total", calls.early_replayed, outcome="replayed")
    sample.count("otus_early_messages_total", calls.early_dropped, outcome="dropped")
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


def _outputs(sample: TaskSample, runner: RunnerParts) -> None:
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


def fragment_drops(r: ReassemblyStats) -> int:
    """Datagrams (or their fragments) given up, for whatever reason; each reason has its own counter."""
    return (r.overlaps + r.discarded + r.too_big + r.malformed + r.timeouts + r.too_many_fragments
            + r.evicted_per_source + r.evicted_datagrams + r.evicted_bytes)


@dataclass(frozen=True, slots=True)
class StatsLine:
    interface: str
    capture: list[str]  # sections from the capture source
    pipeline: PipelineStats
    kafka: KafkaStats | None = None
    reassembly: ReassemblyStats | None = None
    outputs: list[str] = field(default_factory=list)  # one summary per output's queue

    def format(self) -> str:
        parts = [f"otus-ebpf: {self.interface}", *self.capture]
        p = self.pipeline
        errors = p.event_errors + p.decode_errors + p.sip_errors
        parts.append(f"events={p.events} records={p.records} media={p.media} "
                     f"not_sip={p.not_sip + p.empty_payloads} errors={errors}")
        if self.reassembly is not None:
            r = self.reassembly
            parts.append(f"fragments={r.fragments} reassembled={r.datagrams} "
                         f"fragment_drops={fragment_drops(r)} tunnels_reassembled={p.tunnels_reassembled} "
                         f"tunnels_filtered={p.tunnels_filtered} tunnels_untrusted={p.tunnels_untrusted}")
        if self.kafka is not None:
            kafka = self.kafka
            parts.append(f"kafka produced={kafka.produced} delivered={kafka.delivered} "
                         f"failed={kafka.failed} queue_full={kafka.queue_full} backlog={kafka.backlog} "
                         f"dropped={kafka.dropped} in_flight={kafka.in_flight} retried={kafka.retried}")
        parts += self.outputs
        return " | ".join(parts)
