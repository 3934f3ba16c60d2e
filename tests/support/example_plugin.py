"""The example plugin package (examples/otus-example-plugin), as scripts/setup.sh
installs it into .venv: a test that needs it installed is skipped without it on
a developer's machine, and fails under CI=true, where set-up must have put it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest

from tests.conftest import IN_CI
from tests.support.paths import REPO

EXAMPLE_DIR = REPO / "examples" / "otus-example-plugin"
EXAMPLE_DIST = "otus-example-plugin"
EXAMPLE_PLUGINS = {"otus_ebpf.processors": "example.trunk_tag", "otus_ebpf.reporters": "example.csv"}


def require_example() -> None:
    """Call at a module's top, before importing otus_example_plugin."""
    try:
        distribution(EXAMPLE_DIST)
    except PackageNotFoundError:
        message = f"needs the example plugin package installed ({EXAMPLE_DIST}: scripts/setup.sh installs it)"
        if IN_CI:
            pytest.fail(message + " (CI=true: nothing may skip)", pytrace=False)
        pytest.skip(message, allow_module_level=True)
