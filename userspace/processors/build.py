"""Processors from their specs: ``(kind, options)`` pairs, as a task's
``processors`` list in the config file gives them (one-key mappings) or the
flags make them. Plugins' factories come from the caller (entry points are
I/O: otus_ebpf.plugins finds them). ValueError names the spec's key."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from userspace.processors.api import Processor
from userspace.processors.filter import Filter
from userspace.processors.label import Label
from userspace.processors.redact import Redact
from userspace.processors.sample import Sample

MAX_PROCESSORS = 32
PLUGIN_PREFIX = "plugin:"  # a plugin processor's name: never a built-in's
KINDS = ("filter", "label", "redact", "sample", "plugin")
ReadSecret = Callable[[str], str]       # a key file's text
PluginFactory = Callable[[Mapping[str, Any]], Processor]
PROCESSOR_ATTRIBUTES = ("process", "counts", "fail_closed")


@dataclass(frozen=True, slots=True)
class ProcessorSpec:
    """One processor as configured: comparable, so a reload sees a change."""

    kind: str
    options_json: str  # canonical JSON of its options

    @property
    def options(self) -> Any:
        return json.loads(self.options_json)

    @classmethod
    def of(cls, kind: str, options: Any, where: str = "processors") -> ProcessorSpec:
        return cls(kind, options_json(options, where))


def options_json(options: Any, where: str) -> str:
    """Options as canonical JSON: what a processor (or a plugin) is handed, and what a
    reload compares. YAML says more than JSON: a key that is a number (a port) becomes
    its text, as JSON would make it; a date or a timestamp is refused (quote it)."""
    try:
        return json.dumps(_text_keys(options), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: options must be text, numbers, true/false, null, lists and mappings "
                         f"(quote a date or a time): {exc}") from None


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key if isinstance(key, str) else json.dumps(key): _text_keys(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_text_keys(item) for item in value]
    return value


def build(specs: Sequence[ProcessorSpec], read_secret: ReadSecret,
          plugins: Mapping[str, PluginFactory]) -> list[Processor]:
    if len(specs) > MAX_PROCESSORS:
        raise ValueError(f"processors: at most {MAX_PROCESSORS}")
    made = [_one(spec, f"processors[{i}].{spec.kind}", read_secret, plugins) for i, spec in enumerate(specs)]
    _name_apart(made)
    return made


def _one(spec: ProcessorSpec, where: str, read_secret: ReadSecret,
         plugins: Mapping[str, PluginFactory]) -> Processor:
    options = spec.options
    if spec.kind == "filter":
        return Filter.from_spec(options, where)
    if spec.kind == "label":
        return Label.from_spec(options, where)
    if spec.kind == "sample":
        return Sample.from_spec(options, where)
    if spec.kind == "redact":
        key_file = options.get("key_file") if isinstance(options, dict) else None
        key = read_secret(key_file).encode() if isinstance(key_file, str) else None
        return Redact.from_spec(options, where, key)
    if spec.kind == "plugin":
        return _plugin(options, where, plugins)
    raise ValueError(f"{where}: unknown processor (expected one of: {', '.join(KINDS)})")


def _plugin(options: Any, where: str, plugins: Mapping[str, PluginFactory]) -> Processor:
    if not isinstance(options, dict) or not isinstance(options.get("name"), str) or set(options) - {
            "name", "options"}:
        raise ValueError(f"{where}: {{name: PLUGIN, options: {{...}}}}")
    name = options["name"]
    factory = plugins.get(name)
    if factory is None:
        known = ", ".join(sorted(plugins)) or "none installed"
        raise ValueError(f"{where}.name: no processor plugin {name!r} ({known})")
    made: Processor = call_factory(factory, options.get("options") or {}, f"{where}: plugin {name!r}")
    missing = [attr for attr in PROCESSOR_ATTRIBUTES if not hasattr(made, attr)]
    if missing:
        raise ValueError(f"{where}: plugin {name!r} made no processor (it has no {', '.join(missing)})")
    try:
        made.name = f"{PLUGIN_PREFIX}{name}"
    except AttributeError:
        raise ValueError(f"{where}: plugin {name!r} made a processor whose name cannot be set") from None
    return made


def call_factory(factory: Callable[[Mapping[str, Any]], Any], options: Any, where: str) -> Any:
    """A plugin's factory on its options: the ValueError it raises for bad options, and
    any other exception (its bug), become a ValueError naming where it is configured."""
    if not isinstance(options, dict):
        raise ValueError(f"{where}: options must be a mapping")
    try:
        return factory(options)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except Exception as exc:  # a plugin's bug: said where it is used, never a traceback at config time
        raise ValueError(f"{where} failed: {type(exc).__name__}: {exc}") from None


def _name_apart(processors: list[Processor]) -> None:
    """filter, filter#2, ...: each processor's counters under a name of its own."""
    seen: dict[str, int] = {}
    for processor in processors:
        n = seen[processor.name] = seen.get(processor.name, 0) + 1
        if n > 1:
            processor.name = f"{processor.name}#{n}"


def parse_specs(value: Any, where: str = "processors") -> tuple[ProcessorSpec, ...]:
    """The config file's list: each item a one-key mapping {KIND: OPTIONS}."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: a list of processors, each {{KIND: OPTIONS}}")
    specs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"{where}[{i}]: one of {', '.join(KINDS)} with its options")
        (kind, options), = item.items()
        if kind not in KINDS:
            raise ValueError(f"{where}[{i}].{kind}: unknown processor (expected one of: {', '.join(KINDS)})")
        specs.append(ProcessorSpec.of(kind, options, f"{where}[{i}].{kind}"))
    return tuple(specs)
