"""`otus-ebpf fleet status|send`: the fleet seen and driven through Kafka
(docs/FLEET.md). Nothing here needs root or a local daemon."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otus_ebpf.control.bounds import Bound, parse_float
from otus_ebpf.control.config import ConfigInvalid, load, task_definition
from otus_ebpf.errors import SetupError
from otus_ebpf.fleet.client import Answer, NodeStatus, fleet_status, send
from otus_ebpf.fleet.envelope import Target, target_of
from otus_ebpf.fleet.settings import COMMAND_TOPIC, RESPONSE_TOPIC, STATUS_TOPIC, read_key

VERBS = ("list", "status", "stats", "create", "delete", "pause", "resume", "reload")
TASK_VERBS = ("status", "create", "delete", "pause", "resume")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SINCE_S = 3_600.0


def add_commands(commands: Any) -> None:
    about = "see and drive many daemons through Kafka (docs/FLEET.md)"
    fleet = commands.add_parser("fleet", help=about, description=about)
    actions = fleet.add_subparsers(dest="fleet_action", required=True)
    status = actions.add_parser("status", help="every node's latest heartbeat: state, age, tasks")
    status.add_argument("--status-topic", help=f"default {STATUS_TOPIC}")
    status.add_argument("--since", type=_seconds, default=DEFAULT_SINCE_S, metavar="SECONDS",
                        help=f"nodes heard from in this long (default {DEFAULT_SINCE_S:g})")
    status.add_argument("--key-file", help="check the heartbeats' signatures with the fleet's key")
    sender = actions.add_parser("send", help="sign a command, send it, print the answers")
    sender.add_argument("verb", choices=VERBS)
    sender.add_argument("name", nargs="?", help="the task (status, create, delete, pause, resume)")
    to = sender.add_mutually_exclusive_group(required=True)
    to.add_argument("--node", help="the node named so (its node.name)")
    to.add_argument("--group", help="every node of this group (control.kafka.groups)")
    to.add_argument("--all", action="store_true", help="every node")
    sender.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="create: the file holding the task (read here, sent whole)")
    sender.add_argument("--key-file", help="the fleet's shared key (mode 0600)")
    sender.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"how long to wait for answers (default {DEFAULT_TIMEOUT_S:g})")
    sender.add_argument("--command-topic", help=f"default {COMMAND_TOPIC}")
    sender.add_argument("--response-topic", help=f"default {RESPONSE_TOPIC}")
    for parser in (status, sender):
        parser.add_argument("--kafka", metavar="BROKERS", help="the fleet's Kafka brokers")
        parser.add_argument("--daemon-config", type=Path, metavar="FILE",
                            help="take the brokers, key, topics and TLS/SASL from this daemon file's "
                                 "control.kafka (the flags given override them)")
        parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _seconds(text: str) -> float:
    try:
        return parse_float(text, Bound(0.1, 86_400 * 366))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    link = _link(args)
    if args.fleet_action == "status":
        nodes = fleet_status(link.brokers, args.status_topic or link.status_topic, link.key, args.since,
                             link.security)
        print("\n".join(json.dumps(_as_json(n)) for n in nodes) if args.json else _status_table(nodes))
        return 0
    return _send(args, link)


@dataclass(frozen=True, slots=True)
class _Link:
    """How to reach the fleet: from the flags, over a daemon file's control.kafka."""

    brokers: str
    key: bytes | None = field(default=None, repr=False)
    command_topic: str = COMMAND_TOPIC
    response_topic: str = RESPONSE_TOPIC
    status_topic: str = STATUS_TOPIC
    security: dict[str, str] = field(default_factory=dict, repr=False)


def _link(args: argparse.Namespace) -> _Link:
    link = _Link("")
    if args.daemon_config is not None:
        try:
            fleet = load(args.daemon_config).fleet
        except ConfigInvalid as invalid:
            raise SetupError(str(invalid.problems[0])) from None
        if fleet is None:
            raise SetupError(f"{args.daemon_config} has no control.kafka")
        link = _Link(fleet.brokers, fleet.key, fleet.command_topic, fleet.response_topic, fleet.status_topic,
                     fleet.security)
    if args.kafka:
        link = dataclasses.replace(link, brokers=args.kafka)
    if args.key_file:
        link = dataclasses.replace(link, key=_key(args.key_file))
    if not link.brokers:
        raise SetupError("which broker? --kafka BROKERS, or --daemon-config FILE")
    return link


