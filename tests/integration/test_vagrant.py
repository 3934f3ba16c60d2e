"""The VM lab's Vagrantfile: valid for Vagrant (no provider can boot VMs on
these machines, so provider settings are left out of the check), provisioned
by the project's own set-up script, sharing the namespace lab's sipp
scenarios and addresses."""

from __future__ import annotations

import re
import subprocess

from tests.support.lab import Lab
from tests.support.paths import REPO

VAGRANT = REPO / "vagrant"


def test_vagrant_validates_the_lab() -> None:
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout


def test_the_vm_lab_mirrors_the_namespace_lab() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    assert "cd /vagrant && ./scripts/setup.sh" in text, "provisioned by the script CI runs, not a copy"
    for scenario in re.findall(r"/vagrant/(scripts/sipp/\w+\.xml)", text):
        assert (REPO / scenario).exists(), scenario
    lab = Lab("x", "x-uac", "x-uas")
    assert f'NETWORK = "{lab.uac_v4.rsplit(".", 1)[0]}"' in text
    assert '"uac"     => { ip: "#{NETWORK}.1"' in text and '"uas"     => { ip: "#{NETWORK}.2"' in text
    assert lab.uac_v4.endswith(".1") and lab.uas_v4.endswith(".2")
