"""Opening a task's outputs: the record reporters, each behind its own queue
and thread, and the frame outputs (pcap, per-call files). Everything opened
is registered on the ExitStack handed in, so it is released in reverse
order whatever happens next."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from otus_ebpf import logs
from otus_ebpf.errors import SetupError
from otus_ebpf.options import AttachOptions
from otus_ebpf.outputs.fanout import Fallback, OutputAccount, QueuedReporter
from otus_ebpf.outputs.hep_transport import HepSender
from otus_ebpf.outputs.joined import FALLBACK, JSONL, Forward, ForwardedFrames, ForwardedLines
from otus_ebpf.outputs.kafka_producer import make_producer, open_kafka_reporter
from otus_ebpf.outputs.percall import PerCallPcap
from otus_ebpf.outputs.plugin_reporters import STUCK_S, Guarded, make, queue_names
from otus_ebpf.outputs.sinks import RotatingFile, StreamSink
from otus_ebpf.plugins import reporter_factories
from userspace.processors.build import PLUGIN_PREFIX
from userspace.records import CallSummary, Frame, Record
from userspace.reporters import Reporter, RotatingSink
from userspace.reporters.hep import HepReporter
from userspace.reporters.jsonl import JsonLinesReporter
from userspace.reporters.kafka import KafkaReporter
from userspace.reporters.pcap import PcapReporter

DEFAULT_OUT_DIR = Path("otus-out")
FLUSH_TIMEOUT_S = 10.0
_log = logs.get(__name__)


def open_reporters(stack: contextlib.ExitStack, options: AttachOptions, label: str,
                   forward: Forward | None = None) -> tuple[list[QueuedReporter], KafkaReporter | None]:
    """Open every output before touching the kernel, so a bad output fails first;
    the Kafka broker is checked before any file is created, so an unreachable
    one leaves nothing behind. Each runs behind its own queue and thread
    (otus_ebpf.outputs.fanout); closing stops the workers after they have written what
    is queued. With ``forward`` (a worker process), the JSON lines and the
    fallback are encoded here and written by the parent (otus_ebpf.outputs.joined)."""
    plugged = _make_plugin_reporters(options)  # no I/O: their problems before any file exists
    kafka = None
    if options.kafka is not None:
        kafka = open_kafka_reporter(options.kafka, options.kafka_routing, options.kafka_backlog,
                                    time.monotonic)
    with contextlib.ExitStack() as until_queued:
        if kafka is not None:
            until_queued.callback(kafka.close)  # if a later output fails; then its worker closes it
        fallback = _open_fallback(stack, options, forward)
        reporters: list[QueuedReporter] = []

        def queued(name: str, reporter: Reporter, stuck_after: float | None = None) -> None:
            worker = QueuedReporter(name, reporter, fallback, options.queue_records, stuck_after)
            stack.callback(worker.close)
            reporters.append(worker)

        if forward is not None:
            queued(f"{JSONL}-forward", ForwardedLines(JSONL, forward, may_wait=True))
        else:
            queued(JSONL, JsonLinesReporter(open_output(options.out, label), options.out_rotation,
                                            time.monotonic, options.out_fsync))
        if kafka is not None and options.kafka is not None:
            if fallback is not None:
                kafka.spill_to(fallback.take_encoded)
            queued("kafka", kafka)
            until_queued.pop_all()
            _log.info(f"sending records to Kafka at {options.kafka.brokers}, "
                      f"{options.kafka_routing.describe()}")
    if options.hep:
        queued("hep", HepReporter(HepSender(options.hep, time.monotonic), options.hep_identity))
        _log.info(f"sending HEPv3 to {', '.join(map(str, options.hep))}")
    for name, reporter in plugged:
        queued(name, reporter, STUCK_S)
        _log.info(f"handing records to the reporter plugin {name.removeprefix(PLUGIN_PREFIX)}")
    return reporters, kafka


def _make_plugin_reporters(options: AttachOptions) -> list[tuple[str, Guarded]]:
    """Checked with the config already: a problem here is something that changed since."""
    made = []
    names = queue_names(options.reporter_plugins)
    for i, (spec, name) in enumerate(zip(options.reporter_plugins, names, strict=True)):
        try:
            made.append((name, Guarded(name, make(spec, f"outputs.plugins[{i}]", reporter_factories()))))
        except ValueError as exc:
            for _, reporter in made:
                reporter.close()
            raise SetupError(str(exc)) from None
    return made


def _open_fallback(stack: contextlib.ExitStack, options: AttachOptions,
                   forward: Forward | None) -> Fallback | None:
    if options.fallback is None:
        return None
    if forward is not None:
        fallback = Fallback(ForwardedLines(FALLBACK, forward, may_wait=False))
    else:
        fallback = Fallback(JsonLinesReporter(RotatingFile(Path(options.fallback)), options.out_rotation,
                                              time.monotonic, options.out_fsync))
        _log.info(f"records no output could take go to {options.fallback}")
    stack.callback(fallback.close)  # after every worker that may hand it records
    return fallback


@dataclass(slots=True)
class FrameOutputs:
    """The outputs of captured frames rather than records: a pcap of
    everything, and a file per call. A frame an output cannot write (a full
    disk) is counted as failed for that output; it never stops the capture."""

    pcap: PcapReporter | ForwardedFrames | None = None
    per_call: PerCallPcap | None = None
    pcap_failed: int = 0
    _last_error: str = ""

    @property
    def wanted(self) -> bool:
        return self.pcap is not None or self.per_call is not None

    def write(self, frames: list[Frame], records: list[Record]) -> None:
        if self.pcap is not None:
            try:
                self.pcap.write_frames(frames)
            except OSError as exc:
                self.pcap_failed += len(frames)
                self._said(f"pcap: {exc}")
        if self.per_call is not None:
            self.per_call.write_frames(frames)
            self.per_call.calls_ended(r.call_id for r in records if isinstance(r, CallSummary))

    def _said(self, error: str) -> None:
        if error != self._last_error:
            _log.warning(error)  # once per kind of failure, not per batch
        self._last_error = error

    def failures(self) -> dict[str, int]:
        """Frames each frame output could not write."""
        found = {}
        if self.pcap is not None:
            found["pcap"] = self.pcap_failed
        if self.per_call is not None:
            found["pcap_per_call"] = self.per_call.stats.write_errors
        return found


def open_frame_outputs(stack: contextlib.ExitStack, options: AttachOptions,
                       forward: Forward | None = None) -> FrameOutputs:
    """With ``forward`` (a worker process), the pcap is the parent's to write; a
    file per call is each worker's own (a call lives in one worker)."""
    outputs = FrameOutputs()
    if options.pcap is not None and forward is not None:
        outputs.pcap = ForwardedFrames(forward)
    elif options.pcap is not None:
        outputs.pcap = PcapReporter(RotatingFile(Path(options.pcap), fresh=True), options.pcap_rotation,
                                    time.monotonic, options.pcap_format)
        stack.callback(outputs.pcap.close)
        _log.info(f"writing captured frames to {options.pcap}")
    if options.pcap_per_call is not None:
        outputs.per_call = PerCallPcap(Path(options.pcap_per_call), options.pcap_format)
        stack.callback(outputs.per_call.close)
        _log.info(f"writing one capture file per call to {options.pcap_per_call}/")
    return outputs


