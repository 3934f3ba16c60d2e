"""Test-wide rules.

Everything under tests/integration and tests/kernel is marked
``integration``: it needs root,
bcc and the tools below. Outside CI a missing requirement skips those tests;
in CI (CI=true) it fails them, because an integration test that did not run
proved nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otus_ebpf import logs, plugins
from tests.support.broker import Broker, start_broker
from tests.support.lab import Lab, lab_down, lab_up
from tests.support.plugin_dists import FakeSite

IN_CI = os.environ.get("CI") == "true"
# Strict: a bug that a failure boundary would count in production raises
# instead, in this process and in every agent a test starts (they inherit it).
# The tests that prove a boundary turn it off for themselves.
os.environ["OTUS_STRICT"] = "1"
INTEGRATION_TOOLS = ("ip", "sipp", "tshark", "tcpdump", "tcpreplay", "tmux", "vagrant")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid or "tests/kernel/" in item.nodeid:
            item.add_marker(pytest.mark.integration)
    if COMPILED:  # scripts/test.sh runs them in its pure-Python pass
        replacing = [item for item in items if item.get_closest_marker("replaces_code") is not None]
        if replacing:
            config.hook.pytest_deselected(items=replacing)
            items[:] = [item for item in items if item.get_closest_marker("replaces_code") is None]


# The per-message modules compiled by set-up (scripts/build_native.py), or pure Python.
COMPILED = Path(importlib.import_module("userspace.pipeline").__file__ or "").suffix == ".so"


def missing_requirements() -> list[str]:
    missing = [tool for tool in INTEGRATION_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    if importlib.util.find_spec("bcc") is None:
        missing.append("bcc")
    return missing


def require_tool(name: str) -> None:
    """A tool set-up installs (scripts/setup.sh): skipped without it on a developer's
    machine, a failure under CI=true, where a missing tool must not pass unseen."""
    if shutil.which(name) is None:
        message = f"needs {name} (scripts/setup.sh installs it)"
        if IN_CI:
            pytest.fail(message + " (CI=true: nothing may skip)")
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons a test starts keep their task store in the test's own directory, never in
    /var/lib/otus-ebpf: a task one test stores must not come back in another's daemon."""
    monkeypatch.setenv("OTUS_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _integration_requirements(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration") is None:
        return
    missing = missing_requirements()
    if missing:
        message = f"integration test needs: {', '.join(missing)}"
        if IN_CI:
            pytest.fail(message + " (CI=true: integration tests must run)")
        pytest.skip(message)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh two-namespace lab per test, always torn down."""
    prefix = f"otus-t{os.getpid() % 100000}"
    the_lab = lab_up(prefix)
    try:
        yield the_lab
    finally:
        lab_down(the_lab)


@pytest.fixture
def uas_broker(lab: Lab, tmp_path: Path) -> Iterator[Broker]:
    """tansu on 127.0.0.1 inside the UAS namespace, where the agent runs."""
    broker = start_broker(tmp_path / "tansu.log", lab.uas_ns)
    try:
        yield broker
    finally:
        broker.process.stop()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """pytest's caplog, seeing the program's log records at the default level: the
    program's logger keeps them from the root logger caplog listens on (otus_ebpf.logs)."""
    program = logging.getLogger(logs.ROOT)
    program.addHandler(caplog.handler)
    caplog.set_level(logs.DEFAULT_LEVEL.upper(), logs.ROOT)
    try:
        yield caplog
    finally:
        program.removeHandler(caplog.handler)


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:
    """Plugins read from a fresh directory only; its modules forgotten afterwards."""
    site = FakeSite(tmp_path / "site")
    site.root.mkdir()
    monkeypatch.syspath_prepend(str(site.root))
    monkeypatch.setattr(plugins, "entry_points", site.entry_points)
    plugins.clear_cache()
    before = set(sys.modules)
    try:
        yield site
    finally:
        plugins.clear_cache()
        for name in set(sys.modules) - before:
            if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(site.root)):
                del sys.modules[name]
