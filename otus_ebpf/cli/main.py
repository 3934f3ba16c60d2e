"""Command line: `otus-ebpf attach|detach|stats|filter`."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from otus_ebpf import __version__
from otus_ebpf.capture.replay import run_replay
from otus_ebpf.capture.runner import tune_runtime
from otus_ebpf.capture.sources import CaptureDirection, CaptureMode
from otus_ebpf.cli import daemon as cli_daemon
from otus_ebpf.cli import install
from otus_ebpf.cli.agent import AttachOptions, log, require_root, resolve_interface, run_attach
from otus_ebpf.control.bounds import (
    HEP_CAPTURE_ID,
    KAFKA_BACKLOG_MB,
    KAFKA_BATCH,
    KAFKA_LINGER_MS,
    KAFKA_QUEUE_KB,
    PORT,
    QUEUE_RECORDS,
    REPLAY_SPEED,
    RING_MB,
    ROTATE_AGE_S,
    ROTATE_MB,
    RTP_REPORT_INTERVAL_S,
    SNAPLEN,
    SNAPLEN_MEDIA,
    STATS_INTERVAL_S,
    WORKERS,
    Bound,
    parse_float,
    parse_int,
)
from otus_ebpf.control.config import (
    DEFAULT_METRICS_LISTEN,
    Config,
    ConfigInvalid,
    TaskConfig,
    default_workers,
)
from otus_ebpf.control.config import load as load_config
from otus_ebpf.errors import EXIT_INVALID, EXIT_SETUP_ERROR, SetupError
from otus_ebpf.kernel.attach import AttachMethod, XdpMode, detach
from otus_ebpf.kernel.counters import COUNTERS
from otus_ebpf.kernel.introspect import live_maps
from otus_ebpf.kernel.loader import parse_network
from otus_ebpf.kernel.settings import (
    DEFAULT_MEDIA_SNAPLEN,
    DEFAULT_RING_MB,
    DEFAULT_SIP_PORTS,
    DEFAULT_SNAPLEN,
    Delivery,
    KernelSettings,
    MediaMode,
)
from otus_ebpf.options import Dispatch, Strategy
from otus_ebpf.outputs.fanout import DEFAULT_QUEUE_RECORDS
from otus_ebpf.outputs.hep_transport import parse_collector
from otus_ebpf.outputs.kafka_producer import COMPRESSIONS, KafkaSecurity, KafkaSettings
from otus_ebpf.secret import read_secret
from userspace.calls import CallLimits
from userspace.event import Direction
from userspace.numbers import ascii_int
from userspace.reporters import Rotation
from userspace.reporters.hep import HepIdentity
from userspace.reporters.jsonl import FsyncPolicy
from userspace.reporters.kafka import BacklogLimits, KafkaRouting, KeyChoice, OverflowPolicy
from userspace.reporters.pcap import PcapFormat

T = TypeVar("T", int, float)


def whole(bound: Bound) -> Callable[[str], int]:
    """An argparse type: a whole number in ``bound``, ASCII digits only."""
    return _argument_type(parse_int, bound)


def workers_count(text: str) -> int:
    """An argparse type: "auto" (the CPUs, capped by the shard limit) or 1..8."""
    return default_workers() if text == "auto" else whole(WORKERS)(text)


def real(bound: Bound) -> Callable[[str], float]:
    """An argparse type: a finite number in ``bound``."""
    return _argument_type(parse_float, bound)


def _argument_type(parse_in: Callable[[str, Bound], T], bound: Bound) -> Callable[[str], T]:
    """The parser's ValueError as argparse's one-line error."""
    def parse(text: str) -> T:
        try:
            return parse_in(text, bound)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otus-ebpf", description="eBPF capture agent for SIP")
    parser.add_argument("--version", action="version", version=f"otus-ebpf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_attach(commands.add_parser("attach", help="capture on interfaces until SIGINT/SIGTERM"))
    replay = commands.add_parser("replay", help="a pcap or pcapng file through the pipeline and the outputs")
    replay.add_argument("file", type=Path)
    replay.add_argument("--speed", default="max", metavar="N|max",
                        help="pace frames N times faster than captured, or as fast as possible (default)")
    replay.add_argument("--sip-port", type=whole(PORT), action="append", dest="sip_ports",
                        help=f"SIP port, repeatable (default: {' '.join(map(str, DEFAULT_SIP_PORTS))})")
    replay.add_argument("--signature", action="store_true", help="also SIP by payload on any UDP port")
    _add_rtp_report_interval(replay)
    _add_outputs(replay.add_argument_group("outputs"), "otus-out/sip-NAME.jsonl for a file NAME.pcap")
    _add_kafka(replay.add_argument_group("kafka"))
    _add_hep(replay.add_argument_group("HEP"))
    validate = commands.add_parser("validate", help="check a config file; every problem, exit 2 on any")
    validate.add_argument("file", type=Path)
    det = commands.add_parser("detach", help="remove programs a crashed netlink-attached agent left")
    det.add_argument("interface")
    stats = commands.add_parser("stats", help="kernel counters of the agent on IFACE (without: a daemon's)")
    stats.add_argument("interface", nargs="?")
    stats.add_argument("--socket", default=None, help="the daemon's control socket (without IFACE)")
    _add_filter(commands.add_parser("filter", help="show a running agent's filters, or change them (no "
                                                   "detach)"))
    service = commands.add_parser("install-service",
                                  help="install the systemd unit, the command and the docs where the unit "
                                       "expects them")
    service.add_argument("--remove", action="store_true", help="take them away again (the config file stays)")
    flows = commands.add_parser("flows", help="media endpoints the agent on IFACE learned from SDP")
    flows.add_argument("interface")
    cli_daemon.add_commands(commands)
    return parser


def _add_attach(attach: argparse.ArgumentParser) -> None:
    attach.add_argument("interfaces", nargs="+", metavar="IFACE")
    attach.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="take the task's settings from this YAML file; flags given override it")
    attach.add_argument("--metrics", metavar="HOST:PORT|off",
                        help=f"Prometheus /metrics (default: the config's, else {DEFAULT_METRICS_LISTEN})")
    attach.add_argument("--task", metavar="NAME",
                        help="the file's task to run (default: the one capturing IFACE, else the first)")
    attach.add_argument("--mode", choices=[m.value for m in CaptureMode], default=CaptureMode.AUTO.value,
                        help="xdp: eBPF programs; afpacket: AF_PACKET rings; auto: xdp, else afpacket")
    attach.add_argument("--direction", choices=[d.value for d in CaptureDirection],
                        default=CaptureDirection.BOTH.value, help="default: both")
    attach.add_argument("--xdp-mode", choices=[m.value for m in XdpMode], default=XdpMode.AUTO.value,
                        help="auto tries native, then generic (default: auto)")
    attach.add_argument("--attach-method", choices=[m.value for m in AttachMethod],
                        default=AttachMethod.AUTO.value,
                        help="link: BPF links only (detached when the process ends); netlink: legacy "
                             "attach that survives a crash; auto: links, else netlink")
    attach.add_argument("--force", action="store_true",
                        help="replace a foreign XDP program already on the interface")
    attach.add_argument("--workers", type=workers_count, default="auto",
                        help="ring shards, one worker process each when more than one: the kernel routes "
                             "each call to one of them (1..8, or auto: the CPUs, at most 8; default auto)")
    attach.add_argument("--dispatch", choices=[d.value for d in Dispatch], default=Dispatch.BINDING.value,
                        help="binding: each worker reads its own ring shard; dispatch: one reader hands "
                             "events to the workers")
    attach.add_argument("--strategy", choices=[s.value for s in Strategy], default=Strategy.FLOW_HASH.value,
                        help="with --dispatch dispatch: by conversation (default) or in turn")
    attach.add_argument("--in-process", action="store_true",
                        help="read every shard in this process instead of one worker process per shard")
    attach.add_argument("--per-worker-files", action="store_true",
                        help="each worker process writes its own NAME.wN.EXT files (default: one file "
                             "per output, written for all the workers)")
    attach.add_argument("--delivery", choices=[d.value for d in Delivery], default=Delivery.AUTO.value,
                        help="ringbuf, perf (kernels < 5.8), or auto")
    _add_outputs(attach.add_argument_group("outputs"), "otus-out/sip-IFACE.jsonl")
    _add_kafka(attach.add_argument_group("kafka"))
    _add_hep(attach.add_argument_group("HEP"))
    attach.add_argument("--sip-port", type=whole(PORT), action="append", dest="sip_ports",
                        help=f"SIP port, repeatable (default: {' '.join(map(str, DEFAULT_SIP_PORTS))})")
    attach.add_argument("--signature", action="store_true",
                        help="also match UDP payloads that start like SIP, on any port")
    attach.add_argument("--include", action="append", default=[], metavar="CIDR",
                        help="capture only traffic to or from these networks (repeatable)")
    attach.add_argument("--exclude", action="append", default=[], metavar="CIDR",
                        help="never capture traffic to or from these networks (repeatable)")
    attach.add_argument("--snaplen", type=whole(SNAPLEN), default=DEFAULT_SNAPLEN,
                        help="bytes of a SIP packet or fragment to copy")
    attach.add_argument("--media-snaplen", type=whole(SNAPLEN_MEDIA), default=DEFAULT_MEDIA_SNAPLEN,
                        help="bytes past the UDP header to copy for RTP (RTCP is copied up to --snaplen)")
    attach.add_argument("--media", choices=[m.value for m in MediaMode],
                        help="stats (default): the kernel measures RTP, only RTCP and each stream's first "
                             "packet are copied up; packets: every RTP packet is (the default with --pcap "
                             "or --pcap-per-call); off: media is not followed")
    attach.add_argument("--ring-mb", type=whole(RING_MB), default=DEFAULT_RING_MB,
                        help=f"kernel ring memory per worker, MiB, a power of two (default "
                             f"{DEFAULT_RING_MB}: seconds of a SIP burst)")
    _add_rtp_report_interval(attach)
    attach.add_argument("--stats-interval",
                        type=real(STATS_INTERVAL_S), default=5.0, help="seconds between stats lines")
    attach.add_argument("--no-tui", action="store_true",
                        help="plain stats lines instead of the live view (also without a terminal)")


def _add_rtp_report_interval(parser: argparse.ArgumentParser) -> None:
    default = CallLimits().rtp_report_interval_s
    parser.add_argument("--rtp-report-interval", type=real(RTP_REPORT_INTERVAL_S), default=default,
                        metavar="SECONDS",
                        help="an rtp record per stream every this many seconds of its packets, and one at "
                             f"its call's end (default {default:g})")


def _add_outputs(group: argparse._ArgumentGroup, default_out: str) -> None:
    group.add_argument("--out", metavar="FILE|-",
                       help=f"JSON-lines output (default: {default_out}; - for stdout)")
    group.add_argument("--out-max-mb", type=real(ROTATE_MB), help="rotate the JSON-lines file at this size")
    group.add_argument("--out-max-age",
                       type=real(ROTATE_AGE_S), metavar="SECONDS", help="rotate it at this age")
    group.add_argument("--out-fsync", choices=[p.value for p in FsyncPolicy],
                        default=FsyncPolicy.NEVER.value,
                        help="fsync after every batch, at rotation, or never (default)")
    group.add_argument("--fallback", metavar="FILE",
                        help="JSON-lines file for records an output could not take (full queue, failure, "
                             "Kafka drops)")
    group.add_argument("--queue-records", type=whole(QUEUE_RECORDS), default=DEFAULT_QUEUE_RECORDS,
                        help="records each output may have waiting before its oldest go to the fallback")
    group.add_argument("--pcap", metavar="FILE", help="also write every captured frame to this pcap file")
    group.add_argument("--pcap-max-mb", type=real(ROTATE_MB), help="rotate the pcap file at this size")
    group.add_argument("--pcap-max-age",
                       type=real(ROTATE_AGE_S), metavar="SECONDS", help="rotate it at this age")
    group.add_argument("--pcap-format", choices=[f.value for f in PcapFormat], default=PcapFormat.PCAP.value,
                       help="pcapng adds interface names and packet directions")
    group.add_argument("--pcap-per-call", metavar="DIR",
                       help="also write one capture file per call (its SIP and media) into DIR")


def _add_kafka(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--kafka", metavar="BROKERS", help="also send records to these Kafka brokers")
    group.add_argument("--topic", default="otus.sip",
                        help="Kafka topic for every record, or the prefix with --kafka-topic-per-kind")
    group.add_argument("--kafka-topic-per-kind", action="store_true",
                        help="one topic per record kind: TOPIC.sip, TOPIC.call, TOPIC.rtp")
    group.add_argument("--kafka-key", choices=[k.value for k in KeyChoice], default=KeyChoice.CALL_ID.value,
                        help="record key, and so partition: by call (default), by flow, or none")
    group.add_argument("--kafka-headers", action="store_true",
                        help="add node/task/kind/schema headers (each record then goes on its own: slower)")
    group.add_argument("--kafka-task", default="capture", help="task name in the records' headers")
    group.add_argument("--kafka-compression", choices=COMPRESSIONS, default="lz4")
    group.add_argument("--kafka-acks", choices=["all", "1", "0"], default="all")
    group.add_argument("--kafka-linger-ms", type=whole(KAFKA_LINGER_MS), default=20)
    group.add_argument("--kafka-batch",
                       type=whole(KAFKA_BATCH), default=10_000, help="max messages per Kafka batch")
    group.add_argument("--kafka-queue-kb", type=whole(KAFKA_QUEUE_KB), default=64 << 10,
                        help="librdkafka's own queue (queue.buffering.max.kbytes)")
    group.add_argument("--kafka-backlog-mb", type=whole(KAFKA_BACKLOG_MB), default=128,
                        help="records held while the broker is away, beyond librdkafka's own queue")
    group.add_argument("--kafka-overflow", choices=[p.value for p in OverflowPolicy],
                        default=OverflowPolicy.DROP_OLDEST.value, help="which records a full backlog drops")
    group.add_argument("--kafka-start-anyway", action="store_true",
                        help="if the broker is unreachable at start, capture anyway and queue records")
    group.add_argument("--kafka-security-protocol", default="plaintext",
                        choices=["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])
    group.add_argument("--kafka-sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    group.add_argument("--kafka-sasl-username")
    group.add_argument("--kafka-sasl-password-file", metavar="FILE",
                        help="file holding the SASL password (kept off the command line)")
    group.add_argument("--kafka-ssl-ca", metavar="FILE")
    group.add_argument("--kafka-ssl-cert", metavar="FILE")
    group.add_argument("--kafka-ssl-key", metavar="FILE")
    group.add_argument("--kafka-ssl-key-password-file", metavar="FILE")


def _add_hep(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--hep", action="append", default=[], metavar="[udp:|tcp:]HOST:PORT",
                        help="also send SIP and RTP stream reports as HEPv3 to this collector (repeatable)")
    group.add_argument("--hep-capture-id",
                       type=whole(HEP_CAPTURE_ID), default=2001, help="HEP capture agent id")
    group.add_argument("--hep-node-name", default=socket.gethostname(), help="HEP node name")
    group.add_argument("--hep-auth-key-file", metavar="FILE", help="file holding the HEP authentication key")


def _add_filter(filt: argparse.ArgumentParser) -> None:
    filt.add_argument("interface")
    filt.add_argument("--add-sip-port", type=whole(PORT), action="append", default=[], metavar="PORT")
    filt.add_argument("--remove-sip-port", type=whole(PORT), action="append", default=[], metavar="PORT")
    filt.add_argument("--signature", choices=["on", "off"])
    for which in ("include", "exclude"):
        filt.add_argument(f"--add-{which}", action="append", default=[], metavar="CIDR")
        filt.add_argument(f"--remove-{which}", action="append", default=[], metavar="CIDR")


def entry() -> int:
    """The command: its process tuned for the pipeline (otus_ebpf.capture.runner.tune_runtime),
    then ``main``. Callers of ``main`` in a process of their own (tests) keep theirs."""
    tune_runtime()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args.file)
        if args.command == "replay":
            return _replay(args)
        if args.command == "attach":
            options = _attach_options(args)
            metrics: str | None = DEFAULT_METRICS_LISTEN
            if args.config is not None:
                options = _with_config(options, args, _given_flags(argv))
                metrics = load_config(args.config).metrics_listen
            if args.metrics is not None:
                metrics = None if args.metrics == "off" else _listen_address(args.metrics)
            live_view = not args.no_tui and sys.stdout.isatty() and options.out != "-"
            return run_attach(options, metrics_listen=metrics, live_view=live_view)
        if args.command == "install-service":
            require_root("installing the service")
            if args.remove:
                install.remove(log)
            else:
                install.install(install.find_sources(), log)
            return 0
        if args.command in ("daemon", "task", "reload", "top"):
            return cli_daemon.run(args, log)
        if args.command == "stats" and args.interface is None:
            return cli_daemon.daemon_stats(args.socket)
        ifindex = resolve_interface(args.interface)
        require_root()
        if args.command == "detach":
            return _detach(ifindex, args.interface)
        if args.command == "stats":
            return _stats(ifindex, args.interface)
        if args.command == "flows":
            return _flows(ifindex, args.interface)
        return _filter(ifindex, args)
    except SetupError as exc:
        print(f"otus-ebpf: error: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR


def _attach_options(args: argparse.Namespace) -> AttachOptions:
    kafka = _kafka_settings(args) if args.kafka else None
    kernel = KernelSettings(
        sip_ports=tuple(args.sip_ports or DEFAULT_SIP_PORTS),
        signature=args.signature,
        include=tuple(parse_network(c) for c in args.include),
        exclude=tuple(parse_network(c) for c in args.exclude),
        snaplen=args.snaplen,
        media_snaplen=args.media_snaplen,
        ring_mb=args.ring_mb,
        media=None if args.media is None else MediaMode(args.media),
        shards=args.workers,
        delivery=Delivery(args.delivery),
    )
    return AttachOptions(
        interfaces=tuple(dict.fromkeys(args.interfaces)),
        mode=CaptureMode(args.mode),
        direction=CaptureDirection(args.direction),
        xdp_mode=XdpMode(args.xdp_mode),
        method=AttachMethod(args.attach_method),
        force=args.force,
        out=args.out,
        kafka=kafka,
        hep=tuple(parse_collector(text) for text in args.hep),
        fallback=args.fallback,
        queue_records=args.queue_records,
        hep_identity=HepIdentity(args.hep_capture_id,
                                 _secret_from(args.hep_auth_key_file, "--hep-auth-key-file"),
                                 args.hep_node_name),
        kafka_routing=KafkaRouting(args.topic, args.kafka_topic_per_kind, KeyChoice(args.kafka_key),
                                   args.kafka_headers, socket.gethostname(), args.kafka_task),
        kafka_backlog=BacklogLimits(max_bytes=args.kafka_backlog_mb << 20,
                                    policy=OverflowPolicy(args.kafka_overflow)),
        kernel=kernel,
        out_rotation=Rotation(None if args.out_max_mb is None else int(args.out_max_mb * 2**20),
                              args.out_max_age),
        out_fsync=FsyncPolicy(args.out_fsync),
        pcap=args.pcap,
        pcap_format=PcapFormat(args.pcap_format),
        pcap_per_call=args.pcap_per_call,
        pcap_rotation=Rotation(None if args.pcap_max_mb is None else int(args.pcap_max_mb * 2**20),
                               args.pcap_max_age),
        stats_interval_s=args.stats_interval,
        calls=CallLimits(rtp_report_interval_s=args.rtp_report_interval),
        worker_processes=not args.in_process,
        per_worker_files=args.per_worker_files,
        dispatch=Dispatch(args.dispatch),
        strategy=Strategy(args.strategy),
    )


def _detach(ifindex: int, interface: str) -> int:
    removed = detach(ifindex, interface)
    for what in removed:
        log(f"removed {what}")
    if not removed:
        log(f"nothing of otus-ebpf attached to {interface}")
    return 0


def _stats(ifindex: int, interface: str) -> int:
    with live_maps(ifindex, interface) as maps:
        counts = maps.counters()
        failures = maps.shard_failures()
    width = max(len(c.name) for c in COUNTERS)
    print(f"{'counter':{width}}  {'ingress':>12}  {'egress':>12}")
    for counter in COUNTERS:
        print(f"{counter.name.lower():{width}}  {counts[Direction.INGRESS, counter]:>12}  "
              f"{counts[Direction.EGRESS, counter]:>12}")
    print("shard submit failures: " + " ".join(f"{i}={n}" for i, n in enumerate(failures) if n or i == 0))
    return 0


def _flows(ifindex: int, interface: str) -> int:
    with live_maps(ifindex, interface) as maps:
        learned = maps.flows()
    for address, port, l4_proto, kind, shard in learned:
        print(f"{kind.name.lower():5} {address} {port} proto={l4_proto} shard={shard}")
    log(f"{len(learned)} learned media endpoint(s) on {interface}")
    return 0


def _filter(ifindex: int, args: argparse.Namespace) -> int:
    changes = [args.add_sip_port, args.remove_sip_port, args.signature, args.add_include,
               args.remove_include, args.add_exclude, args.remove_exclude]
    if not any(changes):  # nothing to change: say what is in force
        with live_maps(ifindex, args.interface) as maps:
            print("\n".join(maps.filters().lines()))
        return 0
    with live_maps(ifindex, args.interface) as maps:
        for port in args.add_sip_port:
            maps.set_sip_port(port, True)
        for port in args.remove_sip_port:
            maps.set_sip_port(port, False)
        if args.signature:
            maps.set_signature(args.signature == "on")
        for which in ("include", "exclude"):
            for cidr in getattr(args, f"add_{which}"):
                maps.change_network(which, parse_network(cidr), add=True)
            for cidr in getattr(args, f"remove_{which}"):
                maps.change_network(which, parse_network(cidr), add=False)
        now = maps.filters()
    print("\n".join(now.lines()))
    log(f"filters of the agent on {args.interface} updated")
    return 0


def _kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    security = KafkaSecurity(
        protocol=args.kafka_security_protocol,
        sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_username=args.kafka_sasl_username,
        sasl_password=_secret_from(args.kafka_sasl_password_file, "--kafka-sasl-password-file"),
        ssl_ca=args.kafka_ssl_ca, ssl_cert=args.kafka_ssl_cert, ssl_key=args.kafka_ssl_key,
        ssl_key_password=_secret_from(args.kafka_ssl_key_password_file, "--kafka-ssl-key-password-file"),
    )
    return KafkaSettings(args.kafka, args.kafka_linger_ms, args.kafka_batch, args.kafka_compression,
                         args.kafka_acks, queue_kbytes=args.kafka_queue_kb, security=security,
                         start_anyway=args.kafka_start_anyway)


def _secret_from(path: str | None, option: str) -> str | None:
    """A secret read from a file, so it is not in argv (visible to every user in ps)."""
    if path is None:
        return None
    try:
        return read_secret(path)
    except ValueError as exc:
        raise SetupError(f"{option}: {exc}") from None


def _validate(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigInvalid as invalid:
        for problem in invalid.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    names = ", ".join(task.name for task in config.tasks) or "no tasks"
    print(f"{path}: valid ({names})")
    return 0


def _given_flags(argv: list[str]) -> set[str]:
    """The dests of the attach options that appear on the command line."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_attach(probe)
    given = set()
    for action in probe._actions:  # argparse has no public list of a parser's options
        for option in action.option_strings:
            if any(arg == option or arg.startswith(f"{option}=") for arg in argv):
                given.add(action.dest)
    return given