def _key(path: str) -> bytes:
    try:
        return read_key(path)
    except ValueError as exc:
        raise SetupError(f"--key-file: {exc}") from None


def _send(args: argparse.Namespace, link: _Link) -> int:
    # An empty --node "$NODE" must be refused, never taken for --all.
    target = target_of({"node": args.node} if args.node is not None else
                       {"group": args.group} if args.group is not None else {"all": True})
    if target is None:
        raise SetupError("--node/--group: a printable name of 1 to 256 characters")
    if link.key is None:
        raise SetupError("a command is signed: --key-file FILE, or --daemon-config FILE")
    arguments = _arguments(args)
    answers = send(link.brokers, link.key, target, args.verb, arguments, args.timeout,
                   args.command_topic or link.command_topic, args.response_topic or link.response_topic,
                   expect=1 if target.node else None, security=link.security)
    for answer in answers:
        print(json.dumps({**answer.body, "verified": answer.verified}) if args.json else _answer_line(answer))
    if not answers:
        raise SetupError(f"no answer within {args.timeout:g} s from {_who(target)}")
    return 0 if all(a.verified and a.body.get("ok") for a in answers) else 1


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    if args.verb not in TASK_VERBS:
        return {}
    if not args.name:
        raise SetupError(f"fleet send {args.verb}: which task? name it after the verb")
    if args.verb != "create":
        return {"task": args.name}
    if args.config is None:
        raise SetupError("fleet send create: -c FILE says where the task is defined")
    try:
        return {"task": args.name, "definition": task_definition(args.config, args.name)}
    except ConfigInvalid as invalid:
        raise SetupError(str(invalid.problems[0])) from None
    except KeyError as exc:
        raise SetupError(str(exc.args[0])) from None


def _who(target: Target) -> str:
    if target.everyone:
        return "every node"
    return f"node {target.node}" if target.node else f"group {target.group}"


def _answer_line(answer: Answer) -> str:
    body = {k: v for k, v in answer.body.items() if k not in ("v", "id", "node", "ts_ms", "cmd", "ok", "sig")}
    unsigned = "" if answer.verified else "  (UNVERIFIED: not signed with this key)"
    if not answer.body.get("ok"):
        return f"{_clean(answer.node)}: error: {_clean(answer.body.get('error'), 1_000)}{unsigned}"
    return f"{_clean(answer.node)}: ok {json.dumps(body)}{unsigned}"


def _clean(value: Any, limit: int = 80) -> str:
    """A heartbeat's or an answer's text for a terminal: anyone who can write the topic wrote it."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def _status_table(nodes: list[NodeStatus]) -> str:
    if not nodes:
        return "no heartbeats"
    lines = [f"{'NODE':16} {'STATE':8} {'LAST BEAT':>10} {'UPTIME':>9} {'VERSION':8} GROUPS"]
    for n in nodes:
        beat = n.beat
        checked = "" if n.verified is None else "" if n.verified else "  UNVERIFIED"
        groups = beat["groups"] if isinstance(beat.get("groups"), list) else []
        lines.append(f"{_clean(n.node):16} {_clean(n.state):8} {_ago(n.age_s):>10} "
                     f"{_span(beat.get('uptime_ms')):>9} "
                     f"{_clean(beat.get('version', '?')):8} {_clean(','.join(map(str, groups))) or '-'}"
                     f"{checked}")
        for task in beat.get("tasks", []) if isinstance(beat.get("tasks"), list) else []:
            if isinstance(task, dict):
                lines.append(f"  {_clean(task.get('name')):20} {_clean(task.get('state')):9} "
                             f"{_clean(task.get('mode')):9} records={_clean(task.get('records'))} "
                             f"sip={_clean(task.get('sip_messages'))} "
                             f"lost={_clean(task.get('records_lost'))}")
    return "\n".join(lines)


def _as_json(n: NodeStatus) -> dict[str, Any]:
    return {"node": n.node, "state": n.state, "age_s": round(n.age_s, 1), "verified": n.verified,
            "heartbeat": n.beat}


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _span(ms: Any) -> str:
    if not isinstance(ms, int | float) or not 0 <= ms < 1e15 or not math.isfinite(ms):
        return "?"
    whole = int(ms) // 1000
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s"
