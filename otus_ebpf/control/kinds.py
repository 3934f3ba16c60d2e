"""What a setting's text may be, and how it becomes a value: one parser per
kind, used alike by the command line (as argparse's ``type``) and the config
checker, so a value is refused with the same words wherever it is given.
Each ``parse`` raises ValueError with the reason; ``describe`` and ``show``
write the docs' "values" and "default" columns."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from otus_ebpf.control.bounds import Bound, parse_float, parse_int, shown
from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.abi import Network
from otus_ebpf.kernel.settings import MAX_SHARDS
from otus_ebpf.outputs import plugin_reporters
from otus_ebpf.outputs.hep_transport import HepCollector, parse_collector
from otus_ebpf.outputs.plugin_reporters import ReporterSpec
from otus_ebpf.plugins import processor_factories, reporter_factories
from otus_ebpf.secret import read_secret
from userspace.droplist import token_problem
from userspace.numbers import ascii_int
from userspace.processors.build import ProcessorSpec, build, parse_specs


class Kind(Protocol):
    @property
    def metavar(self) -> str: ...

    def parse(self, text: str) -> Any: ...

    def describe(self) -> str: ...

    def show(self, value: Any) -> str: ...


@dataclass(frozen=True, slots=True)
class Whole:
    low: int
    high: int
    power_of_two: bool = False
    metavar: str = "N"

    def parse(self, text: str) -> int:
        number = parse_int(text, Bound(self.low, self.high))
        if self.power_of_two and number & (number - 1):
            raise ValueError(f"must be a power of two, not {number}")
        return number

    def describe(self) -> str:
        return f"{self.low}..{self.high}" + (", a power of two" if self.power_of_two else "")

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class Number:
    low: float
    high: float
    metavar: str = "N"

    def parse(self, text: str) -> float:
        return parse_float(text, Bound(self.low, self.high))

    def describe(self) -> str:
        return f"{shown(self.low)}..{shown(self.high)}"

    def show(self, value: Any) -> str:
        return shown(value)


@dataclass(frozen=True, slots=True)
class Switch:
    """On or off: a flag without a value on the command line, true/false in the file."""

    metavar: str = ""

    def parse(self, text: str) -> bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "on"):
            return True
        if lowered in ("false", "no", "off"):
            return False
        raise ValueError(f"must be true or false, not {text!r}")

    def describe(self) -> str:
        return "`true`, `false`"

    def show(self, value: Any) -> str:
        return "true" if value else "false"


@dataclass(frozen=True, slots=True)
class Choice:
    """One of a few words: an enum's values (the value is the member) or plain strings."""

    words: tuple[str, ...]
    enum: type[Enum] | None = None

    @classmethod
    def of(cls, enum: type[Enum]) -> Choice:
        return cls(tuple(str(member.value) for member in enum), enum)

    @property
    def metavar(self) -> str:
        return "|".join(self.words)

    def parse(self, text: str) -> Any:
        if text not in self.words:
            raise ValueError(f"must be one of {', '.join(self.words)}, not {text!r}")
        return text if self.enum is None else self.enum(text)

    def describe(self) -> str:
        return ", ".join(f"`{word}`" for word in self.words)

    def show(self, value: Any) -> str:
        return str(value.value if isinstance(value, Enum) else value)


@dataclass(frozen=True, slots=True)
class Text:
    """A non-empty string; ``what`` names it in the docs (a path, a name)."""

    what: str = "string"
    metavar: str = "TEXT"

    def parse(self, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be empty")
        bad = next((c for c in text if c < " " or c == "\x7f"), None)
        if bad is not None:  # a NUL ends a path in the kernel; the rest garble names and logs
            raise ValueError(f"must not contain control characters (found {bad!r})")
        return text

    def describe(self) -> str:
        return self.what

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """``KEY=VALUE`` (a label, or a label and the header it is copied from)."""

    metavar: str = "KEY=VALUE"

    def parse(self, text: str) -> tuple[str, str]:
        key, sep, value = Text().parse(text).partition("=")
        if not sep or not key or not value:
            raise ValueError(f"must be {self.metavar}, not {text!r}")
        return key, value

    def describe(self) -> str:
        return f"`{self.metavar}`"

    def show(self, value: Any) -> str:
        return "=".join(value) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True, slots=True)