# Which attach flags feed which AttachOptions field (and KernelSettings field).
_FIELD_FLAGS = {
    "mode": ("mode",), "direction": ("direction",), "xdp_mode": ("xdp_mode",), "method": ("attach_method",),
    "force": ("force",), "out": ("out",), "out_rotation": ("out_max_mb", "out_max_age"),
    "out_fsync": ("out_fsync",), "pcap": ("pcap",), "pcap_rotation": ("pcap_max_mb", "pcap_max_age"),
    "pcap_format": ("pcap_format",), "pcap_per_call": ("pcap_per_call",),
    "kafka": ("kafka", "kafka_linger_ms", "kafka_batch", "kafka_compression", "kafka_acks", "kafka_queue_kb",
              "kafka_start_anyway", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
              "kafka_sasl_password_file", "kafka_ssl_ca", "kafka_ssl_cert", "kafka_ssl_key",
              "kafka_ssl_key_password_file"),
    "kafka_routing": ("topic", "kafka_topic_per_kind", "kafka_key", "kafka_headers", "kafka_task"),
    "kafka_backlog": ("kafka_backlog_mb", "kafka_overflow"), "hep": ("hep",),
    "hep_identity": ("hep_capture_id", "hep_node_name", "hep_auth_key_file"), "fallback": ("fallback",),
    "queue_records": ("queue_records",), "stats_interval_s": ("stats_interval",),
    "worker_processes": ("in_process",), "per_worker_files": ("per_worker_files",),
    "dispatch": ("dispatch",), "strategy": ("strategy",),
}
_KERNEL_FLAGS = {
    "sip_ports": ("sip_ports",), "signature": ("signature",), "include": ("include",),
    "exclude": ("exclude",), "snaplen": ("snaplen",), "media_snaplen": ("media_snaplen",),
    "ring_mb": ("ring_mb",), "shards": ("workers",), "delivery": ("delivery",), "media": ("media",),
}


