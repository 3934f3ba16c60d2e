"""Run `otus-ebpf attach` as a separate process inside a lab namespace."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.paths import AGENT
from tests.support.procs import Background

ATTACH_TIMEOUT_S = 30.0


def start_agent(netns: str, interface: str, out: Path, log: Path,
                extra: Sequence[str] = (), more_interfaces: Sequence[str] = ()) -> Background:
    # Several agents may share a namespace: /metrics only where a test asks for it.
    metrics = [] if "--metrics" in extra else ["--metrics", "off"]
    agent = Background([str(AGENT), "attach", interface, *more_interfaces, "--no-tui", "--out", str(out),
                        "--stats-interval", "1", *metrics, *extra], log, netns=netns)
    agent.wait_for_output("capturing:", ATTACH_TIMEOUT_S)
    return agent


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``path``, or of its worker files (NAME.wN.EXT) when worker processes wrote them."""
    paths = [path] if path.exists() else sorted(path.parent.glob(f"{path.stem}.w*{path.suffix}"))
    assert paths, f"no {path} and no worker files beside it"
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


def final_stats(agent: Background) -> dict[str, int]:
    """The agent's last stats line as flat keys: ingress_seen, egress_matched, records, ..."""
    lines = [line for line in agent.output().splitlines() if line.startswith("otus-ebpf: ")]
    assert lines, agent.output()
    stats: dict[str, int] = {}
    for section in lines[-1].split(" | ")[1:]:
        words = section.split()
        prefix = f"{words[0]}_" if "=" not in words[0] else ""
        for word in words[1 if prefix else 0:]:
            key, _, value = word.partition("=")
            stats[prefix + key] = int(value)
    return stats
