"""`otus-ebpf fleet`: what it refuses before sending anything, and how it reads
heartbeats anyone who can write the topic may have written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from otus_ebpf.cli import fleet as cli_fleet
from otus_ebpf.cli.main import main
from otus_ebpf.fleet.client import _status

NOW = 1_800_000_000_000


@pytest.mark.parametrize(("argv", "said"), [
    (["send", "list", "--node", "", "--kafka", "x:1", "--key-file", "KEY"], "--node/--group"),
    (["send", "list", "--group", "", "--kafka", "x:1", "--key-file", "KEY"], "--node/--group"),
    (["send", "list", "--all", "--key-file", "KEY"], "which broker?"),
    (["send", "list", "--all", "--kafka", "x:1"], "a command is signed"),
    (["send", "list", "--all", "--kafka", "x:1", "--key-file", "OPEN"], "readable by others"),
    (["send", "delete", "--all", "--kafka", "x:1", "--key-file", "KEY"], "which task?"),
])
def test_refused_before_anything_is_sent(argv: list[str], said: str, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    key, open_key = tmp_path / "key", tmp_path / "open"
    for path, mode in ((key, 0o600), (open_key, 0o644)):
        path.write_text("k" * 32)
        path.chmod(mode)
    argv = [str(key) if a == "KEY" else str(open_key) if a == "OPEN" else a for a in argv]
    assert main(["fleet", *argv]) == 1
    err = capsys.readouterr().err
    assert said in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e400"])
def test_times_must_be_finite_and_positive(value: str) -> None:
    with pytest.raises(SystemExit):
        main(["fleet", "status", "--kafka", "x:1", "--since", value])


def beat(**fields: Any) -> dict[str, Any]:
    return {"node": "b", "ts_ms": NOW - 2_000, "interval_ms": 1_000, "state": "running", "instance": "i1",
            **fields}


@pytest.mark.parametrize(("fields", "state"), [
    ({}, "running"), ({"ts_ms": NOW - 4_000}, "stale"), ({"state": "stopped"}, "stopped"),
    ({"interval_ms": 10**400}, "running"), ({"interval_ms": math.inf}, "running"),
    ({"interval_ms": math.nan}, "running"), ({"interval_ms": "x"}, "running"),
    ({"state": "\x1b]0;PWNED\x07"}, "?"), ({"ts_ms": NOW - 40_000, "interval_ms": 10**400}, "stale"),
])
def test_a_hostile_heartbeat_gives_a_state_never_a_traceback(fields: dict[str, Any], state: str) -> None:
    status = _status("b", {"i1": (beat(**fields), None)}, NOW)
    assert status.state == state
    table = cli_fleet._status_table([status])
    assert "\x1b" not in table and "\x07" not in table


def test_two_daemons_calling_themselves_one_node_are_a_conflict() -> None:
    status = _status("b", {"i1": (beat(), None), "i2": (beat(instance="i2", ts_ms=NOW - 1_000), None)}, NOW)
    assert status.state == "conflict"
    stopped = _status("b", {"i1": (beat(state="stopped"), None),
                            "i2": (beat(instance="i2", ts_ms=NOW - 1_000), None)}, NOW)
    assert stopped.state == "running", "a restart: the old instance said it stopped"


@pytest.mark.parametrize("uptime", [math.inf, math.nan, -5, 1e300, "x", None])
def test_odd_uptimes_print_as_unknown(uptime: Any) -> None:
    assert cli_fleet._span(uptime) == "?"
