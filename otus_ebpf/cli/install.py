"""`otus-ebpf install-service`: put the systemd unit, the command and the docs
where the unit expects them (packaging/otus-ebpf.service), so that
`systemctl enable --now otus-ebpf` is the only step left; `--remove` takes
them away again. The config file is the operator's: never written here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from otus_ebpf import logs
from otus_ebpf.errors import SetupError

UNIT_FILE = "otus-ebpf.service"
# Where the unit looks: ExecStart= and Documentation= in packaging/otus-ebpf.service.
COMMAND = Path("/usr/local/bin/otus-ebpf")
UNIT = Path("/etc/systemd/system") / UNIT_FILE
DOCS = Path("/usr/share/doc/otus-ebpf")
CONFIG = Path("/etc/otus-ebpf.yaml")
DOC_FILES = ("CONFIG.md", "RECORDS.md", "METRICS.md", "HEP.md", "BENCHMARKS.md", "PLUGINS.md",
             "otus-ebpf.example.yaml", "grafana-dashboard.json")
# The unit's ProtectHome= and PrivateTmp= hide these from the service: a command
# inside them would fail to start (status 203/EXEC), so installing from there is refused.
HIDDEN_FROM_SERVICE = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))

_log = logs.get(__name__)


@dataclass(frozen=True)
class Sources:
    unit: Path
    docs: Path
    command: Path


def find_sources() -> Sources:
    """The unit and docs in the installed package (a wheel) or in the checkout,
    and the command that is running now."""
    package_dir = Path(__file__).resolve().parent.parent  # otus_ebpf/
    unit = _first_existing([package_dir / "packaging" / UNIT_FILE,
                            package_dir.parent / "packaging" / UNIT_FILE])
    docs = _first_existing([package_dir / "docs" / "CONFIG.md", package_dir.parent / "docs" / "CONFIG.md"])
    command = Path(sys.executable).with_name("otus-ebpf")
    if unit is None or docs is None:
        raise SetupError(f"the unit or the docs are not next to {package_dir}; reinstall otus-ebpf")
    if not os.access(command, os.X_OK):
        raise SetupError(f"{command} is not an executable: run install-service with the otus-ebpf "
                         "that scripts/setup.sh installed")
    return Sources(unit, docs.parent, command)


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def install(sources: Sources) -> None:
    hidden = next((d for d in HIDDEN_FROM_SERVICE if sources.command.resolve().is_relative_to(d)), None)
    if hidden is not None:
        raise SetupError(f"{sources.command} is under {hidden}, which the unit (ProtectHome=, PrivateTmp=) "
                         "hides from the service: install from a checkout elsewhere, e.g. /opt/otus-ebpf")
    missing = [name for name in DOC_FILES if not (sources.docs / name).is_file()]
    if missing:
        raise SetupError(f"{sources.docs} lacks {', '.join(missing)}; reinstall otus-ebpf")
    if COMMAND.exists() and not COMMAND.is_symlink():  # checked before anything is written
        raise SetupError(f"{COMMAND} exists and is not a link otus-ebpf made; move it away first")
    _write(UNIT, sources.unit.read_bytes())
    _link(COMMAND, sources.command)
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in DOC_FILES:
        _write(DOCS / name, (sources.docs / name).read_bytes())
    _daemon_reload()
    _log.info(f"next: write {CONFIG} (example: {DOCS / 'otus-ebpf.example.yaml'}), check it with "
        f"`otus-ebpf validate {CONFIG}`, then `systemctl enable --now otus-ebpf`")


def remove() -> None:
    """Undo ``install``; the config file and what the service wrote stay."""
    if UNIT.exists():
        UNIT.unlink()
        _log.info(f"removed {UNIT}")
    if COMMAND.is_symlink() and Path(os.readlink(COMMAND)).name == "otus-ebpf":
        COMMAND.unlink()
        _log.info(f"removed {COMMAND}")
    elif COMMAND.exists():  # install refused to touch it, and so does remove
        _log.warning(f"left {COMMAND}: not a link otus-ebpf made")
    if DOCS.exists():
        shutil.rmtree(DOCS)
        _log.info(f"removed {DOCS}")
    _daemon_reload()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    temporary.chmod(0o644)
    temporary.replace(path)  # never a half-written unit
    _log.info(f"installed {path}")


def _link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(path)
    _log.info(f"installed {path} -> {target}")


def _daemon_reload() -> None:
    if not Path("/run/systemd/system").is_dir():
        _log.warning("systemd is not running here: run `systemctl daemon-reload` where it is")
        return
    result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SetupError(f"systemctl daemon-reload: {result.stderr.strip() or result.returncode}")
