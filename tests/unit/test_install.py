"""install-service's rules, on paths under a temporary root: what it refuses,
and that --remove takes only what it made."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from otus_ebpf.cli import install
from otus_ebpf.errors import SetupError
from tests.support.paths import REPO


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(install, "COMMAND", tmp_path / "usr/local/bin/otus-ebpf")
    monkeypatch.setattr(install, "UNIT", tmp_path / "etc/systemd/system/otus-ebpf.service")
    monkeypatch.setattr(install, "DOCS", tmp_path / "usr/share/doc/otus-ebpf")
    monkeypatch.setattr(install, "_daemon_reload", lambda: None)
    return tmp_path


def sources(command: Path) -> install.Sources:
    return install.Sources(REPO / "packaging" / install.UNIT_FILE, REPO / "docs", command)


def test_a_command_the_service_cannot_see_is_refused(root: Path) -> None:
    with pytest.raises(SetupError, match="under /home, which the unit"):
        install.install(sources(Path("/home/op/otus-ebpf/.venv/bin/otus-ebpf")))
    assert not install.UNIT.exists()


def test_a_foreign_command_is_neither_replaced_nor_removed(root: Path,
                                                           logged: pytest.LogCaptureFixture) -> None:
    install.COMMAND.parent.mkdir(parents=True)
    install.COMMAND.write_text("#!/bin/sh\n# installed by something else\n")
    with pytest.raises(SetupError, match="not a link otus-ebpf made"):
        install.install(sources(Path("/opt/otus-ebpf/.venv/bin/otus-ebpf")))
    install.remove()
    assert install.COMMAND.read_text().startswith("#!/bin/sh"), "remove leaves what install refused to touch"
    assert logged.record_tuples == [("otus_ebpf.cli.install", logging.WARNING,
                                     f"left {install.COMMAND}: not a link otus-ebpf made")]


def test_install_then_remove(root: Path) -> None:
    install.install(sources(Path("/opt/otus-ebpf/.venv/bin/otus-ebpf")))
    assert install.COMMAND.is_symlink() and sorted(p.name for p in install.DOCS.iterdir()) == \
        sorted(install.DOC_FILES)
    assert install.UNIT.read_bytes() == (REPO / "packaging" / install.UNIT_FILE).read_bytes()
    install.remove()
    assert not install.COMMAND.is_symlink() and not install.UNIT.exists() and not install.DOCS.exists()
