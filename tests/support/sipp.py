"""Drive a sipp UAC → UAS call load across the lab."""

from __future__ import annotations

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


def start_calls(lab: Lab, calls: int, transport: str, workdir: Path, rate: int = 20,
                hold_ms: int = 200) -> tuple[Background, Background]:
    """Start the UAS, wait for its socket, start the UAC; return (uas, uac) running."""
    uas = Background(["sipp", "-sf", str(SIPP_SCENARIOS / "uas.xml"), "-t", transport,
                      "-i", lab.uas_v4, "-p", str(SIP_PORT), "-m", str(calls), "-nostdin"],
                     workdir / f"sipp-uas-{transport}.log", netns=lab.uas_ns, cwd=workdir)
    try:
        wait_listening(lab, transport, uas)
        uac = Background(["sipp", f"{lab.uas_v4}:{SIP_PORT}", "-sf", str(SIPP_SCENARIOS / "uac.xml"),
                          "-t", transport, "-i", lab.uac_v4, "-p", str(SIP_PORT), "-m", str(calls),
                          "-r", str(rate), "-d", str(hold_ms), "-nostdin", "-timeout", "120s"],
                         workdir / f"sipp-uac-{transport}.log", netns=lab.uac_ns, cwd=workdir)
    except BaseException:
        uas.stop()
        raise
    return uas, uac


def finish_calls(uas: Background, uac: Background, timeout: float = 120.0) -> None:
    """Wait for both sides; raise if sipp reports any failed call. Always stops both."""
    try:
        assert uac.wait(timeout) == 0, f"sipp UAC failed:\n{uac.output()[-3000:]}"
        assert uas.wait(30) == 0, f"sipp UAS failed:\n{uas.output()[-3000:]}"
    finally:
        uac.stop()
        uas.stop()


def run_calls(lab: Lab, calls: int, transport: str, workdir: Path, rate: int = 20,
              hold_ms: int = 200) -> None:
    """Run ``calls`` basic calls; raise if sipp reports any failure.

    transport: "u1" (UDP) or "t1" (TCP, one connection).
    """
    finish_calls(*start_calls(lab, calls, transport, workdir, rate, hold_ms))
