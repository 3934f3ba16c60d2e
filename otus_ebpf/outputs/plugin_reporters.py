"""Reporters other packages provide (docs/PLUGINS.md): a task's
``outputs.plugins``, a list of ``{name: PLUGIN, options: {...}}``.

The list is checked whole when the config is read: each factory is called on
its options (a ValueError it raises is the config's problem at the key's
line) and the reporter it makes is closed unused, so a factory must not open
its sink (a reporter opens it on its first write). At the task's start each
is made again and put behind its own queue and thread
(otus_ebpf.outputs.wiring), named ``plugin:NAME``. A plugin's reporter is
guarded: what its write raises is its queue's to count (failed, to the
fallback or lost, as for any output); what its flush or close raises is said
and goes no further; one that does not return is left behind at the stop
(otus_ebpf.outputs.fanout, ``stuck_after``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otus_ebpf import logs
from userspace.processors.build import PLUGIN_PREFIX, call_factory, options_json
from userspace.records import Record
from userspace.reporters import Reporter

MAX_REPORTER_PLUGINS = 16  # each is a queue and a thread per task (and per worker process)
STUCK_S = 10.0  # how long a stop waits for a plugin's reporter still inside a call
REPORTER_METHODS = ("write", "flush", "close")
ReporterFactory = Callable[[Mapping[str, Any]], Reporter]
_SHAPE = "{name: PLUGIN, options: {...}}"
_log = logs.get(__name__)


@dataclass(frozen=True, slots=True)
class ReporterSpec:
    """One reporter plugin as configured: comparable, so a reload sees a change."""

    name: str
    options_json: str  # canonical JSON of its options

    @property
    def options(self) -> Any:
        return json.loads(self.options_json)

    @classmethod
    def of(cls, name: str, options: Any, where: str = "outputs.plugins") -> ReporterSpec:
        return cls(name, options_json(options, where))


def parse_specs(value: Any, where: str = "outputs.plugins") -> tuple[ReporterSpec, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: a list of reporter plugins, each {_SHAPE}")
    if len(value) > MAX_REPORTER_PLUGINS:
        raise ValueError(f"{where}: at most {MAX_REPORTER_PLUGINS}")
    specs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name",
                                                                                              "options"}:
            raise ValueError(f"{where}[{i}]: {_SHAPE}")
        options = item.get("options")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"{where}[{i}].options: a mapping")
        specs.append(ReporterSpec.of(item["name"], options or {}, f"{where}[{i}]"))
    return tuple(specs)


def check(specs: Sequence[ReporterSpec], factories: Mapping[str, ReporterFactory]) -> None:
    """Every problem of the list now, not at the task's start: each reporter made and closed unused."""
    for i, spec in enumerate(specs):
        where = f"outputs.plugins[{i}]"
        Guarded(where, make(spec, where, factories)).close()


def make(spec: ReporterSpec, where: str, factories: Mapping[str, ReporterFactory]) -> Reporter:
    """The reporter ``spec`` names, from its plugin's factory; ValueError says what is wrong, and where."""
    factory = factories.get(spec.name)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none installed"
        raise ValueError(f"{where}.name: no reporter plugin {spec.name!r} ({known})")
    made: Reporter = call_factory(factory, spec.options, f"{where}: plugin {spec.name!r}")
    missing = [method for method in REPORTER_METHODS if not callable(getattr(made, method, None))]
    if missing:
        raise ValueError(f"{where}: plugin {spec.name!r} made no reporter (it has no {', '.join(missing)})")
    return made


def queue_names(specs: Sequence[ReporterSpec]) -> list[str]:
    """``plugin:NAME`` each, ``plugin:NAME#2`` for the second of one name: counted apart."""
    seen: dict[str, int] = {}
    names = []
    for spec in specs:
        n = seen[spec.name] = seen.get(spec.name, 0) + 1
        names.append(f"{PLUGIN_PREFIX}{spec.name}" + (f"#{n}" if n > 1 else ""))
    return names


class Guarded:
    """A plugin's reporter as its queue holds it: ``write`` raises into the queue, which
    counts it; ``flush`` and ``close`` never raise (a plugin's bug there is said once)."""

    def __init__(self, name: str, reporter: Reporter) -> None:
        self.name = name
        self.reporter = reporter

    def write(self, records: Sequence[Record]) -> None:
        self.reporter.write(records)

    def flush(self, timeout: float) -> int:
        try:
            left = self.reporter.flush(timeout)
        except Exception as exc:  # a plugin's bug: said, and the rest of the stop goes on
            _log.warning(f"{self.name}: flush: {type(exc).__name__}: {exc}")
            return 0
        return left if isinstance(left, int) and not isinstance(left, bool) and left > 0 else 0

    def close(self) -> None:
        try:
            self.reporter.close()
        except Exception as exc:  # as in flush
            _log.warning(f"{self.name}: close: {type(exc).__name__}: {exc}")
