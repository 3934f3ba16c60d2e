"""Command line: `otus-ebpf attach|replay|validate|detach|stats|filter|flows|daemon|task|fleet|plugins|...`.
The flags of a task's settings are made from otus_ebpf.control.settings
(otus_ebpf.cli.flags); the commands' own options are here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otus_ebpf import __version__, logs
from otus_ebpf.capture.replay import run_replay
from otus_ebpf.capture.runner import tune_runtime
from otus_ebpf.cli import daemon as cli_daemon
from otus_ebpf.cli import fleet as cli_fleet
from otus_ebpf.cli import install
from otus_ebpf.cli import plugins as cli_plugins
from otus_ebpf.cli.agent import AttachOptions, log, require_root, resolve_interface, run_attach
from otus_ebpf.cli.flags import add_settings, argument_type, given
from otus_ebpf.control.bounds import REPLAY_SPEED, parse_float
from otus_ebpf.control.config import Config, ConfigInvalid, TaskConfig
from otus_ebpf.control.config import load as load_config
from otus_ebpf.control.settings import (
    BY_NAME,
    CLI_TASK_NAME,
    DEFAULT_METRICS_LISTEN,
    Group,
    Setting,
    build_options,
    cross_problems,
    defaults,
)
from otus_ebpf.errors import EXIT_INVALID, EXIT_SETUP_ERROR, SetupError
from otus_ebpf.kernel.attach import detach
from otus_ebpf.kernel.counters import COUNTERS
from otus_ebpf.kernel.introspect import live_maps
from otus_ebpf.kernel.loader import parse_network
from otus_ebpf.secret import read_secret
from userspace.event import Direction

ATTACH_EXAMPLES = """\
examples:
  otus-ebpf attach eth0                     # SIP on ports 5060, 5061 to otus-out/sip-eth0.jsonl
  otus-ebpf attach eth0 --sip-port 5080 --signature  # port 5080, and SIP on any UDP port
  otus-ebpf attach eth0 eth1 --exclude 10.99.0.0/16  # two interfaces, without one network
  otus-ebpf attach eth0 --ws-port 8080               # and SIP over WebSocket (RFC 7118) on port 8080
  otus-ebpf attach eth0 --drop-method OPTIONS --dedup  # no keep-alive pings; a packet seen twice goes up once
  otus-ebpf attach eth0 --pcap calls.pcapng --pcap-format pcapng  # every frame (RTP too) to a file
  otus-ebpf attach eth0 --pcap-per-call calls/       # one capture file per call
  otus-ebpf attach eth0 --kafka k1:9092 --topic otus --kafka-topic-per-kind  # otus.sip, otus.call...
  otus-ebpf attach eth0 --hep udp:homer:9060         # SIP and RTP reports to Homer, as HEPv3
  otus-ebpf attach eth0 --workers 4 --ring-mb 128    # four workers, 128 MiB of ring each
  otus-ebpf attach eth0 --mode afpacket --out -      # AF_PACKET rings, records on stdout
  otus-ebpf attach eth0 -c /etc/otus-ebpf.yaml --task access  # a file's task; flags given override it
