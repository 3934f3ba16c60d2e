"""scripts/setup.sh refuses, in one line, what it cannot do."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.support.paths import REPO

SETUP = REPO / "scripts" / "setup.sh"
NOBODY = "65534"


def run_setup_unprivileged() -> subprocess.CompletedProcess[str]:
    script = SETUP.read_text()
    if os.geteuid() != 0:
        argv = ["bash", "-s"]
    else:
        # Fed on stdin: an unprivileged user may not be able to read the checkout.
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop root"
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "bash", "-s"]
    return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30,
                          check=False, cwd="/")


def test_setup_refuses_to_run_without_root() -> None:
    result = run_setup_unprivileged()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "setup: error: not root: run it with sudo (it installs packages and loads BPF programs)"
    ]
    assert result.stdout == ""
