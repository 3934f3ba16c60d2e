"""Processes a test starts, it stops, by PID: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

STOP_GRACE_S = 10.0


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


class Background:
    """One child process with its output in a file; ``ip netns exec`` execs, so
    the PID we hold is the program's own."""

    def __init__(self, argv: Sequence[str], log_path: Path, netns: str | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = netns_argv(netns, argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0:6]} exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} from {self.argv} within {timeout}s:\n{self.output()}")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
        """Stop it (idempotent); return its exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signum)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
