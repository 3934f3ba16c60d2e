"""What one capture task is asked to do: the settings `attach` flags and a
config file's task both become."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from otus_ebpf.capture.sources import CaptureDirection, CaptureMode, CaptureOptions
from otus_ebpf.kernel.attach import AttachMethod, XdpMode
from otus_ebpf.kernel.settings import KernelSettings, MediaMode
from otus_ebpf.outputs.fanout import DEFAULT_QUEUE_RECORDS
from otus_ebpf.outputs.hep_transport import HepCollector
from otus_ebpf.outputs.kafka_producer import KafkaSettings
from otus_ebpf.outputs.plugin_reporters import ReporterSpec
from userspace.calls import CallLimits
from userspace.processors.build import ProcessorSpec
from userspace.reassembly import ReassemblyLimits
from userspace.reporters import Rotation
from userspace.reporters.hep import HepIdentity
from userspace.reporters.jsonl import FsyncPolicy
from userspace.reporters.kafka import BacklogLimits, KafkaRouting
from userspace.reporters.pcap import PcapFormat
from userspace.tcp import TcpLimits


class Dispatch(Enum):
    BINDING = "binding"    # each worker process owns one ring shard
    DISPATCH = "dispatch"  # one reader hands events to the worker processes


class Strategy(Enum):
    FLOW_HASH = "flow-hash"      # a conversation always to the same worker: dialogs stay whole
    ROUND_ROBIN = "round-robin"  # even load whatever the traffic; call tracking sees parts of dialogs


@dataclass(frozen=True, slots=True)
class AttachOptions:
    interfaces: tuple[str, ...]
    mode: CaptureMode = CaptureMode.AUTO
    direction: CaptureDirection = CaptureDirection.BOTH
    xdp_mode: XdpMode = XdpMode.AUTO
    method: AttachMethod = AttachMethod.AUTO
    force: bool = False
    out: str | None = None  # path, "-" for stdout, None for the default file
    kafka: KafkaSettings | None = None
    kafka_backlog: BacklogLimits = field(default_factory=BacklogLimits)
    kafka_routing: KafkaRouting = field(default_factory=KafkaRouting)
    hep: tuple[HepCollector, ...] = ()
    # Reporters other packages provide (outputs.plugins), in the task's process or each worker's.
    reporter_plugins: tuple[ReporterSpec, ...] = ()
    fallback: str | None = None  # JSON-lines file for what an output could not take
    queue_records: int = DEFAULT_QUEUE_RECORDS  # per output, between capture and its thread
    hep_identity: HepIdentity = field(default_factory=HepIdentity)
    out_rotation: Rotation = field(default_factory=Rotation)
    out_fsync: FsyncPolicy = FsyncPolicy.NEVER
    pcap: str | None = None  # path of a pcap of every captured frame
    pcap_rotation: Rotation = field(default_factory=Rotation)
    pcap_format: PcapFormat = PcapFormat.PCAP
    pcap_per_call: str | None = None  # directory for one capture file per call
    kernel: KernelSettings = field(default_factory=KernelSettings)
    reassembly: ReassemblyLimits = field(default_factory=ReassemblyLimits)
    tcp: TcpLimits = field(default_factory=TcpLimits)
    calls: CallLimits = field(default_factory=CallLimits)
    stats_interval_s: float = 5.0
    # With several shards and eBPF capture: one worker process per shard (see
    # otus_ebpf.capture.supervisor); off, one process reads every shard.
    worker_processes: bool = True
    # With worker processes: each writes its own NAME.wN.EXT files instead of
    # handing its records to the one writer of each file (otus_ebpf.outputs.joined).
    per_worker_files: bool = False
    dispatch: Dispatch = Dispatch.BINDING
    strategy: Strategy = Strategy.FLOW_HASH
    # What happens to records between the pipeline and the outputs, in order
    # (userspace.processors): the file's list, then the flags' shortcuts.
    processors: tuple[ProcessorSpec, ...] = ()

    @property
    def media(self) -> MediaMode:
        """As asked; by default the kernel measures RTP, unless a pcap output wants its packets."""
        if self.kernel.media is not None:
            return self.kernel.media
        return MediaMode.PACKETS if self.pcap or self.pcap_per_call else MediaMode.STATS

    @property
    def capture(self) -> CaptureOptions:
        """What the capture needs; the kernel's maps are sized from the call limit here."""
        kernel = dataclasses.replace(self.kernel, max_flows=self.calls.flow_map_entries,
                                     max_streams=self.calls.stream_table_entries, media=self.media)
        return CaptureOptions(self.mode, self.direction, self.xdp_mode, self.method, self.force, kernel)