class ProcessorList:
    """A task's ``processors``: a YAML list, not a single value (docs/PROCESSORS.md).
    Checked whole where it is read, its key files and plugins included."""

    metavar: str = "LIST"

    def parse(self, text: str) -> tuple[ProcessorSpec, ...]:
        raise ValueError("a list of processors, each {KIND: OPTIONS} (docs/PROCESSORS.md)")

    def parse_data(self, data: Any, secrets: bool = True) -> tuple[ProcessorSpec, ...]:
        """``secrets`` False: the key files are named, not read, and plugins not looked up (the
        host that checks is not the one that runs the task)."""
        specs = parse_specs(data)
        if secrets:  # every problem now, not at the task's start
            build(specs, read_secret, processor_factories())
        else:
            build([s for s in specs if s.kind != "plugin"], lambda _path: "k" * 32, {})
        return specs

    def describe(self) -> str:
        return "a list of `{KIND: OPTIONS}` (docs/PROCESSORS.md)"

    def show(self, value: Any) -> str:
        return "[]" if not value else f"{len(value)} processors"


@dataclass(frozen=True, slots=True)
class ReporterPlugins:
    """A task's ``outputs.plugins``: a YAML list of ``{name: PLUGIN, options: {...}}``
    (docs/PLUGINS.md), checked whole where it is read: each plugin's factory judges its options."""

    metavar: str = "LIST"

    def parse(self, text: str) -> tuple[ReporterSpec, ...]:
        raise ValueError("a list of reporter plugins, each {name: PLUGIN, options: {...}} (docs/PLUGINS.md)")

    def parse_data(self, data: Any, secrets: bool = True) -> tuple[ReporterSpec, ...]:
        """``secrets`` False: plugins are not looked up (not this host's to run)."""
        specs = plugin_reporters.parse_specs(data)
        if secrets:
            plugin_reporters.check(specs, reporter_factories())
        return specs

    def describe(self) -> str:
        return "a list of `{name: PLUGIN, options: {...}}` (docs/PLUGINS.md)"

    def show(self, value: Any) -> str:
        return "[]" if not value else f"{len(value)} reporter plugins"


# The kinds whose value is a structure (a YAML list of mappings), not one text: read as data.
STRUCTURED = (ProcessorList, ReporterPlugins)


@dataclass(frozen=True, slots=True)
class Method:
    """A SIP request method or a 3-digit status code, as the drop list holds it."""

    metavar: str = "METHOD"

    def parse(self, text: str) -> str:
        problem = token_problem(text)
        if problem is not None:
            raise ValueError(problem)
        return text

    def describe(self) -> str:
        return "SIP methods in upper case (`OPTIONS`), 3-digit status codes (`100`)"

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class Networks:
    metavar: str = "CIDR"

    def parse(self, text: str) -> Network:
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not an IPv4/IPv6 network: {text!r}") from None

    def describe(self) -> str:
        return "IPv4/IPv6 networks"

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class Collectors:
    metavar: str = "[udp:|tcp:]HOST:PORT"

    def parse(self, text: str) -> HepCollector:
        try:
            return parse_collector(text)
        except SetupError:
            raise ValueError(f"must be [udp:|tcp:]HOST:PORT, not {text!r}") from None

    def describe(self) -> str:
        return "`[udp:|tcp:]HOST:PORT`"

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class Listen:
    """``HOST:PORT`` to listen on, or ``off`` (None)."""

    metavar: str = "HOST:PORT|off"

    def parse(self, text: str) -> str | None:
        if text in ("", "off"):
            return None
        host, _, port = text.rpartition(":")
        number = ascii_int(port, max_digits=5)
        if not host or number is None or not 0 < number < 65536:
            raise ValueError(f"must be HOST:PORT (or off), not {text!r}")
        return text

    def describe(self) -> str:
        return "`HOST:PORT` or `off`"

    def show(self, value: Any) -> str:
        return "off" if value is None else str(value)


def default_workers() -> int:
    """The CPUs this process may run on (its affinity, not the host's count), at most the shards."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_SHARDS))


@dataclass(frozen=True, slots=True)
class Workers:
    """``auto`` (the CPUs, at most the shards bpf/otus.c declares) or 1..MAX_SHARDS."""

    metavar: str = "N|auto"

    def parse(self, text: str) -> int:
        return default_workers() if text == "auto" else parse_int(text, Bound(1, MAX_SHARDS))

    def describe(self) -> str:
        return f"1..{MAX_SHARDS}, `auto`"

    def show(self, value: Any) -> str:
        return str(value)