def default_records_path(label: str) -> Path:
    """Where the JSON lines go when no --out is given; ``label``: the interfaces, comma-separated."""
    return DEFAULT_OUT_DIR / f"sip-{label.replace(',', '+')}.jsonl"


def open_output(out: str | None, label: str) -> RotatingSink:
    """The JSON-lines sink; the reporter closes it."""
    if out == "-":
        return StreamSink(sys.stdout.buffer)
    path = Path(out) if out else default_records_path(label)
    sink = RotatingFile(path)
    _log.info(f"writing records to {path}")
    return sink


def flush_reporters(reporters: list[QueuedReporter]) -> None:
    for reporter in reporters:
        undelivered = reporter.flush(FLUSH_TIMEOUT_S, time.monotonic)
        if undelivered:
            _log.warning(f"{reporter.name}: {undelivered} records undelivered at exit")


def account_outputs(reporters: list[QueuedReporter], kafka: KafkaReporter | None,
                    frames: FrameOutputs | None = None) -> list[OutputAccount]:
    accounts = []
    for reporter in reporters:
        q = reporter.stats
        written, to_fallback, lost = q.written, q.to_fallback, q.lost
        if reporter.reporter is kafka and kafka is not None:
            k = kafka.stats  # what the queue handed to Kafka: delivered, spilled, or lost there
            written = k.delivered
            to_fallback += k.spilled
            lost += k.failed + k.dropped - k.spilled + k.backlog + k.in_flight
        accounts.append(OutputAccount(reporter.name, written, to_fallback, lost))
    if frames is not None:
        accounts += [OutputAccount(name, None, 0, failed) for name, failed in frames.failures().items()]
    return accounts


def accounts_line(records: int, accounts: list[OutputAccount]) -> str:
    """The last line an operator reads: how many records, and where each output put them."""
    return f"records: {records} produced; " + "; ".join(map(str, accounts))



def check_outputs(options: AttachOptions) -> None:
    """What worker processes will open, opened once and closed here, so that an
    unreachable broker, an unknown collector or (with per-worker files) a bad path
    fails before anything is attached (the workers open their own after the fork)."""
    with contextlib.ExitStack() as trial:
        if options.kafka is not None:
            producer = make_producer(options.kafka)
            trial.callback(producer.close)
            _log.info(f"sending records to Kafka at {options.kafka.brokers}, "
                      f"{options.kafka_routing.describe()}")
        if options.hep:
            trial.callback(HepSender(options.hep, time.monotonic).close)
        paths = [options.pcap_per_call and str(Path(options.pcap_per_call) / "check")]
        if options.per_worker_files:
            paths += [options.out or str(DEFAULT_OUT_DIR / "check.jsonl"), options.pcap, options.fallback]
        for path in paths:
            if path is not None and path != "-":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise SetupError(f"cannot create {Path(path).parent}: {exc.strerror}") from None
