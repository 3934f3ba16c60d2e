"""The daemon's command line: `daemon -c FILE` runs it; `task`, `reload`,
`stats` (without an interface) and `top` talk to it over its control socket."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from otus_ebpf.control.config import DEFAULT_CONTROL_SOCKET
from otus_ebpf.control.daemon import run_daemon
from otus_ebpf.control.server import request
from otus_ebpf.errors import SetupError
from otus_ebpf.view.app import LiveApp, yield_to_capture
from otus_ebpf.view.sources import RemoteSource

TASK_ACTIONS = ("list", "status", "create", "delete", "pause", "resume")


def default_socket() -> str:
    return os.environ.get("OTUS_CONTROL_SOCKET", DEFAULT_CONTROL_SOCKET)


def add_commands(commands: Any) -> None:
    daemon = commands.add_parser("daemon", help="run the tasks of a config file, with a control socket")
    daemon.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
    about = "list, inspect, create, delete, pause or resume a running daemon's tasks"
    task = commands.add_parser("task", help=about, description=about)
    task.add_argument("action", choices=TASK_ACTIONS)
    task.add_argument("name", nargs="?", help="the task (every action but list)")
    task.add_argument("-c", "--config", type=Path, metavar="FILE", help="where `create` finds the task")
    reload = commands.add_parser("reload", help="make the daemon re-read its config file (as SIGHUP)")
    top = commands.add_parser("top", help="the live view of a running daemon")
    for parser in (task, reload, top):
        parser.add_argument("--socket", default=None,
                            help=f"control socket ($OTUS_CONTROL_SOCKET, else {DEFAULT_CONTROL_SOCKET})")


def run(args: argparse.Namespace) -> int:
    if args.command == "daemon":
        return run_daemon(args.config)
    path = args.socket or default_socket()
    if args.command == "reload":
        answer = request(path, {"cmd": "reload"})
        print(f"started {answer['started']} reconfigured {answer['reconfigured']} "
              f"restarted {answer['restarted']} stopped {answer['stopped']} "
              f"unchanged {answer['unchanged']} failed {answer['failed']}")
        return 0
    if args.command == "top":
        return _top(path)
    return _task(path, args)


def daemon_stats(socket_path: str | None) -> int:
    for name, line in request(socket_path or default_socket(), {"cmd": "stats"})["stats"].items():
        print(f"{name}: {line}")
    return 0


def _task(path: str, args: argparse.Namespace) -> int:
    if args.action == "list":
        for task in request(path, {"cmd": "list"})["tasks"]:
            failure = f"  ({task['failure']})" if task.get("failure") else ""
            print(f"{task['name']:20} {task['state']:10} {','.join(task['interfaces'])}{failure}")
        return 0
    if not args.name:
        raise SetupError(f"task {args.action}: which task? name it: otus-ebpf task {args.action} NAME")
    if args.action == "status":
        task = request(path, {"cmd": "status", "task": args.name})["task"]
        print(f"{task['name']}: {task['state']} on {','.join(task['interfaces'])}\n{task['stats']}")
        if task.get("failure"):
            print(f"failed: {task['failure']}")
        return 0
    if args.action == "create":
        if args.config is None:
            raise SetupError("task create: -c FILE says where the task is defined")
        request(path, {"cmd": "create", "config": str(args.config.resolve()), "task": args.name})
        print(f"task {args.name}: created")
        return 0
    if args.action in ("pause", "resume"):
        request(path, {"cmd": args.action, "task": args.name})
        print(f"task {args.name}: {args.action}d")
        return 0
    request(path, {"cmd": "delete", "task": args.name})
    print(f"task {args.name}: deleted")
    return 0


def _top(path: str) -> int:
    source = RemoteSource(path)
    source.remote_tasks()  # no daemon: one line and exit 1, before the screen is taken
    yield_to_capture()
    LiveApp(source).run()
    return 0
