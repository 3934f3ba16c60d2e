"""Prometheus metrics, gathered when scraped (nothing on the packet path).

Every figure already exists as a counter of some component; a scrape reads
them and turns them into metric families. Kernel and AF_PACKET counters go
through ``MonotonicCounters`` first: each capturer's last value is kept on
its own (the Go agent kept one "last value" for all capturers, and its
deltas went negative), and a value below a capturer's last one means that
capturer restarted from zero, so its new value is all new. Exported totals
never go down. Names: docs/METRICS.md.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otus_ebpf.capture.sampling import TaskSample
from otus_ebpf.errors import SetupError

Key = tuple[str, str, str]  # task, capturer, counter


class MonotonicCounters:
    def __init__(self) -> None:
        self._last: dict[Key, int] = {}
        self._total: dict[Key, int] = {}
        self._lock = threading.Lock()  # scrapes may overlap

    def update(self, task: str, capturer: str, values: dict[str, int]) -> None:
        with self._lock:
            for name, value in values.items():
                key = (task, capturer, name)
                last = self._last.get(key)
                delta = value if last is None or value < last else value - last
                self._last[key] = value
                self._total[key] = self._total.get(key, 0) + delta

    def totals(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._total)


class TaskView(Protocol):
    """What the collector reads of a task (otus_ebpf.control.task.Task has it all)."""

    name: str

    def metrics_sample(self) -> TaskSample: ...


# Help text of every family; a test checks docs/METRICS.md lists exactly these.
HELP = {
    "otus_task_up": "1 for the task's current state",
    "otus_capture_packets_total": "Kernel and socket counters per capturer (verdicts, ring failures, drops)",
    "otus_capture_task_packets_total": "The same counters summed over a task's capturers",
    "otus_events_total": "Events read from the rings or sockets",
    "otus_worker_events_total": "Events each worker process took",
    "otus_worker_up": "1 while a worker process runs, 0 once it has died",
    "otus_worker_records_total": "Records each worker process produced",
    "otus_records_total": "Records produced by the pipeline",
    "otus_decode_errors_total": "Events given up, by layer",
    "otus_sip_messages_total": "SIP messages parsed, by method or status class",
    "otus_sip_defects_total": "SIP messages parsed with a counted defect",
    "otus_reassembly_total": "IP fragment reassembly outcomes",
    "otus_tcp_total": "SIP-over-TCP stream outcomes",
    "otus_websocket_total": "SIP-over-WebSocket framing outcomes (handshakes, messages, hostile frames...)",
    "otus_dialogs_active": "Calls being tracked",
    "otus_calls_total": "Calls by outcome",
    "otus_processor_records_total": "What each processor did with the records (kept, dropped, labelled...)",
    "otus_fleet_commands_total": "Fleet commands read from Kafka, by what this node made of them",
    "otus_fleet_sent_total": "Fleet answers and heartbeats: queued, delivered, failed, overflow",
    "otus_early_messages_total": "Messages of a dialog read ahead of its INVITE: replayed, or dropped",
    "otus_flows_active": "Media endpoints the live calls hold (per worker), learned into the kernel",
    "otus_rtp_streams_active": "RTP streams being measured",
    "otus_rtp_mos": "Mean MOS estimate in the active RTP streams' latest reports",
    "otus_output_records_total": "Records per output, by outcome",
    "otus_output_queued": "Records waiting in an output's queue",
    "otus_output_batches_total": "Batches an output took",
    "otus_output_latency_seconds_total": "Seconds batches spent queued and being written, summed",
    "otus_output_latency_max_seconds": "The longest a batch took, queue and write, since start",
    "otus_kafka_records_total": "Kafka reporter records, by outcome",
    "otus_hep_records_total": "HEP output records: sent, not for HEP (call summaries), too big to encode",
    "otus_kafka_in_flight": "Records handed to librdkafka and not yet acknowledged",
    "otus_internal_errors_total": "Bugs caught at a failure boundary, by stage and exception type; "
                                  "capture went on",
    "otus_flow_updates_total": "Media endpoints learned or forgotten, by outcome "
                               "(flows_map_full: the table was full)",
    "otus_sdp_problems_total": "SDP media that could not be (fully) learned, by problem",
    "otus_media_problems_total": "RTP/RTCP packets or streams not measured, by problem",
    "otus_kernel_streams_total": "RTP streams the kernel measures: registered, orphans deleted (and their "
                                 "packets), gone at their call's end, failed reads",
    "otus_worker_restarts_total": "Worker processes restarted after they died",
    "otus_output_sync_errors_total": "fsyncs of a file output that failed (lines written, durability unsure)",
}


class OtusCollector(Collector):
    def __init__(self, tasks: Callable[[], Iterable[TaskView]]) -> None:
        self._tasks = tasks
        self._monotonic = MonotonicCounters()

    def collect(self) -> Iterator[Metric]:
        samples = []
        for task in list(self._tasks()):
            with contextlib.suppress(Exception):  # a task stopping mid-scrape is left out of this scrape
                samples.append((task.name, task.metrics_sample()))
        up = GaugeMetricFamily("otus_task_up", HELP["otus_task_up"], labels=["task", "state"])
        for name, sample in samples:
            up.add_metric([name, sample.state], 1)
            for capturer, values in sample.capturers.items():
                self._monotonic.update(name, capturer, values)
        yield up
        yield from self._capture_families()
        yield from self._families(samples)

    def _capture_families(self) -> Iterator[Metric]:
        per = CounterMetricFamily("otus_capture_packets", HELP["otus_capture_packets_total"],
                                  labels=["task", "capturer", "counter"])
        summed: dict[tuple[str, str], int] = {}
        for (task, capturer, counter), total in sorted(self._monotonic.totals().items()):
            per.add_metric([task, capturer, counter], total)
            summed[task, counter] = summed.get((task, counter), 0) + total
        yield per
        task_level = CounterMetricFamily("otus_capture_task_packets", HELP["otus_capture_task_packets_total"],
                                         labels=["task", "counter"])
        for (task, counter), total in sorted(summed.items()):
            task_level.add_metric([task, counter], total)
        yield task_level

    def _families(self, samples: list[tuple[str, TaskSample]]) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

        def family(metric: str, labels: tuple[tuple[str, str], ...], counter: bool) -> Any:
            found = families.get(metric)
            if found is None:
                names = ["task", *(key for key, _ in labels)]
                found = families[metric] = (
                    CounterMetricFamily(metric.removesuffix("_total"), HELP[metric], labels=names) if counter
                    else GaugeMetricFamily(metric, HELP[metric], labels=names))
            return found

        for name, sample in samples:
            for metric, values in sample.counters.items():
                for labels, value in values.items():
                    family(metric, labels, True).add_metric([name, *(v for _, v in labels)], value)
            for metric, gauge_values in sample.gauges.items():
                for labels, gauge_value in gauge_values.items():
                    family(metric, labels, False).add_metric([name, *(v for _, v in labels)], gauge_value)
        yield from families.values()


FleetFigures = Callable[[], dict[str, dict[str, int]]]  # otus_ebpf.fleet.channel.FleetChannel.figures


class FleetCollector(Collector):
    """The fleet channel's commands by verdict and its messages sent by outcome."""

    def __init__(self, figures: FleetFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self._figures()
        for metric, part in (("otus_fleet_commands_total", "commands"), ("otus_fleet_sent_total", "sent")):
            family = CounterMetricFamily(metric.removesuffix("_total"), HELP[metric], labels=["outcome"])
            for outcome, value in sorted(figures.get(part, {}).items()):
                family.add_metric([outcome], value)
            yield family


class MetricsServer:
    """The /metrics endpoint on its own thread; ``close`` stops it and frees the port."""

    def __init__(self, listen: str, tasks: Callable[[], Iterable[TaskView]],
                 fleet: FleetFigures | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(OtusCollector(tasks))
        if fleet is not None:
            self.registry.register(FleetCollector(fleet))
        try:
            server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:
            raise SetupError(f"metrics: cannot listen on {listen}: {exc.strerror}") from None
        self._server: Any = server
        self._thread: threading.Thread = thread
        self.address = f"{host}:{server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