"""
REPLAY_OUT_HELP = "JSON-lines output (default: otus-out/sip-NAME.jsonl for a file NAME.pcap; - for stdout)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otus-ebpf", description="eBPF capture agent for SIP")
    parser.add_argument("--version", action="version", version=f"otus-ebpf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_attach(commands.add_parser("attach", help="capture on interfaces until SIGINT/SIGTERM",
                                    description="Capture SIP, and the media its SDP announces, on IFACE "
                                                "until SIGINT/SIGTERM.",
                                    epilog=ATTACH_EXAMPLES,
                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    replay = commands.add_parser("replay", help="a pcap or pcapng file through the pipeline and the outputs")
    replay.add_argument("file", type=Path)
    replay.add_argument("--speed", default="max", metavar="N|max",
                        help="pace frames N times faster than captured, or as fast as possible (default)")
    replay.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="take a task's processors and outputs (and the rest) from this YAML file; "
                             "flags given override it")
    replay.add_argument("--task", metavar="NAME", help="the file's task to take (default: the first)")
    add_settings(replay, "replay", {"out": REPLAY_OUT_HELP})
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
    cli_fleet.add_commands(commands)
    cli_plugins.add_command(commands)
    add_settings(commands.choices["daemon"], "daemon")
    return parser


def _add_attach(attach: argparse.ArgumentParser) -> None:
    attach.add_argument("interfaces", nargs="+", metavar="IFACE")
    attach.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="take the task's settings from this YAML file; flags given override it")
    attach.add_argument("--task", metavar="NAME",
                        help="the file's task to run (default: the one capturing IFACE, else the first)")
    sections = add_settings(attach, "attach")
    sections[Group.OBSERVABILITY].add_argument(
        "--no-tui", action="store_true",
        help="plain stats lines instead of the live view (also without a terminal)")


def _add_filter(filt: argparse.ArgumentParser) -> None:
    port = argument_type(BY_NAME["sip_ports"].kind.parse)
    filt.add_argument("interface")
    filt.add_argument("--add-sip-port", type=port, action="append", default=[], metavar="PORT")
    filt.add_argument("--remove-sip-port", type=port, action="append", default=[], metavar="PORT")
    filt.add_argument("--signature", choices=["on", "off"])
    method = argument_type(BY_NAME["drop_methods"].kind.parse)
    filt.add_argument("--add-drop-method", type=method, action="append", default=[], metavar="METHOD")
    filt.add_argument("--remove-drop-method", type=method, action="append", default=[], metavar="METHOD")
    filt.add_argument("--dedup", choices=["on", "off"])
    window = argument_type(BY_NAME["dedup_window_ms"].kind.parse)
    filt.add_argument("--dedup-window-ms", type=window, metavar="MS")
    for which in ("include", "exclude"):
        filt.add_argument(f"--add-{which}", action="append", default=[], metavar="CIDR")
        filt.add_argument(f"--remove-{which}", action="append", default=[], metavar="CIDR")


def entry() -> int:
    """The command: its process tuned for the pipeline (otus_ebpf.capture.runner.tune_runtime),
    then ``main``. Callers of ``main`` in a process of their own (tests) keep theirs."""
    tune_runtime()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = _config_of(args)
        file_level = config.log_level if config else logs.DEFAULT_LEVEL
        logs.configure(getattr(args, "log_level", file_level))
        return _run(args, config)
    except SetupError as exc:
        print(f"otus-ebpf: error: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR


def _run(args: argparse.Namespace, config: Config | None) -> int:
    if args.command == "validate":
        return _validate(args.file)
    if args.command == "replay":
        return _replay(args, config)
    if args.command == "attach":
        options = _attach_options(args, config)
        metrics = getattr(args, "metrics_listen", config.metrics_listen if config else DEFAULT_METRICS_LISTEN)
        live_view = not args.no_tui and sys.stdout.isatty() and options.out != "-"
        return run_attach(options, metrics_listen=metrics, live_view=live_view)
    if args.command == "install-service":
        require_root("installing the service")
        if args.remove:
            install.remove()
        else:
            install.install(install.find_sources())
        return 0
    if args.command in ("daemon", "task", "reload", "top"):
        return cli_daemon.run(args)
    if args.command == "fleet":
        return cli_fleet.run(args)
    if args.command == "plugins":
        return cli_plugins.run(args)
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


def _config_of(args: argparse.Namespace) -> Config | None:
    """The file `attach -c` takes its task from (refused whole if invalid), or the one
    the daemon will run (read here only for its log level: the daemon reports its problems)."""
    if args.command in ("attach", "replay") and args.config is not None:
        try:
            return load_config(args.config)
        except ConfigInvalid as invalid:
            first, more = invalid.problems[0], len(invalid.problems) - 1
            raise SetupError(f"{first} (and {more} more; see `otus-ebpf validate {args.config}`)" if more
                             else str(first)) from None
    if args.command == "daemon":
        try:
            return load_config(args.config)
        except ConfigInvalid:
            return None
    return None


def _attach_options(args: argparse.Namespace, config: Config | None = None) -> AttachOptions:
    """The flags given, over the config file's task (with -c), over the defaults;
    the interfaces are always the command line's."""
    values, task, node = defaults(), CLI_TASK_NAME, None
    if config is not None:
        chosen = _pick_task(config, args)
        values, task, node = dict(chosen.values), chosen.name, config.node_name
    return _options(values | given(args, "attach"), tuple(args.interfaces), task, node)


def _options(values: dict[str, Any], interfaces: tuple[str, ...], task: str,
             node: str | None = None) -> AttachOptions:
    for name, message in cross_problems(values):
        raise SetupError(f"{BY_NAME[name].flag}: {message}")
    return build_options(values, interfaces, task, _secret_from, node)


def _secret_from(setting: Setting, path: str) -> str:
    """A secret read from a file, so it is not in argv (visible to every user in ps)."""
    try:
        return read_secret(path)
    except ValueError as exc:
        raise SetupError(f"{setting.flag}: {exc}") from None


def _detach(ifindex: int, interface: str) -> int:
    removed = detach(ifindex, interface)
    for what in removed:
        log(f"removed {what}")
    if not removed:
        log(f"nothing of otus-ebpf attached to {interface}")
    return 0


def _stats(ifindex: int, interface: str) -> int:
    with live_maps(ifindex, interface) as maps:
        counts, failures = maps.counters_and_failures()
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
               args.remove_include, args.add_exclude, args.remove_exclude, args.add_drop_method,
               args.remove_drop_method, args.dedup, args.dedup_window_ms]
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
        for token in args.remove_drop_method:
            maps.change_drop_method(token, add=False)
        for token in args.add_drop_method:
            maps.change_drop_method(token, add=True)
        if args.dedup or args.dedup_window_ms is not None:
            on = args.dedup == "on" if args.dedup else maps.filters().dedup_window_ms is not None
            maps.set_dedup(on, args.dedup_window_ms)
        for which in ("include", "exclude"):
            for cidr in getattr(args, f"add_{which}"):
                maps.change_network(which, parse_network(cidr), add=True)
            for cidr in getattr(args, f"remove_{which}"):
                maps.change_network(which, parse_network(cidr), add=False)
        now = maps.filters()
    print("\n".join(now.lines()))
    log(f"filters of the agent on {args.interface} updated")
    return 0


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
        if set(getattr(args, "interfaces", ())) & set(task.options.interfaces):
            return task
    return config.tasks[0]


def _replay(args: argparse.Namespace, config: Config | None = None) -> int:
    """Replay with the flags of attach it takes (outputs, SIP ports, the RTP report interval),
    over a file's task with -c (its processors and outputs.plugins have no flags); the rest
    keep their defaults. The frames' interfaces are the capture file's, never the task's."""
    values, task, node = defaults(), CLI_TASK_NAME, None
    if config is not None:
        chosen = _pick_task(config, args)
        values, task, node = dict(chosen.values), chosen.name, config.node_name
    options = _options(values | given(args, "replay"), (args.file.stem,), task, node)
    if args.speed == "max":
        speed = None
    else:
        try:
            speed = parse_float(args.speed, REPLAY_SPEED)
        except ValueError as exc:
            raise SetupError(f"--speed {args.speed!r}: {exc} (times as fast as captured), or max") from None
    return run_replay(args.file, options, speed)
