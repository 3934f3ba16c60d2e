"""docs/FLEET.md holds true: its examples verify under its example key, its
shell line signs the same bytes, its tables name what the code does; and
`fleet status` prints what a topic's writer sent without letting it reach
the terminal as control characters."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from otus_ebpf.cli import fleet as cli_fleet
from otus_ebpf.fleet import envelope
from otus_ebpf.fleet.channel import PARTITIONS_EVERY_S, QUEUE_MESSAGES, READ_ONLY_VERBS
from otus_ebpf.fleet.client import NodeStatus
from otus_ebpf.fleet.envelope import MAX_COMMAND_BYTES, MAX_SEEN, Verdict
from tests.conftest import require_tool

DOC = (Path(__file__).resolve().parents[2] / "docs" / "FLEET.md").read_text()
KEY = b"example-fleet-key-0123456789"


def json_after(marker: str) -> dict[str, object]:
    block = DOC[DOC.index(marker):].split("```json\n", 1)[1].split("```", 1)[0]
    found = json.loads(block)
    assert isinstance(found, dict)
    return found


def test_the_example_command_and_answer_are_signed_with_the_example_key() -> None:
    assert "example-fleet-key-0123456789" in DOC
    command, answer = json_after("**A command**"), json_after("**An answer**")
    assert envelope.signed_by(command, KEY) and envelope.signed_by(answer, KEY)
    assert answer["id"] == command["id"]


def test_the_shell_line_signs_the_canonical_form() -> None:
    quoted = re.search(r"printf '%s' '(.+?)' \\", DOC)
    assert quoted is not None
    assert quoted.group(1).encode() == envelope.canonical(json_after("**A command**"))
    require_tool("openssl")
    done = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", KEY.decode()],
                          input=quoted.group(1).encode(), capture_output=True, check=True)
    assert done.stdout.split()[-1].decode() == json_after("**A command**")["sig"]


def test_the_outcome_table_names_every_verdict() -> None:
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", DOC, re.M))
    assert rows == {v.value for v in Verdict}


def test_the_numbers_the_doc_gives_are_the_codes() -> None:
    assert f"{MAX_COMMAND_BYTES >> 20} MiB" in DOC and f"{MAX_SEEN:,}" in DOC
    assert f"{QUEUE_MESSAGES:,}" in DOC and f"every {PARTITIONS_EVERY_S:g} s" in DOC
    sentence = DOC.split("The verbs are\nthe control socket's:", 1)[1].split(".", 1)[0]
    assert re.findall(r"`([a-z]+)`", sentence) == list(cli_fleet.VERBS)
    assert "only list, status, stats and samples" in DOC
    assert {"list", "status", "stats", "samples"} == READ_ONLY_VERBS


def test_fleet_status_shows_states_and_tasks_and_cleans_what_it_prints() -> None:
    beat = {"node": "edge\x1b[2J", "uptime_ms": 11_520_000, "version": "0.1.0", "groups": ["eu"],
            "tasks": [{"name": "t2\x07", "state": "running", "mode": "xdp", "records": 5, "sip_messages": 5,
                       "records_lost": 0}]}
    table = cli_fleet._status_table([NodeStatus("edge\x1b[2J", 2.0, "running", beat, True),
                                     NodeStatus("edge-9", 41.0, "stale", {"groups": "not a list"}, False)])
    assert "\x1b" not in table and "\x07" not in table
    lines = table.splitlines()
    assert lines[1].split()[:3] == ["edge?[2J", "running", "2"] and "3h12m" in lines[1]
    assert lines[2].split()[:3] == ["t2?", "running", "xdp"]
    assert lines[3].split()[:2] == ["edge-9", "stale"] and lines[3].endswith("UNVERIFIED")
