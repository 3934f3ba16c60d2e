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
                extra: Sequence[str] = ()) -> Background:
    agent = Background([str(AGENT), "attach", interface, "--no-tui", "--out", str(out),
                        "--stats-interval", "1", *extra], log, netns=netns)
    agent.wait_for_output("attached to", ATTACH_TIMEOUT_S)
    return agent


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
