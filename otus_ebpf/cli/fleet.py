"""`otus-ebpf fleet status|send`: the fleet seen and driven through Kafka
(docs/FLEET.md). Nothing here needs root or a local daemon."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from otus_ebpf.control.config import ConfigInvalid, task_definition
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
    status.add_argument("--status-topic", default=STATUS_TOPIC)
    status.add_argument("--since", type=float, default=DEFAULT_SINCE_S, metavar="SECONDS",
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
    sender.add_argument("--key-file", required=True, help="the fleet's shared key (mode 0600)")
    sender.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"how long to wait for answers (default {DEFAULT_TIMEOUT_S:g})")
    sender.add_argument("--command-topic", default=COMMAND_TOPIC)
    sender.add_argument("--response-topic", default=RESPONSE_TOPIC)
    for parser in (status, sender):
        parser.add_argument("--kafka", required=True, metavar="BROKERS", help="the fleet's Kafka brokers")
        parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    if args.fleet_action == "status":
        key = _key(args.key_file) if args.key_file else None
        nodes = fleet_status(args.kafka, args.status_topic, key, args.since)
        print("\n".join(json.dumps(_as_json(n)) for n in nodes) if args.json else _status_table(nodes))
        return 0
    return _send(args)


def _key(path: str) -> bytes:
    try:
        return read_key(path)
    except ValueError as exc:
        raise SetupError(f"--key-file: {exc}") from None


def _send(args: argparse.Namespace) -> int:
    target = target_of({"node": args.node} if args.node else {"group": args.group} if args.group
                       else {"all": True})
    if target is None:
        raise SetupError("--node/--group: a printable name of at most 256 characters")
    arguments = _arguments(args)
    answers = send(args.kafka, _key(args.key_file), target, args.verb, arguments, args.timeout,
                   args.command_topic, args.response_topic, expect=1 if target.node else None)
    for answer in answers:
        print(json.dumps(answer.body) if args.json else _answer_line(answer))
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
        return f"{_clean(answer.node)}: error: {_clean(answer.body.get('error'))}{unsigned}"
    return f"{_clean(answer.node)}: ok {json.dumps(body)}{unsigned}"


def _clean(value: Any) -> str:
    """A heartbeat's text for a terminal: anyone who can write the topic wrote it."""
    return "".join(c if c.isprintable() else "?" for c in str(value))[:80]


def _status_table(nodes: list[NodeStatus]) -> str:
    if not nodes:
        return "no heartbeats"
    lines = [f"{'NODE':16} {'STATE':8} {'LAST BEAT':>10} {'UPTIME':>9} {'VERSION':8} GROUPS"]
    for n in nodes:
        beat = n.beat
        checked = "" if n.verified is None else "" if n.verified else "  UNVERIFIED"
        groups = beat["groups"] if isinstance(beat.get("groups"), list) else []
        lines.append(f"{_clean(n.node):16} {n.state:8} {_ago(n.age_s):>10} {_span(beat.get('uptime_s')):>9} "
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


def _span(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s"
