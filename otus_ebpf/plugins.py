"""Plugins: processors and reporters other packages provide through Python
entry points (docs/PLUGINS.md). The one place entry points are read: once
per process, both groups together. A plugin that cannot be used — its module
does not import, it was built for another major version of the plugin API,
or two packages install the same name — is said once, by name, and left out;
it is never fatal to the others, and a config that names it gets a problem
saying why."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from otus_ebpf import logs
from userspace.processors.api import API_VERSION
from userspace.processors.build import PluginFactory

PROCESSOR_GROUP = "otus_ebpf.processors"
REPORTER_GROUP = "otus_ebpf.reporters"
KINDS = {PROCESSOR_GROUP: "processor", REPORTER_GROUP: "reporter"}
VERSION_ATTRIBUTE = "OTUS_API_VERSION"  # on the factory, else on its module
Factory = Callable[[Mapping[str, Any]], Any]
_log = logs.get(__name__)


@dataclass(frozen=True, slots=True)
class Plugin:
    """One installed entry point, loaded (or not) and judged."""

    kind: str          # "processor" or "reporter"
    name: str          # what a config names it by
    target: str        # module:attr
    distribution: str  # the package that installs it ("" when unknown)
    version: str       # that package's version
    api_version: str = ""   # as it declares it ("" when it does not)
    problem: str = ""       # why it is not used ("" when it is)
    factory: Factory | None = field(default=None, compare=False, repr=False)

    @property
    def usable(self) -> bool:
        return not self.problem and self.factory is not None

    def describe(self) -> str:
        source = f"{self.distribution} {self.version}".strip() or "unknown package"
        return f"{self.kind} plugin {self.name!r} ({self.target}, {source})"


@functools.cache
def installed() -> tuple[Plugin, ...]:
    """Every plugin installed, usable or not, processors first, each group by name."""
    found = [load(KINDS[group], point) for group in KINDS
             for point in sorted(entry_points(group=group), key=lambda p: p.name)]
    return tuple(refuse_duplicates(found))


def load(kind: str, point: EntryPoint) -> Plugin:
    dist = point.dist
    plugin = Plugin(kind, point.name, point.value, dist.name if dist else "", dist.version if dist else "")
    try:
        factory = point.load()
    except Exception as exc:  # a broken plugin package must not stop the others, or the task
        return replace(plugin, problem=f"cannot load: {type(exc).__name__}: {exc}")
    if not callable(factory):
        return replace(plugin, problem=f"cannot load: {point.value} is not callable")
    declared = getattr(factory, VERSION_ATTRIBUTE, None)
    if declared is None:
        declared = getattr(sys.modules.get(point.module), VERSION_ATTRIBUTE, None)
    plugin = replace(plugin, api_version="" if declared is None else str(declared), factory=factory)
    major = major_version(declared)
    if declared is not None and major is None:
        return replace(plugin, problem=f"refused: {VERSION_ATTRIBUTE} = {declared!r} is not a version "
                                     "(an int, or 'MAJOR.MINOR')")
    if major is not None and major != API_VERSION:
        return replace(plugin, problem=f"refused: built for plugin API {declared}, this otus-ebpf has "
                                     f"{API_VERSION}")
    return plugin


def major_version(declared: object) -> int | None:
    """1, "1" or "1.2" -> 1; anything else None."""
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    if isinstance(declared, str):
        major = declared.split(".", 1)[0]
        if major.isascii() and major.isdigit():
            return int(major)
    return None


def refuse_duplicates(plugins: Iterable[Plugin]) -> list[Plugin]:
    """One name installed twice in a group: neither is used, as neither can be chosen knowingly."""
    plugins = list(plugins)
    by_name: dict[tuple[str, str], list[Plugin]] = {}
    for plugin in plugins:
        by_name.setdefault((plugin.kind, plugin.name), []).append(plugin)
    return [_one_of_twins(plugin, [p for p in by_name[plugin.kind, plugin.name] if p is not plugin])
            for plugin in plugins]


def _one_of_twins(plugin: Plugin, others: list[Plugin]) -> Plugin:
    if not others or plugin.problem:
        return plugin
    also = ", ".join(f"{p.target} of {p.distribution or 'an unknown package'}" for p in others)
    return replace(plugin, problem=f"refused: the name is installed twice (also {also})")


def processor_factories() -> Mapping[str, PluginFactory]:
    """Every installed processor plugin, by entry point name; one that cannot be
    used raises ValueError with the reason when a config names it."""
    return _factories("processor")


def reporter_factories() -> Mapping[str, Factory]:
    """Every installed reporter plugin, by entry point name (as processor_factories)."""
    return _factories("reporter")


@functools.cache
def _factories(kind: str) -> Mapping[str, Any]:
    found: dict[str, Factory] = {}
    for plugin in installed():
        if plugin.kind != kind:
            continue
        if plugin.usable:
            assert plugin.factory is not None
            found[plugin.name] = plugin.factory
        else:
            _log.warning(f"{plugin.describe()} {plugin.problem}")  # once per process: this is cached
            found[plugin.name] = _refused(plugin.problem)
    return found


def clear_cache() -> None:
    """Read the entry points again (tests, after installing or faking one)."""
    installed.cache_clear()
    _factories.cache_clear()


def _refused(problem: str) -> Factory:
    def refuse(_options: Mapping[str, Any]) -> Any:
        raise ValueError(problem)
    return refuse
