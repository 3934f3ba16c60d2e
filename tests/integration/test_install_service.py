"""`otus-ebpf install-service` puts the unit, the command and the docs where the
unit expects them, and `systemd-analyze verify` accepts the installed unit;
`--remove` takes them away. Run in a private mount namespace whose /etc,
/usr/local, /usr/share/doc and /opt are overlays on a tmpfs: the real system
is never touched. The checkout is seen at /opt/otus-ebpf there, as an
operator would install it, and at /root/otus-ebpf, from where it is refused
(the unit's ProtectHome= would hide the command from the service)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from otus_ebpf.cli.install import COMMAND, DOC_FILES, DOCS, UNIT
from tests.support.paths import REPO

OVERLAID = ("/etc", "/usr/local", "/usr/share/doc", "/opt", "/root")
AT = "/opt/otus-ebpf"
HIDDEN = "/root/otus-ebpf"  # where ProtectHome= hides it from the service


def in_sandbox(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    overlays = []
    for n, directory in enumerate(OVERLAID):
        overlays.append(f"mkdir -p {tmp_path}/s/u{n} {tmp_path}/s/w{n} && "
                        f"mount -t overlay overlay -o lowerdir={directory},upperdir={tmp_path}/s/u{n},"
                        f"workdir={tmp_path}/s/w{n} {directory}")
    setup = " && ".join(["mount --make-rprivate /", f"mkdir -p {tmp_path}/s",
                         f"mount -t tmpfs tmpfs {tmp_path}/s", *overlays,
                         f"mkdir -p {AT} {HIDDEN}", f"mount --bind {REPO} {AT}",
                         f"mount --bind {REPO} {HIDDEN}"])
    return subprocess.run(["unshare", "--mount", "sh", "-ec", f"{setup}\n{script}"], capture_output=True,
                          text=True, timeout=120, check=False)


def test_install_verify_and_remove_in_a_sandbox(tmp_path: Path) -> None:
    host_before = [Path(p).exists() for p in (UNIT, COMMAND, DOCS)]
    agent = f"{AT}/.venv/bin/python -m otus_ebpf"
    result = in_sandbox(f"""
{agent} install-service
readlink {COMMAND}
ls {DOCS}
systemd-analyze verify {UNIT}
{COMMAND} --version
{agent} install-service --remove
test ! -e {UNIT} && test ! -e {COMMAND} && test ! -e {DOCS} && echo all-removed
""", tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"{AT}/.venv/bin/otus-ebpf"
    assert set(lines[1:1 + len(DOC_FILES)]) == set(DOC_FILES)
    assert lines[1 + len(DOC_FILES)].startswith("otus-ebpf ")
    assert lines[-1] == "all-removed"
    assert f"installed {UNIT}" in result.stderr and "next: write /etc/otus-ebpf.yaml" in result.stderr
    assert [Path(p).exists() for p in (UNIT, COMMAND, DOCS)] == host_before, "the host is untouched"


def test_a_command_the_service_could_not_see_is_refused(tmp_path: Path) -> None:
    result = in_sandbox(f"{HIDDEN}/.venv/bin/python -m otus_ebpf install-service", tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"otus-ebpf: error: {HIDDEN}/.venv/bin/otus-ebpf is under /root, which the unit")
