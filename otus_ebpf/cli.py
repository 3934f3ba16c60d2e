"""Command line: `otus-ebpf attach|detach`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from otus_ebpf import __version__
from otus_ebpf.agent import AttachOptions, log, require_root, resolve_interface, run_attach
from otus_ebpf.attach import AttachMethod, XdpMode, detach
from otus_ebpf.errors import SetupError
from otus_ebpf.kafka import KafkaSettings
from otus_ebpf.loader import DEFAULT_RING_PAGES, DEFAULT_SIP_PORTS, DEFAULT_SNAPLEN, KernelSettings

EXIT_SETUP_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otus-ebpf", description="eBPF capture agent for SIP")
    parser.add_argument("--version", action="version", version=f"otus-ebpf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    attach = commands.add_parser("attach", help="capture SIP on an interface until SIGINT/SIGTERM")
    attach.add_argument("interface")
    attach.add_argument("--xdp-mode", choices=[m.value for m in XdpMode], default=XdpMode.AUTO.value,
                        help="auto tries native, then generic (default: auto)")
    attach.add_argument("--attach-method", choices=[m.value for m in AttachMethod],
                        default=AttachMethod.AUTO.value,
                        help="link: BPF links only (detached when the process ends); netlink: legacy "
                             "attach that survives a crash; auto: links, else netlink")
    attach.add_argument("--out", metavar="FILE|-",
                        help="JSON-lines output (default: otus-out/sip-IFACE.jsonl; - for stdout)")
    attach.add_argument("--kafka", metavar="BROKERS", help="also send records to these Kafka brokers")
    attach.add_argument("--topic", default="otus.sip", help="Kafka topic (default: otus.sip)")
    attach.add_argument("--kafka-linger-ms", type=int, default=20)
    attach.add_argument("--kafka-batch", type=int, default=10_000, help="max messages per Kafka batch")
    attach.add_argument("--sip-port", type=int, action="append", dest="sip_ports",
                        help=f"SIP port, repeatable (default: {' '.join(map(str, DEFAULT_SIP_PORTS))})")
    attach.add_argument("--snaplen", type=int, default=DEFAULT_SNAPLEN)
    attach.add_argument("--ring-pages", type=int, default=DEFAULT_RING_PAGES,
                        help="ring buffer size in pages, a power of two")
    attach.add_argument("--stats-interval", type=float, default=5.0, help="seconds between stats lines")
    attach.add_argument("--no-tui", action="store_true",
                        help="plain stats lines (the live TUI comes with the control plane)")

    det = commands.add_parser("detach", help="remove programs a crashed netlink-attached agent left")
    det.add_argument("interface")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "attach":
            return run_attach(_attach_options(args))
        return _detach(args.interface)
    except SetupError as exc:
        print(f"otus-ebpf: error: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR


def _attach_options(args: argparse.Namespace) -> AttachOptions:
    kafka = None
    if args.kafka:
        kafka = KafkaSettings(args.kafka, args.topic, args.kafka_linger_ms, args.kafka_batch)
    return AttachOptions(
        interface=args.interface,
        xdp_mode=XdpMode(args.xdp_mode),
        method=AttachMethod(args.attach_method),
        out=args.out,
        kafka=kafka,
        kernel=KernelSettings(tuple(args.sip_ports or DEFAULT_SIP_PORTS), args.snaplen, args.ring_pages),
        stats_interval_s=args.stats_interval,
    )


def _detach(interface: str) -> int:
    ifindex = resolve_interface(interface)
    require_root()
    removed = detach(ifindex, interface)
    for what in removed:
        log(f"removed {what}")
    if not removed:
        log(f"nothing of otus-ebpf attached to {interface}")
    return 0
