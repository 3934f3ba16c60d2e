"""Every setting, declared once: its YAML key, its flag (if it has one), its
kind and range, its default and its help. The command line
(otus_ebpf.cli.flags), the config checker (otus_ebpf.control.config) and the
tables of docs/CONFIG.md (otus_ebpf.control.reference)
are all built from SETTINGS, and a task's AttachOptions from the values
they resolve, in ``build_options`` only.

Values travel as a mapping of setting name to parsed value: the defaults,
then the file's task, then the flags given, each over the one before."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from otus_ebpf.capture.sources import CaptureDirection, CaptureMode
from otus_ebpf.control.kinds import (
    Choice,
    Collectors,
    KeyValue,
    Kind,
    Listen,
    Method,
    Networks,
    Number,
    ProcessorList,
    ReporterPlugins,
    Switch,
    Text,
    Whole,
    Workers,
    default_workers,
)
from otus_ebpf.fleet.settings import COMMAND_TOPIC, RESPONSE_TOPIC, STATUS_TOPIC, FleetSettings
from otus_ebpf.kernel.attach import AttachMethod, XdpMode
from otus_ebpf.kernel.settings import (
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_MEDIA_SNAPLEN,
    DEFAULT_RING_MB,
    DEFAULT_SIP_PORTS,
    DEFAULT_SNAPLEN,
    DEFAULT_TLS_PORTS,
    MAX_COMM,
    MAX_DEDUP_WINDOW_MS,
    MAX_DROP_METHODS,
    MAX_SNAPLEN,
    MIN_SNAPLEN,
    KernelSettings,
    MediaMode,
    TlsSettings,
)
from otus_ebpf.logs import DEFAULT_LEVEL, LEVELS
from otus_ebpf.options import AttachOptions, Dispatch, Strategy
from otus_ebpf.outputs.fanout import DEFAULT_QUEUE_RECORDS
from otus_ebpf.outputs.kafka_producer import COMPRESSIONS, KafkaSecurity, KafkaSettings
from userspace.calls import CallLimits
from userspace.processors.build import ProcessorSpec
from userspace.reassembly import ReassemblyLimits
from userspace.reporters import Rotation
from userspace.reporters.hep import HepIdentity
from userspace.reporters.jsonl import FsyncPolicy
from userspace.reporters.kafka import BacklogLimits, KafkaRouting, KeyChoice, OverflowPolicy
from userspace.reporters.pcap import PcapFormat
from userspace.tcp import TcpLimits
from userspace.tunnel import GENEVE_PORT, VXLAN_PORT, TunnelKind

DEFAULT_METRICS_LISTEN = "127.0.0.1:9091"
DEFAULT_CONTROL_SOCKET = "/run/otus-ebpf/control.sock"
DEFAULT_STATE_DIR = "/var/lib/otus-ebpf"
DECAP_WORDS = tuple(kind.value for kind in TunnelKind)  # --decap's default: every kind
CLI_TASK_NAME = "capture"  # what `attach` and `replay` without a file call their task


class Group(Enum):
    """Where a setting is shown: `attach --help`'s sections, docs/CONFIG.md's tables, in this order."""

    NODE = "node"
    FLEET = "fleet"
    CAPTURE = "capture"
    FILTERS = "filters"
    TLS = "TLS plaintext"
    OUTPUTS = "outputs"
    KAFKA = "Kafka"
    HEP = "HEP"
    WORKERS = "workers"
    KERNEL = "kernel sizes"
    PROCESSORS = "processors"
    OBSERVABILITY = "observability"
    LIMITS = "limits"


class Scope(Enum):
    FILE = "file"  # once per config file (its key from the file's top)
    TASK = "task"  # per task (its key inside a task, or under defaults)


@dataclass(frozen=True, slots=True)
class Computed:
    """A default known only when the program runs (the host name, the CPUs)."""

    make: Callable[[], Any]
    shown: str


@dataclass(frozen=True, slots=True)
class Setting:
    name: str             # its value's name; also the flag's argparse dest
    key: str              # YAML key path: from the file's top (FILE) or inside a task (TASK)
    kind: Kind
    default: Any
    help: str
    group: Group
    flag: str | None = None     # None: config only
    repeatable: bool = False    # a list in the file, a flag given once per item
    secret_file: bool = False   # names a file holding a secret, read when the task (or the file) is built
    replay: bool = False        # `replay` takes the flag too
    scope: Scope = Scope.TASK
    env: str | None = None      # an OTUS_ variable that overrides the file's value
    required: bool = False      # needed whenever its section is given
    shown_default: str | None = None  # the docs' words for a default None stands for
    commands: tuple[str, ...] = ("attach",)

    def default_value(self) -> Any:
        return self.default.make() if isinstance(self.default, Computed) else self.default

    def describe_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if isinstance(self.default, Computed):
            return self.default.shown
        if self.repeatable:
            return "[" + ", ".join(self.kind.show(item) for item in self.default) + "]"
        return "—" if self.default is None else f"`{self.kind.show(self.default)}`"

    @property
    def takes(self) -> tuple[str, ...]:
        """The commands whose flags include this setting's."""
        if self.flag is None:
            return ()
        return (*self.commands, "replay") if self.replay else self.commands


