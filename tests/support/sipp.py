"""Drive a sipp UAC → UAS call load across the lab."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support.lab import Lab
from tests.support.paths import SIPP_SCENARIOS
from tests.support.procs import Background

SIP_PORT = 5060
LISTEN_TIMEOUT_S = 10.0


def wait_listening(lab: Lab, transport: str, uas: Background) -> None:
    """Block until the UAS socket exists, so the first INVITE is not refused."""
    flag = "-ltnH" if transport.startswith("t") else "-lunH"
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        listening = lab.run(lab.uas_ns, "ss", flag, "sport", "=", f":{SIP_PORT}").stdout
        if listening.strip():
            return
        if uas.proc.poll() is not None:
            raise AssertionError(f"sipp UAS exited early:\n{uas.output()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"sipp UAS not listening on {SIP_PORT} within {LISTEN_TIMEOUT_S}s")


def run_calls(lab: Lab, calls: int, transport: str, workdir: Path, rate: int = 20) -> None:
    """Run ``calls`` basic calls; raise if sipp reports any failure.

    transport: "u1" (UDP) or "t1" (TCP, one connection).
    """
    uas = Background(["sipp", "-sf", str(SIPP_SCENARIOS / "uas.xml"), "-t", transport,
                      "-i", lab.uas_v4, "-p", str(SIP_PORT), "-m", str(calls), "-nostdin"],
                     workdir / f"sipp-uas-{transport}.log", netns=lab.uas_ns, cwd=workdir)
    try:
        wait_listening(lab, transport, uas)
        uac = subprocess.run(
            ["ip", "netns", "exec", lab.uac_ns, "sipp", f"{lab.uas_v4}:{SIP_PORT}",
             "-sf", str(SIPP_SCENARIOS / "uac.xml"), "-t", transport, "-i", lab.uac_v4,
             "-p", str(SIP_PORT), "-m", str(calls), "-r", str(rate), "-nostdin", "-timeout", "60s"],
            capture_output=True, text=True, cwd=workdir, timeout=120, check=False,
        )
        assert uac.returncode == 0, f"sipp UAC failed ({uac.returncode}):\n{uac.stdout[-3000:]}"
        assert uas.wait(30) == 0, f"sipp UAS failed:\n{uas.output()[-3000:]}"
    finally:
        uas.stop()
