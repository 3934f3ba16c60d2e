"""Plugins: processors (and, with otus_ebpf.outputs, reporters) other packages
provide through Python entry points (docs/PLUGINS.md). Looked up once per
process; a plugin that cannot be loaded is said once and left out, never
fatal to the ones that can."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points

from otus_ebpf import logs
from userspace.processors.build import PluginFactory

PROCESSOR_GROUP = "otus_ebpf.processors"
_log = logs.get(__name__)


@functools.cache
def processor_factories() -> Mapping[str, PluginFactory]:
    """Every installed processor plugin, by entry point name."""
    found: dict[str, PluginFactory] = {}
    for point in entry_points(group=PROCESSOR_GROUP):
        try:
            found[point.name] = point.load()
        except Exception as exc:  # a broken plugin package must not stop the others, or the task
            _log.warning(f"plugin {point.name!r} ({point.value}) cannot be loaded: "
                         f"{type(exc).__name__}: {exc}")
    return found