def _default(cls: type, name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()


_HOST_NAME = Computed(socket.gethostname, "the host name")
_WORKERS = Computed(default_workers, "`auto`: the CPUs, at most 8")
_ROTATE_MB = Number(0.001, 1 << 20, metavar="MB")          # up to 1 TiB a file
_ROTATE_AGE_S = Number(1, 366 * 86_400, metavar="SECONDS")


def _limits(cls: type, section: str, about: Mapping[str, str],
            flags: Mapping[str, tuple[str, Group]] | None = None) -> list[Setting]:
    """A limits dataclass's fields as settings: each field's ``range`` and default
    stay declared on the field; seconds are the fields named ``_s``."""
    made = []
    for field in dataclasses.fields(cls):
        low, high = field.metadata["range"]
        flag, group = (flags or {}).get(field.name, (None, Group.LIMITS))
        kind: Kind = Number(low, high, metavar="SECONDS") if field.name.endswith("_s") else Whole(low, high)
        made.append(Setting(f"{section}_{field.name}", f"{section}.{field.name}", kind, field.default,
                            about[field.name], group, flag, replay=flag is not None))
    return made



def _kafka_security(name: str, key: str, group: Group, scope: Scope) -> list[Setting]:
    """librdkafka's security settings under ``key``: the outputs' (with flags) and the
    fleet channel's (control.kafka.security, config only) are the same settings."""
    flags = scope is Scope.TASK

    def one(field: str, key_field: str, kind: Kind, default: Any, about: str,
            secret: bool = False) -> Setting:
        return Setting(f"{name}_{field}", f"{key}.{key_field}", kind, default, about, group,
                       f"--{name}-{field.replace('_', '-')}" if flags else None, replay=flags, scope=scope,
                       secret_file=secret)

    return [
        one("security_protocol", "protocol", Choice(("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")),
            _default(KafkaSecurity, "protocol"), "librdkafka's security.protocol"),
        one("sasl_mechanism", "sasl_mechanism", Choice(("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")), None,
            "SASL mechanism"),
        one("sasl_username", "sasl_username", Text("name", "NAME"), None, "SASL user name"),
        one("sasl_password_file", "sasl_password_file", Text("path", "FILE"), None,
            "file holding the SASL password (kept off the command line)", secret=True),
        one("ssl_ca", "ssl_ca", Text("path", "FILE"), None, "CA certificate file"),
        one("ssl_cert", "ssl_cert", Text("path", "FILE"), None, "client certificate file"),
        one("ssl_key", "ssl_key", Text("path", "FILE"), None, "client key file"),
        one("ssl_key_password_file", "ssl_key_password_file", Text("path", "FILE"), None,
            "file holding the client key's password", secret=True),
    ]

SETTINGS: tuple[Setting, ...] = (
    # -- the file ---------------------------------------------------------------
    Setting("node_name", "node.name", Text("name"), _HOST_NAME,
            "this capture node's name: the node in Kafka records' headers, and the tasks' HEP node "
            "name unless they give one", Group.NODE,
            scope=Scope.FILE, env="OTUS_NODE_NAME"),
    Setting("metrics_listen", "metrics.listen", Listen(), DEFAULT_METRICS_LISTEN,
            "Prometheus /metrics endpoint", Group.OBSERVABILITY, "--metrics", scope=Scope.FILE,
            env="OTUS_METRICS_LISTEN"),
    Setting("control_socket", "control.socket", Text("path"), DEFAULT_CONTROL_SOCKET,
            "the daemon's control socket", Group.NODE, scope=Scope.FILE, env="OTUS_CONTROL_SOCKET"),
    Setting("state_dir", "state.dir", Text("path"), DEFAULT_STATE_DIR,
            "where the daemon keeps the tasks created at run time (0700), restored at its start",
            Group.NODE, scope=Scope.FILE, env="OTUS_STATE_DIR"),
    Setting("fleet_brokers", "control.kafka.brokers", Text("brokers"), None,
            "take commands from, answer on and send heartbeats to these Kafka brokers (docs/FLEET.md)",
            Group.FLEET, scope=Scope.FILE, required=True),
    Setting("fleet_key_file", "control.kafka.key_file", Text("path"), None,
            "file holding the fleet's shared HMAC key (mode 0600, at least 16 bytes)", Group.FLEET,
            scope=Scope.FILE, required=True, secret_file=True),
    Setting("fleet_groups", "control.kafka.groups", Text("names"), (),
            "groups this node answers for, besides its node.name", Group.FLEET, scope=Scope.FILE,
            repeatable=True),
    Setting("fleet_command_topic", "control.kafka.command_topic", Text("topic"), COMMAND_TOPIC,
            "where commands are read", Group.FLEET, scope=Scope.FILE),
    Setting("fleet_response_topic", "control.kafka.response_topic", Text("topic"), RESPONSE_TOPIC,
            "where answers go, keyed by request id", Group.FLEET, scope=Scope.FILE),
    Setting("fleet_status_topic", "control.kafka.status_topic", Text("topic"), STATUS_TOPIC,
            "where heartbeats go, keyed by node", Group.FLEET, scope=Scope.FILE),
    Setting("fleet_read_only", "control.kafka.read_only", Switch(), False,
            "take only list, status, stats and samples over Kafka", Group.FLEET, scope=Scope.FILE),
    Setting("fleet_max_age_s", "control.kafka.max_age_s", Number(1, 86_400, metavar="SECONDS"),
            _default(FleetSettings, "max_age_s"),
            "commands sent longer ago than this (or as far ahead, by this node's clock) are refused",
            Group.FLEET, scope=Scope.FILE),
    Setting("fleet_heartbeat_s", "control.kafka.heartbeat_s", Number(0.2, 3_600, metavar="SECONDS"),
            _default(FleetSettings, "heartbeat_s"), "seconds between heartbeats", Group.FLEET,
            scope=Scope.FILE),
    *_kafka_security("fleet", "control.kafka.security", Group.FLEET, Scope.FILE),
    Setting("log_level", "log.level", Choice(LEVELS), DEFAULT_LEVEL,
            "the least severe messages logged (read when the program starts)", Group.OBSERVABILITY,
            "--log-level", scope=Scope.FILE, commands=("attach", "replay", "daemon")),
    # -- a task ---------------------------------------------------------------
    Setting("name", "name", Text("unique string"), None, "the task's name (required)", Group.CAPTURE,
            shown_default="required"),
    Setting("interfaces", "interfaces", Text("interface names", "IFACE"), (),
            "interfaces to capture on (required; on the command line: IFACE...)", Group.CAPTURE,
            repeatable=True, shown_default="required"),
    Setting("mode", "mode", Choice.of(CaptureMode), _default(AttachOptions, "mode"),
            "xdp: eBPF programs; afpacket: AF_PACKET rings; auto: xdp, else afpacket", Group.CAPTURE,
            "--mode"),
    Setting("xdp_mode", "xdp_mode", Choice.of(XdpMode), _default(AttachOptions, "xdp_mode"),
            "auto tries native, then generic", Group.CAPTURE, "--xdp-mode"),
    Setting("method", "attach_method", Choice.of(AttachMethod), _default(AttachOptions, "method"),
            "link: BPF links only (detached when the process ends); netlink: legacy attach that survives "
            "a crash; auto: links, else netlink", Group.CAPTURE, "--attach-method"),
    Setting("force", "force", Switch(), False, "replace a foreign XDP program already on the interface",
            Group.CAPTURE, "--force"),
    Setting("direction", "direction", Choice.of(CaptureDirection), _default(AttachOptions, "direction"),
            "which way the packets captured go", Group.CAPTURE, "--direction"),
    Setting("workers", "workers", Workers(), _WORKERS,
            "ring shards, one worker process each when more than one: the kernel routes each call to one "
            "of them", Group.WORKERS, "--workers"),
    Setting("dispatch", "dispatch", Choice.of(Dispatch), _default(AttachOptions, "dispatch"),
            "binding: each worker reads its own ring shard; dispatch: one reader hands events to the "
            "workers", Group.WORKERS, "--dispatch"),
    Setting("strategy", "strategy", Choice.of(Strategy), _default(AttachOptions, "strategy"),
            "with dispatch: by conversation, or in turn", Group.WORKERS, "--strategy"),
    Setting("in_process", "in_process", Switch(), False,
            "read every shard in this process instead of one worker process per shard", Group.WORKERS,
            "--in-process"),
    Setting("sip_ports", "filter.sip_ports", Whole(1, 65_535, metavar="PORT"), DEFAULT_SIP_PORTS,
            "the ports SIP is captured on", Group.FILTERS, "--sip-port", repeatable=True, replay=True),
    # RFC 7118 names no port: none unless the operator says (docs/WEBSOCKET.md).
    Setting("ws_ports", "filter.ws_ports", Whole(1, 65_535, metavar="PORT"), (),
            "TCP ports SIP over WebSocket (RFC 7118) is captured on; a connection seen from its start is "
            "recognised by its upgrade handshake on any captured port", Group.FILTERS, "--ws-port",
            repeatable=True, replay=True),
    Setting("signature", "filter.signature", Switch(), False,
            "also match UDP payloads that start like SIP, on any port", Group.FILTERS, "--signature",
            replay=True),
    Setting("drop_methods", "filter.drop_methods", Method(), (),
            f"SIP over UDP not to capture: requests of these methods, responses with these status codes, and "
            f"the responses to dropped requests (by their CSeq); decided in the kernel before any copy, at "
            f"most {MAX_DROP_METHODS}", Group.FILTERS, "--drop-method", repeatable=True,
            replay=True),
    Setting("dedup", "filter.dedup", Switch(), False,
            "capture a packet once when it is seen again within the dedup window (the same IP packet one hop "
            "later: TTL, checksums, VLAN tags and MACs aside)", Group.FILTERS, "--dedup", replay=True),
    # SIP retransmits after 500 ms at the soonest (RFC 3261 §17.1.1.1, T1): a window under it keeps them.
    Setting("dedup_window_ms", "filter.dedup_window_ms", Whole(1, MAX_DEDUP_WINDOW_MS, metavar="MS"),
            DEFAULT_DEDUP_WINDOW_MS, "how long after a packet its copies count as duplicates; SIP "
            "retransmissions, 500 ms apart at the soonest, stay when it is shorter", Group.FILTERS,
            "--dedup-window-ms", replay=True),
    Setting("decap", "filter.decap", Choice((*DECAP_WORDS, "none")), DECAP_WORDS,
            "tunnels opened, one level, to capture the traffic inside (a mirror's copies): VXLAN and Geneve "
            "by UDP port, GRE (with its key), ERSPAN II/III, IPv4/IPv6 in IPv4/IPv6; none: no tunnel. The "
            "address filters apply to the inner packet; a reload that changes it restarts the task",
            Group.FILTERS, "--decap", repeatable=True, replay=True),
    Setting("vxlan_ports", "filter.vxlan_ports", Whole(1, 65_535, metavar="PORT"), (VXLAN_PORT,),
            "UDP ports VXLAN arrives on (Geneve: 6081), none of them a SIP or WebSocket port; a reload that "
            "changes them restarts the task", Group.FILTERS, "--vxlan-port", repeatable=True,
            replay=True),
    Setting("mirrors", "filter.mirrors", Networks(), (),
            "open tunnels only from these sources (the switches, taps and cloud mirrors that send copies); "
            "none: from any source, so any host that reaches the link can send a tunnel that is captured. "
            "A reload that changes them restarts the task", Group.FILTERS, "--mirror", repeatable=True,
            replay=True),
    Setting("tls", "tls.enabled", Switch(), False,
            "also capture SIP over TLS as plaintext, read where local processes hand it to OpenSSL 3 "
            "(uprobes on SSL_read/SSL_write; no keys; docs/TLS.md); needs the eBPF programs",
            Group.TLS, "--tls"),
    Setting("tls_library", "tls.library", Text("path", "FILE"), None,
            "the TLS library to probe", Group.TLS, "--tls-library",
            shown_default="the system's libssl.so.3"),
    Setting("tls_pids", "tls.pids", Whole(1, 4_194_304, metavar="PID"), (),
            "probe only these processes (none: every process using the library)", Group.TLS, "--tls-pid",
            repeatable=True),
    Setting("tls_comms", "tls.comms", Text("name", "NAME"), (),
            f"take plaintext only from processes of these names (their comm, at most {MAX_COMM} bytes, "
            f"e.g. kamailio); none: every probed process", Group.TLS, "--tls-comm", repeatable=True),
    Setting("tls_ports", "tls.ports", Whole(1, 65_535, metavar="PORT"), DEFAULT_TLS_PORTS,
            "TCP ports of SIP over TLS: plaintext of connections to or from them goes up, the rest "
            "(HTTPS and the like) is counted and never leaves the kernel", Group.TLS, "--tls-port",
            repeatable=True),
    Setting("include", "filter.include", Networks(), (), "capture only traffic to or from these networks",
            Group.FILTERS, "--include", repeatable=True),
    Setting("exclude", "filter.exclude", Networks(), (), "never capture traffic to or from these networks",
            Group.FILTERS, "--exclude", repeatable=True),
    # A per-CPU map value holds the sample (32 KiB at most); no frame above a jumbo MTU arrives whole.
    Setting("snaplen", "filter.snaplen", Whole(MIN_SNAPLEN, MAX_SNAPLEN, metavar="BYTES"), DEFAULT_SNAPLEN,
            "bytes of a SIP packet or fragment to copy", Group.KERNEL, "--snaplen"),
    Setting("media_snaplen", "filter.media_snaplen", Whole(0, MAX_SNAPLEN, metavar="BYTES"),
            DEFAULT_MEDIA_SNAPLEN, "bytes past the UDP header to copy for RTP, at most snaplen (RTCP is "
            "copied up to snaplen)", Group.KERNEL, "--media-snaplen"),
    # A power of two (the kernel's ring buffer); 1 GiB a shard is already minutes of a SIP burst.
    Setting("ring_mb", "filter.ring_mb", Whole(1, 1024, power_of_two=True, metavar="MB"), DEFAULT_RING_MB,
            "kernel ring memory per worker, MiB (the default holds seconds of a SIP burst)", Group.KERNEL,
            "--ring-mb"),
    Setting("media", "filter.media", Choice.of(MediaMode), None,
            "stats: the kernel measures RTP, only RTCP and each stream's first packet are copied up; "
            "packets: every RTP packet is; off: media is not followed", Group.FILTERS, "--media",
            shown_default="`stats`, or `packets` with a pcap output"),
    Setting("out", "outputs.jsonl.path", Text("path", "FILE|-"), None, "JSON-lines output; - for stdout",
            Group.OUTPUTS, "--out", replay=True,
            shown_default="`otus-out/sip-IFACE.jsonl`"),
    Setting("out_max_mb", "outputs.jsonl.max_mb", _ROTATE_MB, None, "rotate the JSON-lines file at this size",
            Group.OUTPUTS, "--out-max-mb", replay=True),
    Setting("out_max_age_s", "outputs.jsonl.max_age_s", _ROTATE_AGE_S, None, "rotate it at this age",
            Group.OUTPUTS, "--out-max-age", replay=True),
    Setting("out_fsync", "outputs.jsonl.fsync", Choice.of(FsyncPolicy), _default(AttachOptions, "out_fsync"),
            "fsync after every batch, at rotation, or never", Group.OUTPUTS, "--out-fsync", replay=True),
    Setting("pcap", "outputs.pcap.path", Text("path", "FILE"), None,
            "also write every captured frame to this capture file (one already there is first kept "
            "under a time-stamped name, as at rotation)", Group.OUTPUTS, "--pcap", replay=True),
    Setting("pcap_format", "outputs.pcap.format", Choice.of(PcapFormat),
            _default(AttachOptions, "pcap_format"),
            "pcapng adds interface names and packet directions", Group.OUTPUTS, "--pcap-format", replay=True),
    Setting("pcap_max_mb", "outputs.pcap.max_mb", _ROTATE_MB, None, "rotate the capture file at this size",
            Group.OUTPUTS, "--pcap-max-mb", replay=True),
    Setting("pcap_max_age_s", "outputs.pcap.max_age_s", _ROTATE_AGE_S, None, "rotate it at this age",
            Group.OUTPUTS, "--pcap-max-age", replay=True),
    Setting("pcap_per_call", "outputs.pcap.per_call_dir", Text("path", "DIR"), None,
            "also write one capture file per call (its SIP and media) into this directory", Group.OUTPUTS,
            "--pcap-per-call", replay=True),
    Setting("kafka_brokers", "outputs.kafka.brokers", Text("brokers", "BROKERS"), None,
            "also send records to these Kafka brokers", Group.KAFKA, "--kafka",
            replay=True, required=True),
    Setting("kafka_topic", "outputs.kafka.topic", Text("topic", "TOPIC"), _default(KafkaRouting, "topic"),
            "topic for every record, or the prefix of the per-kind topics", Group.KAFKA, "--topic",
            replay=True),
    Setting("kafka_topic_per_kind", "outputs.kafka.topic_per_kind", Switch(), False,
            "one topic per record kind: TOPIC.sip, TOPIC.call, TOPIC.rtp, TOPIC.rtcp", Group.KAFKA,
            "--kafka-topic-per-kind", replay=True),
    Setting("kafka_key", "outputs.kafka.key", Choice.of(KeyChoice), _default(KafkaRouting, "key"),
            "record key, and so partition: by call, by flow, or none", Group.KAFKA, "--kafka-key",
            replay=True),
    Setting("kafka_headers", "outputs.kafka.headers", Switch(), False,
            "add node/task/kind/schema headers (each record then goes on its own: slower)", Group.KAFKA,
            "--kafka-headers", replay=True),
    Setting("kafka_task", "outputs.kafka.task", Text("name"), None, "task name in the records' headers",
            Group.KAFKA, "--kafka-task", replay=True,
            shown_default=f"the task's name (`{CLI_TASK_NAME}` without a file)"),
    Setting("kafka_compression", "outputs.kafka.compression", Choice(COMPRESSIONS),
            _default(KafkaSettings, "compression"), "how batches are compressed", Group.KAFKA,
            "--kafka-compression", replay=True),
    Setting("kafka_acks", "outputs.kafka.acks", Choice(("all", "1", "0")), _default(KafkaSettings, "acks"),
            "broker acknowledgements a record waits for", Group.KAFKA, "--kafka-acks", replay=True),
    # librdkafka's limit
    Setting("kafka_linger_ms", "outputs.kafka.linger_ms", Whole(0, 900_000, metavar="MS"),
            _default(KafkaSettings, "linger_ms"), "how long a batch may wait to fill", Group.KAFKA,
            "--kafka-linger-ms", replay=True),
    Setting("kafka_batch", "outputs.kafka.batch", Whole(1, 1_000_000),
            _default(KafkaSettings, "batch_messages"),
            "max messages per batch (batch.num.messages)", Group.KAFKA, "--kafka-batch", replay=True),
    Setting("kafka_queue_kb", "outputs.kafka.queue_kb", Whole(1, 2_147_483_647, metavar="KB"),
            _default(KafkaSettings, "queue_kbytes"), "librdkafka's own queue (queue.buffering.max.kbytes)",
            Group.KAFKA, "--kafka-queue-kb", replay=True),
    Setting("kafka_backlog_mb", "outputs.kafka.backlog_mb", Whole(1, 1 << 20, metavar="MB"),
            _default(BacklogLimits, "max_bytes") >> 20,
            "records held while the broker is away, beyond librdkafka's own queue", Group.KAFKA,
            "--kafka-backlog-mb", replay=True),
    Setting("kafka_overflow", "outputs.kafka.overflow", Choice.of(OverflowPolicy),
            _default(BacklogLimits, "policy"), "which records a full backlog drops", Group.KAFKA,
            "--kafka-overflow", replay=True),
    Setting("kafka_start_anyway", "outputs.kafka.start_anyway", Switch(), False,
            "if the broker is unreachable at start, capture anyway and queue records", Group.KAFKA,
            "--kafka-start-anyway", replay=True),
    *_kafka_security("kafka", "outputs.kafka.security", Group.KAFKA, Scope.TASK),
    Setting("hep", "outputs.hep.collectors", Collectors(), (),
            "also send SIP and RTP stream reports as HEPv3 to these collectors",
            Group.HEP, "--hep", repeatable=True, replay=True, required=True),
    # a 32-bit chunk
    Setting("hep_capture_id", "outputs.hep.capture_id", Whole(0, (1 << 32) - 1, metavar="ID"),
            _default(HepIdentity, "capture_id"), "HEP capture agent id", Group.HEP, "--hep-capture-id",
            replay=True),
    Setting("hep_node_name", "outputs.hep.node_name", Text("name", "NAME"), _HOST_NAME, "HEP node name",
            Group.HEP, "--hep-node-name", replay=True, shown_default="node.name, else the host name"),
    Setting("hep_auth_key_file", "outputs.hep.auth_key_file", Text("path", "FILE"), None,
            "file holding the HEP authentication key", Group.HEP, "--hep-auth-key-file", replay=True,
            secret_file=True),
    Setting("fallback", "outputs.fallback", Text("path", "FILE"), None,
            "JSON-lines file for records an output could not take (full queue, failure, Kafka drops)",
            Group.OUTPUTS, "--fallback", replay=True),
    Setting("reporter_plugins", "outputs.plugins", ReporterPlugins(), (),
            "also hand records to these installed reporter plugins, each behind its own queue "
            "(`otus-ebpf plugins` lists them)", Group.OUTPUTS),
    Setting("queue_records", "outputs.queue_records", Whole(1, 10_000_000), DEFAULT_QUEUE_RECORDS,
            "records each output may have waiting before its oldest go to the fallback", Group.OUTPUTS,
            "--queue-records", replay=True),
    Setting("per_worker_files", "outputs.per_worker_files", Switch(), False,
            "each worker process writes its own NAME.wN.EXT files instead of handing its records to the one "
            "writer of each file", Group.WORKERS, "--per-worker-files"),
    Setting("processors", "processors", ProcessorList(), (),
            "what happens to records before the outputs, in order: filter, label, redact, sample, plugin "
            "(docs/PROCESSORS.md)", Group.PROCESSORS),
    Setting("keep_numbers", "select.keep_numbers", Text("number prefixes", "PREFIX"), (),
            "keep only SIP messages whose From, To or Request-URI user starts so (after `processors`)",
            Group.PROCESSORS, "--keep-number", repeatable=True, replay=True),
    Setting("labels", "select.labels", KeyValue(), (), "add this label to every record", Group.PROCESSORS,
            "--label", repeatable=True, replay=True),
    Setting("label_headers", "select.label_headers", KeyValue("KEY=HEADER"), (),
            "label a call's records with this header's value (X-Customer, say)", Group.PROCESSORS,
            "--label-header", repeatable=True, replay=True),
    Setting("redact", "select.redact", Choice(("hash", "mask")), None,
            "replace the parties' numbers and names in records and HEP (pcap files stay as captured)",
            Group.PROCESSORS, "--redact", replay=True),
    Setting("redact_key_file", "select.redact_key_file", Text("path", "FILE"), None,
            "file holding the key of --redact hash", Group.PROCESSORS, "--redact-key-file", replay=True,
            secret_file=True),
    Setting("sample_one_in", "select.sample_one_in", Whole(1, 1_000_000), None,
            "keep one call in N, whole (by a hash of its Call-ID)", Group.PROCESSORS, "--sample",
            replay=True),
    *_limits(ReassemblyLimits, "reassembly", {
        "timeout_v4_s": "seconds an IPv4 datagram's fragments wait for the rest",
        "timeout_v6_s": "seconds an IPv6 datagram's fragments wait for the rest",
        "max_fragments": "fragments of one datagram",
        "max_per_source": "datagrams in reassembly from one address",
        "max_datagrams": "datagrams in reassembly in all",
        "max_bytes": "payload bytes buffered for reassembly",
    }),
    *_limits(TcpLimits, "tcp", {
        "window": "bytes held past a hole in a stream",
        "max_message": "bytes of one SIP message framed from a stream",
        "max_streams": "TCP streams followed at once",
        "max_bytes": "bytes held by all the streams together",
        "idle_timeout_s": "seconds after which a silent stream is forgotten",
        "reorder_segments": "later segments a hole may wait for before it is given up as lost",
    }),
    *_limits(CallLimits, "calls", {
        "ttl_s": "seconds without signalling after which a call is over",
        "max_calls": "live calls held; also sizes the kernel's flow map and the table of RTP streams "
                     "measured at once (two per call: past it a new stream is counted, a live one never "
                     "evicted)",
        "max_streams": "media descriptions and measured RTP streams per call; the excess is counted",
        "rtp_report_interval_s": "an rtp record per stream every this many seconds of its packets, and "
                                 "one at its call's end",
    }, flags={"rtp_report_interval_s": ("--rtp-report-interval", Group.OUTPUTS)}),
    Setting("stats_interval_s", "stats_interval_s", Number(0.1, 86_400, metavar="SECONDS"),
            _default(AttachOptions, "stats_interval_s"), "seconds between stats lines", Group.OBSERVABILITY,
            "--stats-interval"),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def of_scope(scope: Scope) -> Iterator[Setting]:
    return (setting for setting in SETTINGS if setting.scope is scope)


def defaults(scope: Scope = Scope.TASK) -> dict[str, Any]:
    """Every setting's default value: what a key or flag not given means."""
    return {setting.name: setting.default_value() for setting in of_scope(scope)}


def cross_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(setting name, message) for values each fine on its own but not together."""
    problems = []
    if values["media_snaplen"] > values["snaplen"]:
        problems.append(("media_snaplen", f"must be between 0 and {values['snaplen']} (snaplen), "
                                          f"not {values['media_snaplen']}"))
    if "none" in values["decap"] and len(set(values["decap"])) > 1:
        problems.append(("decap", "none turns every tunnel off: it cannot stand beside a kind"))
    taken = {*(values["sip_ports"] or DEFAULT_SIP_PORTS), *values["ws_ports"], GENEVE_PORT}
    clash = sorted(taken.intersection(values["vxlan_ports"]))
    if clash:
        problems.append(("vxlan_ports", f"{', '.join(map(str, clash))} is already a SIP, WebSocket or "
                                        f"Geneve ({GENEVE_PORT}) port"))
    drop = set(values["drop_methods"])
    if len(drop) > MAX_DROP_METHODS:
        problems.append(("drop_methods", f"{len(drop)} methods and status codes: the kernel's drop list "
                                         f"holds at most {MAX_DROP_METHODS}"))
    return problems


SecretReader = Callable[[Setting, str], "str | None"]


def build_options(values: Mapping[str, Any], interfaces: tuple[str, ...], task: str,
                  secret: SecretReader, node: str | None = None) -> AttachOptions:
    """The one place a task's AttachOptions is made, from resolved values;
    ``secret`` reads a secret file (the caller decides how a failure is said);
    ``node``: the config file's node.name (the host name without a file)."""
    v = values

    def secret_of(name: str) -> str | None:
        return None if v[name] is None else secret(BY_NAME[name], v[name])

    security = KafkaSecurity(
        protocol=v["kafka_security_protocol"], sasl_mechanism=v["kafka_sasl_mechanism"],
        sasl_username=v["kafka_sasl_username"], sasl_password=secret_of("kafka_sasl_password_file"),
        ssl_ca=v["kafka_ssl_ca"], ssl_cert=v["kafka_ssl_cert"], ssl_key=v["kafka_ssl_key"],
        ssl_key_password=secret_of("kafka_ssl_key_password_file"))
    kafka = None if v["kafka_brokers"] is None else KafkaSettings(
        v["kafka_brokers"], v["kafka_linger_ms"], v["kafka_batch"], v["kafka_compression"], v["kafka_acks"],
        queue_kbytes=v["kafka_queue_kb"], security=security, start_anyway=v["kafka_start_anyway"])
    kernel = KernelSettings(
        sip_ports=tuple(v["sip_ports"]) or DEFAULT_SIP_PORTS, ws_ports=tuple(dict.fromkeys(v["ws_ports"])),
        signature=v["signature"],
        drop_methods=tuple(dict.fromkeys(v["drop_methods"])), dedup=v["dedup"],
        dedup_window_ms=v["dedup_window_ms"], include=tuple(v["include"]), exclude=tuple(v["exclude"]),
        mirrors=tuple(v["mirrors"]),
        tls=TlsSettings(library=v["tls_library"], pids=tuple(dict.fromkeys(v["tls_pids"])),
                        comms=tuple(dict.fromkeys(v["tls_comms"])),
                        ports=tuple(dict.fromkeys(v["tls_ports"])) or DEFAULT_TLS_PORTS)
        if v["tls"] else None,
        snaplen=v["snaplen"], decap=frozenset(TunnelKind(word) for word in v["decap"] if word != "none"),
        vxlan_ports=tuple(dict.fromkeys(v["vxlan_ports"])) or (VXLAN_PORT,),
        media_snaplen=v["media_snaplen"], ring_mb=v["ring_mb"], media=v["media"], shards=v["workers"])
    return AttachOptions(
        interfaces=tuple(dict.fromkeys(interfaces)), mode=v["mode"], direction=v["direction"],
        xdp_mode=v["xdp_mode"], method=v["method"], force=v["force"], out=v["out"], kafka=kafka,
        kafka_backlog=BacklogLimits(max_bytes=v["kafka_backlog_mb"] << 20, policy=v["kafka_overflow"]),
        kafka_routing=KafkaRouting(v["kafka_topic"], v["kafka_topic_per_kind"], v["kafka_key"],
                                   v["kafka_headers"], node or socket.gethostname(),
                                   v["kafka_task"] or task),
        hep=tuple(v["hep"]), reporter_plugins=tuple(v["reporter_plugins"]), fallback=v["fallback"],
        queue_records=v["queue_records"],
        hep_identity=HepIdentity(v["hep_capture_id"], secret_of("hep_auth_key_file"), v["hep_node_name"]),
        out_rotation=_rotation(v["out_max_mb"], v["out_max_age_s"]), out_fsync=v["out_fsync"],
        pcap=v["pcap"], pcap_rotation=_rotation(v["pcap_max_mb"], v["pcap_max_age_s"]),
        pcap_format=v["pcap_format"], pcap_per_call=v["pcap_per_call"], kernel=kernel,
        reassembly=_limits_of(ReassemblyLimits, "reassembly", v), tcp=_limits_of(TcpLimits, "tcp", v),
        calls=_limits_of(CallLimits, "calls", v), stats_interval_s=v["stats_interval_s"],
        worker_processes=not v["in_process"], per_worker_files=v["per_worker_files"],
        dispatch=v["dispatch"], strategy=v["strategy"],
        processors=(*v["processors"], *_shortcuts(v)),
    )


def _shortcuts(v: Mapping[str, Any]) -> tuple[ProcessorSpec, ...]:
    """The flags' processors, after the file's list: keep, label, redact, then sample."""
    specs = []
    if v["keep_numbers"]:
        # Only those calls: the others' summaries and media reports (their parties) go too.
        specs.append(ProcessorSpec.of("filter", {"keep": {"number": {"prefix": list(v["keep_numbers"])}},
                                                 "calls": True}))
    if v["labels"] or v["label_headers"]:
        specs.append(ProcessorSpec.of("label", {"static": dict(v["labels"]),
                                                "from_header": dict(v["label_headers"])}))
    if v["redact"] is not None:
        key = {"key_file": v["redact_key_file"]} if v["redact_key_file"] is not None else {}
        specs.append(ProcessorSpec.of("redact", {"mode": v["redact"], **key}))
    if v["sample_one_in"] is not None:
        specs.append(ProcessorSpec.of("sample", {"one_in": v["sample_one_in"]}))
    return tuple(specs)


def _rotation(max_mb: float | None, max_age_s: float | None) -> Rotation:
    return Rotation(None if max_mb is None else int(max_mb * 2**20), max_age_s)


def _limits_of(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    return cls(**{f.name: values[f"{section}_{f.name}"] for f in dataclasses.fields(cls)})

