"""`otus-ebpf plugins`: the processor and reporter plugins installed, each
loaded and judged as a task would (otus_ebpf.plugins), in a table or as JSON.
Always exits 0: a broken plugin is a line saying so, not a failure of the
listing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from otus_ebpf.plugins import KINDS, Plugin, installed
from userspace.processors.api import API_VERSION

HEADER = ("GROUP", "NAME", "PACKAGE", "TARGET", "API", "STATE")


def add_command(commands: Any) -> None:
    listing = commands.add_parser(
        "plugins", help="the processor and reporter plugins installed, and whether each can be used",
        description=f"List the plugins installed through the entry point groups {', '.join(KINDS)}: "
                    f"each one's package, its module:attr, the plugin API it declares (this otus-ebpf "
                    f"has {API_VERSION}) and why it cannot be used, if it cannot.")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def run(args: argparse.Namespace) -> int:
    found = installed()
    print(json.dumps(as_json(found), indent=2) if args.json else table(found))
    return 0


def table(plugins: Sequence[Plugin]) -> str:
    if not plugins:
        return f"no plugins installed (entry point groups {', '.join(KINDS)})"
    rows = [HEADER, *([p.kind, p.name, f"{p.distribution} {p.version}".strip() or "-", p.target,
                       p.api_version or "-", p.problem or "ok"] for p in plugins)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
                     for row in rows)


def as_json(plugins: Sequence[Plugin]) -> dict[str, Any]:
    groups = {kind: group for group, kind in KINDS.items()}
    return {"api_version": API_VERSION, "plugins": [
        {"group": p.kind, "entry_point_group": groups[p.kind], "name": p.name, "distribution": p.distribution,
         "version": p.version, "target": p.target, "api_version": p.api_version or None, "usable": p.usable,
         "problem": p.problem or None} for p in plugins]}
