"""The namespace lab from scripts/lab.sh, as a Python object for tests."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO

LAB_SCRIPT = REPO / "scripts" / "lab.sh"
RUN_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Lab:
    prefix: str
    uac_ns: str
    uas_ns: str
    uac_if: str = "uac0"
    uas_if: str = "uas0"
    uac_v4: str = "10.77.0.1"
    uas_v4: str = "10.77.0.2"
    uac_v6: str = "fd77::1"
    uas_v6: str = "fd77::2"

    def add_uac_addresses(self, addresses: list[str]) -> None:
        """More source addresses for the UAC host on uac0 (in 10.77.0.0/24), so that traffic
        comes from several hosts and spreads over the kernel's shards."""
        for address in addresses:
            self.run(self.uac_ns, "ip", "addr", "add", f"{address}/24", "dev", self.uac_if)

    def second_link(self) -> Lab:
        """The same two hosts over the lab's second veth pair (uac1/uas1, 10.78.0.0/24)."""
        return dataclasses.replace(self, uac_if="uac1", uas_if="uas1", uac_v4="10.78.0.1", uas_v4="10.78.0.2",
                                   uac_v6="fd78::1", uas_v6="fd78::2")

    def run(self, netns: str, *argv: str, check: bool = True,
            timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], check=check,
                              capture_output=True, text=True, timeout=timeout)


def _lab_script(prefix: str, action: str) -> None:
    env = dict(os.environ, OTUS_LAB_PREFIX=prefix)
    result = subprocess.run([str(LAB_SCRIPT), action], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/lab.sh {action} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()}")


def lab_up(prefix: str) -> Lab:
    _lab_script(prefix, "up")
    return Lab(prefix, f"{prefix}-uac", f"{prefix}-uas")


def lab_down(lab: Lab) -> None:
    _lab_script(lab.prefix, "down")


def interface_mac(netns: str, interface: str) -> bytes:
    """The hardware address of an interface inside a namespace."""
    text = subprocess.run(["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{interface}/address"],
                          check=True, capture_output=True, text=True).stdout.strip()
    return bytes.fromhex(text.replace(":", ""))


def tcpreplay(lab: Lab, pcap: Path, pps: int, loops: int = 1) -> None:
    """Send a capture file from the UAC side onto the lab's veth, paced at ``pps`` packets/s."""
    subprocess.run(["ip", "netns", "exec", lab.uac_ns, "tcpreplay", "-q", "-i", lab.uac_if, f"--pps={pps}",
                    f"--loop={loops}", str(pcap)], check=True, capture_output=True)
