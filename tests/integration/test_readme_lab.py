"""The README's lab recipe, typed into an interactive shell in a real terminal
(tmux) as an operator would: the agent and the answering sipp run in the
background of that shell, five calls are made and recorded, the agent stops
on SIGINT, and the lab is gone at the end. Namespaces get a prefix of their
own (OTUS_LAB_PREFIX), so a lab the developer has up is left alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from tests.support.paths import REPO

README = (REPO / "README.md").read_text()
RECIPE_TIMEOUT_S = 120.0
CALLS = 5


def recipe() -> list[str]:
    block = README.split("Try it by hand", 1)[1]
    match = re.search(r"```sh\n(.*?)```", block, re.DOTALL)
    assert match is not None
    return [line for line in match.group(1).splitlines() if line.strip()]


def localised(line: str, prefix: str) -> str:
    """The recipe as typed here: as root already, this checkout's paths, our prefix."""
    for old, new in (("sudo ", ""), ("otus-uas", f"{prefix}-uas"), ("otus-uac", f"{prefix}-uac"),
                     ("scripts/", f"{REPO}/scripts/"), (".venv/bin/", f"{REPO}/.venv/bin/")):
        line = line.replace(old, new)
    return line


def test_the_readme_lab_recipe_works_in_a_terminal(tmp_path: Path) -> None:
    prefix = f"otus-rd{os.getpid() % 10000}"
    server = f"otus-readme-{os.getpid()}"

    def tmux(*args: str, check: bool = True) -> str:
        return subprocess.run(["tmux", "-L", server, *args], check=check, capture_output=True,
                              text=True).stdout

    env = {**os.environ, "OTUS_LAB_PREFIX": prefix}
    subprocess.run(["tmux", "-L", server, "new-session", "-d", "-s", "lab", "-x", "200", "-y", "50", "-c",
                    str(tmp_path), "bash --norc --noprofile -i"], check=True, env=env)
    try:
        for line in [*(localised(raw, prefix) for raw in recipe()), "echo RECIPE-DONE-$?"]:
            tmux("send-keys", "-t", "lab", "-l", line)
            tmux("send-keys", "-t", "lab", "Enter")
        deadline = time.monotonic() + RECIPE_TIMEOUT_S
        while True:
            screen = tmux("capture-pane", "-p", "-S", "-200", "-t", "lab")
            done = re.search(r"^RECIPE-DONE-(\d+)$", screen, re.MULTILINE)
            if done is not None:
                break
            assert time.monotonic() < deadline, screen
            time.sleep(0.5)
        assert done.group(1) == "0", screen
    finally:
        tmux("kill-server", check=False)
        for side in ("uas", "uac"):  # whatever the recipe left running, by PID
            pids = subprocess.run(["ip", "netns", "pids", f"{prefix}-{side}"], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run([str(REPO / "scripts" / "lab.sh"), "down"], env=env, capture_output=True, check=False)

    records = [json.loads(line) for line in (tmp_path / "lab.jsonl").read_text().splitlines()]
    calls = [r for r in records if r["kind"] == "call"]
    assert [c["end_cause"] for c in calls] == ["bye"] * CALLS, screen
    assert f"\n{CALLS}\n" in f"\n{screen}\n", "the recipe's own count of calls"
    assert "records: " in (tmp_path / "lab.log").read_text(), "the agent stopped on SIGINT and said so"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in namespaces, "the lab is down"