def _with_config(flags: AttachOptions, args: argparse.Namespace, given: set[str]) -> AttachOptions:
    """The config file's task, with the interfaces and every flag given on the command line over it."""
    try:
        config = load_config(args.config)
    except ConfigInvalid as invalid:
        raise SetupError(f"{invalid.problems[0]} (and {len(invalid.problems) - 1} more; "
                         f"see `otus-ebpf validate {args.config}`)" if len(invalid.problems) > 1
                         else str(invalid.problems[0])) from None
    task = _pick_task(config, args)
    base = task.options
    changes = {name: getattr(flags, name) for name, dests in _FIELD_FLAGS.items() if given & set(dests)}
    kernel = {name: getattr(flags.kernel, name) for name, dests in _KERNEL_FLAGS.items()
              if given & set(dests)}
    if kernel:
        changes["kernel"] = dataclasses.replace(base.kernel, **kernel)
    if "rtp_report_interval" in given:
        changes["calls"] = dataclasses.replace(base.calls,
                                               rtp_report_interval_s=flags.calls.rtp_report_interval_s)
    return dataclasses.replace(base, interfaces=flags.interfaces, **changes)


def _pick_task(config: Config, args: argparse.Namespace) -> TaskConfig:
    if not config.tasks:
        raise SetupError(f"{args.config}: no tasks")
    if args.task is not None:
        for task in config.tasks:
            if task.name == args.task:
                return task
        raise SetupError(f"{args.config}: no task named {args.task!r} "
                         f"(tasks: {', '.join(t.name for t in config.tasks)})")
    for task in config.tasks:
        if set(args.interfaces) & set(task.options.interfaces):
            return task
    return config.tasks[0]


def _listen_address(text: str) -> str:
    host, _, port = text.rpartition(":")
    number = ascii_int(port, max_digits=5)
    if not host or number is None or not 0 <= number < 65536:
        raise SetupError(f"--metrics {text!r}: expected HOST:PORT or off")
    return text


def _replay(args: argparse.Namespace) -> int:
    """Replay with the output flags attach takes; the rest of attach's settings keep their defaults."""
    defaults = vars(build_parser().parse_args(["attach", "replay"]))
    given = {k: v for k, v in vars(args).items() if k in defaults and k not in ("command", "interfaces")}
    options = _attach_options(argparse.Namespace(**(defaults | given)))
    options = dataclasses.replace(options, interfaces=(args.file.stem,))
    if args.speed == "max":
        speed = None
    else:
        try:
            speed = parse_float(args.speed, REPLAY_SPEED)
        except ValueError as exc:
            raise SetupError(f"--speed {args.speed!r}: {exc} (times as fast as captured), or max") from None
    return run_replay(args.file, options, speed, log)
